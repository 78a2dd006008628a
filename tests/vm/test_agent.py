"""The guest agent's RPCs against one shared, really booted sandbox VM."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import dump_console
from tests.helpers import leaks
from vmrt import oci
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError
from vmrt.agentclient import AgentClient
from vmrt.hypervisor.accel import choose_accel
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.vm import SandboxVM

pytestmark = pytest.mark.vm


class Pod:
    """A booted sandbox plus an event loop to drive it from sync tests."""

    def __init__(self, sandbox: SandboxVM, loop: asyncio.AbstractEventLoop) -> None:
        self.sandbox = sandbox
        self.loop = loop

    @property
    def agent(self) -> AgentClient:
        assert self.sandbox.agent is not None
        return self.sandbox.agent

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, method: str, **fields: Any) -> Any:
        """One RPC by its protocol name: these tests are of the wire protocol itself."""
        request = getattr(pb, f"{method}Request")(**fields)

        async def rpc() -> Any:
            try:
                return await getattr(self.agent.stub, method)(request, timeout=60)
            except grpc.aio.AioRpcError as exc:
                raise AgentError(method, exc.code(), exc.details() or "") from None

        return self.run(rpc())

    def create(self, args: list[str], *, terminal: bool = False, open_stdin: bool = False,
               spec_changes: dict[str, Any] | None = None, cid: str = "") -> str:
        cid = cid or "c" + secrets.token_hex(4)
        share_path = self.run(self.sandbox.bind_rootfs(cid, self.sandbox.image.busybox_rootfs,
                                                      readonly=True))
        spec = oci.container_spec(args, hostname="pod")
        for key, value in (spec_changes or {}).items():
            spec["linux"][key] = value
        self.call("CreateContainer", container_id=cid, oci_spec=json.dumps(spec).encode(),
                  rootfs=pb.Rootfs(share_path=share_path, guest_overlay=True),
                  stdio=pb.StdioOptions(terminal=terminal, open_stdin=open_stdin))
        return cid

    def output(self, cid: str, exec_id: str = "", stream: int = pb.STDOUT,
               offset: int = 0) -> bytes:
        async def collect() -> bytes:
            data = b""
            async for chunk in self.agent.follow_output(cid, exec_id, stream, offset):
                data += chunk.data
            return data
        return self.run(asyncio.wait_for(collect(), 60))

    def wait(self, cid: str, exec_id: str = "") -> pb.ExitStatus:
        reply = self.call("WaitProcess", container_id=cid, exec_id=exec_id)
        return reply.status

    def remove(self, cid: str) -> None:
        self.call("RemoveContainer", container_id=cid, force=True)
        self.sandbox.share.release(cid)


@pytest.fixture(scope="module")
def pod(guest_image, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[Pod]:  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("agent-state")
    loop = asyncio.new_event_loop()
    sandbox = SandboxVM(secrets.token_hex(6), state, guest_image,
                        VMConfig(accel=choose_accel("auto").name, boot_timeout=120))
    try:
        loop.run_until_complete(sandbox.start(hostname="agent-test"))
    except Exception:
        dump_console("agent-pod-boot", sandbox.console_path)
        raise
    pod = Pod(sandbox, loop)
    yield pod
    if request.session.testsfailed:
        dump_console("agent-pod", sandbox.console_path)
    loop.run_until_complete(sandbox.destroy())
    loop.close()
    assert not leaks.find(state)


def expect_error(pod: Pod, code: grpc.StatusCode, method: str, **fields: Any) -> str:
    with pytest.raises(AgentError) as info:
        pod.call(method, **fields)
    assert info.value.code == code, info.value
    return info.value.details


def test_health_reports_the_guest(pod: Pod, guest_image) -> None:  # type: ignore[no-untyped-def]
    reply = pod.call("Health")
    assert reply.kernel_release == guest_image.kernel_release
    assert reply.transport == "serial"
    assert reply.ready_at_uptime > 0


def test_lifecycle_output_and_exit(pod: Pod) -> None:
    cid = pod.create(["sh", "-c", "echo hello; echo oops >&2; hostname; exit 4"])
    listed = {p.container_id: p for p in pod.call("ListProcesses").processes}
    assert listed[cid].state == pb.ProcessInfo.CREATED
    pod.call("StartContainer", container_id=cid)
    status = pod.wait(cid)
    assert status.exit_code == 4
    assert status.finished_at_ns >= status.started_at_ns > 0
    assert pod.output(cid) == b"hello\npod\n"
    assert pod.output(cid, stream=pb.STDERR) == b"oops\n"
    # Offsets resume mid-stream: what a reconnecting host relies on.
    assert pod.output(cid, offset=6) == b"pod\n"
    expect_error(pod, grpc.StatusCode.FAILED_PRECONDITION, "StartContainer", container_id=cid)
    pod.remove(cid)
    expect_error(pod, grpc.StatusCode.NOT_FOUND, "WaitProcess", container_id=cid)
    pod.call("RemoveContainer", container_id=cid)  # idempotent


def test_exec_stdin_and_exit_codes(pod: Pod) -> None:
    cid = pod.create(["sleep", "300"])
    pod.call("StartContainer", container_id=cid)
    process = oci.process(["sh", "-c", "tr a-z A-Z; exit 9"])
    pod.call("ExecProcess", container_id=cid, exec_id="e1",
             process=json.dumps(process).encode(),
             stdio=pb.StdioOptions(open_stdin=True))
    pod.call("WriteStdin", container_id=cid, exec_id="e1", data=b"shout\n", close=True)
    assert pod.wait(cid, "e1").exit_code == 9
    assert pod.output(cid, "e1") == b"SHOUT\n"
    expect_error(pod, grpc.StatusCode.ALREADY_EXISTS, "ExecProcess", container_id=cid,
                 exec_id="e1", process=json.dumps(process).encode())
    pod.remove(cid)


def test_tty_resize_is_seen_by_stty(pod: Pod) -> None:
    cid = pod.create(["sleep", "300"])
    pod.call("StartContainer", container_id=cid)
    process = oci.process(["sh", "-c", "read line; stty size"], terminal=True)
    pod.call("ExecProcess", container_id=cid, exec_id="tty",
             process=json.dumps(process).encode(),
             stdio=pb.StdioOptions(terminal=True, open_stdin=True))
    pod.call("ResizeTty", container_id=cid, exec_id="tty", rows=33, cols=101)
    pod.call("WriteStdin", container_id=cid, exec_id="tty", data=b"go\n")
    assert pod.wait(cid, "tty").exit_code == 0
    output = pod.output(cid, "tty").replace(b"\r", b"")
    assert b"33 101" in output, output
    expect_error(pod, grpc.StatusCode.FAILED_PRECONDITION, "ResizeTty", container_id=cid,
                 exec_id="", rows=1, cols=1)
    pod.remove(cid)


def test_signal_stops_the_container_and_events_report_it(pod: Pod) -> None:
    async def first_exit_event(cid: str) -> pb.Event:
        call = pod.agent.stub.GetEvents(pb.GetEventsRequest())
        async for event in call:
            if event.container_id == cid and event.kind == pb.Event.EXIT:
                call.cancel()
                return event
        raise AssertionError("event stream ended")

    # PID 1 of a container ignores signals it has no handler for, so the
    # shell traps TERM like a well-behaved service would.
    cid = pod.create(["sh", "-c", "trap 'exit 143' TERM; sleep 300 & wait"])
    pod.call("StartContainer", container_id=cid)
    events = pod.loop.create_task(asyncio.wait_for(first_exit_event(cid), 60))
    pod.run(asyncio.sleep(0.5))
    pod.call("SignalProcess", container_id=cid, signal=signal.SIGTERM)
    assert pod.wait(cid).exit_code == 128 + signal.SIGTERM
    event = pod.run(events)
    assert event.exit.exit_code == 128 + signal.SIGTERM
    pod.call("SignalProcess", container_id=cid, signal=signal.SIGKILL)  # exited: no error
    expect_error(pod, grpc.StatusCode.INVALID_ARGUMENT, "SignalProcess", container_id=cid,
                 signal=99)
    pod.remove(cid)


def test_stats_and_oom_kill(pod: Pod) -> None:
    limit = 16 * 1024 * 1024
    cid = pod.create(["sh", "-c", "sleep 1; head -c 200m /dev/zero | tail > /dev/null"],
                     spec_changes={"resources": {"memory": {"limit": limit, "swap": limit}}})
    pod.call("StartContainer", container_id=cid)
    stats = pod.call("ContainerStats", container_id=cid)
    assert stats.memory_usage_bytes > 0
    assert stats.pids >= 1
    status = pod.wait(cid)
    assert status.oom_killed
    assert status.exit_code == 137
    pod.remove(cid)


def test_bad_requests_are_named(pod: Pod) -> None:
    share_path = pod.run(pod.sandbox.bind_rootfs("bad", pod.sandbox.image.busybox_rootfs, True))
    details = expect_error(pod, grpc.StatusCode.INVALID_ARGUMENT, "CreateContainer",
                           container_id="bad", oci_spec=b"{not json",
                           rootfs=pb.Rootfs(share_path=share_path))
    assert "not valid JSON" in details
    details = expect_error(pod, grpc.StatusCode.INVALID_ARGUMENT, "CreateContainer",
                           container_id="bad", oci_spec=b'{"process": {}}',
                           rootfs=pb.Rootfs(share_path="../../etc"))
    assert "leaves the sandbox share" in details
    details = expect_error(pod, grpc.StatusCode.INVALID_ARGUMENT, "CreateContainer",
                           container_id="a/b", oci_spec=b"{}")
    assert "invalid container id" in details
    expect_error(pod, grpc.StatusCode.NOT_FOUND, "StartContainer", container_id="nope")
    pod.sandbox.share.release("bad")


def test_crun_failure_is_reported_and_rolled_back(pod: Pod) -> None:
    with pytest.raises(AgentError) as info:
        pod.create(["/no/such/binary"], cid="broken")
    # The caller named a program the container does not have: its mistake.
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith("command: ") and "/no/such/binary" in info.value.details
    assert "broken" not in {p.container_id for p in pod.call("ListProcesses").processes}
    # Nothing of the failed attempt is left in the agent or in crun: the
    # same id can be created again.
    pod.create(["true"], cid="broken")
    pod.remove("broken")


def test_remove_running_container_needs_force(pod: Pod) -> None:
    cid = pod.create(["sleep", "300"])
    pod.call("StartContainer", container_id=cid)
    expect_error(pod, grpc.StatusCode.FAILED_PRECONDITION, "RemoveContainer", container_id=cid)
    pod.remove(cid)
    assert cid not in {p.container_id for p in pod.call("ListProcesses").processes}


def test_setup_sandbox_dns_sysctls_and_bad_sysctl(pod: Pod, tmp_path: Path) -> None:
    pod.call("SetupSandbox", hostname="renamed",
             dns=pb.DnsConfig(servers=["10.0.0.10"], searches=["svc.local"], options=["ndots:5"]),
             sysctls=[pb.SysctlEntry(key="net.ipv4.ip_forward", value="1")])
    cid = pod.create(["sh", "-c", "cat /proc/sys/net/ipv4/ip_forward"])
    pod.call("StartContainer", container_id=cid)
    assert pod.wait(cid).exit_code == 0
    assert pod.output(cid) == b"1\n"
    pod.remove(cid)
    details = expect_error(pod, grpc.StatusCode.INVALID_ARGUMENT, "SetupSandbox",
                           sysctls=[pb.SysctlEntry(key="no.such.knob", value="1")])
    assert "no.such.knob" in details
