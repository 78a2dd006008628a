"""The guest's byte pump (vsock) and the host's boot wait."""

import os
import socket
import threading
from pathlib import Path

import pytest

from vmrt.agent.transport import _pump, find_serial_port


def test_find_serial_port_by_name(tmp_path: Path) -> None:
    for entry, name in (("vport0p1", "org.qemu.guest_agent.0"), ("vport0p2", "vmrt.agent")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    assert find_serial_port("vmrt.agent", str(tmp_path)) == "/dev/vport0p2"
    with pytest.raises(FileNotFoundError, match="no virtio-serial port named"):
        find_serial_port("other", str(tmp_path))


def test_pump_copies_both_ways_and_reports_who_hung_up() -> None:
    host, outer = socket.socketpair()
    inner, server = socket.socketpair()
    outer.setblocking(False)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(_pump(outer.fileno(), inner)))
    thread.start()
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=host.sendall, args=(payload,))
    sender.start()
    received = bytearray()
    while len(received) < len(payload):
        received += server.recv(1 << 16)
    sender.join()
    assert bytes(received) == payload
    server.sendall(b"reply")
    assert host.recv(16) == b"reply"
    host.close()
    thread.join(10)
    assert result == ["host hung up"]
    for s in (outer, inner, server):
        s.close()


def test_the_boot_wait_survives_a_broken_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest still booting on a loaded host can miss a keepalive PING, and
    gRPC then ends the connection (UNAVAILABLE "ping timeout"): the boot wait
    tries again until its deadline instead of failing the pod. Other errors end it."""
    import asyncio

    import grpc

    from vmrt.agent.v1 import agent_pb2 as pb
    from vmrt.agentapi import AgentError
    from vmrt.agentclient import AgentClient

    async def scenario() -> None:
        client = AgentClient("unix:///nonexistent/agent.sock")
        calls: list[float] = []
        outcomes = [AgentError("Health", grpc.StatusCode.UNAVAILABLE, "ping timeout"),
                    AgentError("Health", grpc.StatusCode.UNAVAILABLE, "Socket closed"),
                    pb.HealthResponse(agent_version="ok")]

        async def unary(method, request, reply_type, timeout=None, wait_for_ready=False):  # type: ignore[no-untyped-def]
            calls.append(timeout)
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        monkeypatch.setattr(client, "_unary", unary)
        never = asyncio.get_running_loop().create_future()
        health = await client.wait_ready(30, never)
        assert health.agent_version == "ok" and len(calls) == 3
        assert all(0 < t <= 30 for t in calls)
        outcomes[:] = [AgentError("Health", grpc.StatusCode.INTERNAL, "bad")]
        with pytest.raises(AgentError, match="bad"):
            await client.wait_ready(30, never)
        await client.close()

    asyncio.run(scenario())
