"""The agent's entry defers the modules it never uses (asyncio, grpc.aio)
until something uses them, and they work as usual when something does."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import sys
from vmrt.agent import entry
for name in entry.DEFERRED:
    entry.defer(name)
import vmrt.agent.__main__  # everything the agent imports at start-up
from concurrent import futures
import grpc
from vmrt.agent.v1 import agent_pb2 as pb, agent_pb2_grpc

class Agent(agent_pb2_grpc.AgentServicer):
    def Health(self, request, context):
        context.add_callback(lambda: None)
        return pb.HealthResponse(agent_version="probe")

    def GetEvents(self, request, context):
        yield pb.Event(container_id="c")

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
agent_pb2_grpc.add_AgentServicer_to_server(Agent(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
with grpc.insecure_channel("unix:" + sys.argv[1]) as channel:
    stub = agent_pb2_grpc.AgentStub(channel)
    assert stub.Health(pb.HealthRequest(), timeout=10).agent_version == "probe"
    assert [e.container_id for e in stub.GetEvents(pb.GetEventsRequest(), timeout=10)] == ["c"]
print("served:", [n for n in entry.DEFERRED if entry.is_deferred(n)])

# First use: the real modules, in place of the stand-ins.
import asyncio
async def call():
    async with grpc.aio.insecure_channel("unix:" + sys.argv[1]) as channel:
        reply = await agent_pb2_grpc.AgentStub(channel).Health(pb.HealthRequest(), timeout=10)
        return reply.agent_version
assert asyncio.run(call()) == "probe"
assert sys.modules["asyncio"].__file__ and sys.modules["grpc.aio"].__file__
print("used:", [n for n in entry.DEFERRED if entry.is_deferred(n)])
server.stop(None)
"""


def test_the_agent_serves_without_asyncio_and_grpc_aio_and_they_load_on_use(
        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "agent.sock")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["served: ['asyncio', 'grpc.aio']", "used: []"]


def test_a_module_imported_already_is_left_alone() -> None:
    from vmrt.agent import entry

    before = sys.modules["asyncio"] if "asyncio" in sys.modules else __import__("asyncio")
    entry.defer("asyncio")
    assert sys.modules["asyncio"] is before and not entry.is_deferred("asyncio")
