"""The framed serial line end to end, without a VM: gRPC through our relay,
a socket standing in for QEMU's chardev, the guest's SerialLink on the other
end of it, and a real gRPC server behind that. Sessions that end abruptly,
with bytes of theirs still on the line, do not poison the next one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from vmrt.agent import framing
from vmrt.agent.transport import SerialLink
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agent.v1 import agent_pb2_grpc as pb_grpc
from vmrt.agentapi import AgentError
from vmrt.agentclient import AgentClient
from vmrt.serialrelay import SerialRelay


class _Health(pb_grpc.AgentServicer):
    def Health(self, request, context):  # type: ignore[no-untyped-def]
        return pb.HealthResponse(agent_version="relay-test")


class Line:
    """QEMU's chardev socket and the guest behind it."""

    def __init__(self, directory: Path) -> None:
        self.chardev = directory / "agent.sock"
        inner = directory / "inner.sock"
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_AgentServicer_to_server(_Health(), self.server)
        self.server.add_insecure_port(f"unix:{inner}")
        self.server.start()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.chardev))
        self.listener.listen(1)
        self.guest_end: socket.socket | None = None
        self.link: SerialLink | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._guest, args=(str(inner),), daemon=True)
        self._thread.start()

    def _guest(self, inner: str) -> None:
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        self.guest_end = conn
        self.link = SerialLink(conn.fileno(), inner)
        while not self._stop:
            try:
                self.link.step(50)
            except BrokenPipeError:  # the host end closed: this fake guest is done
                return

    def inject(self, data: bytes) -> None:
        """Bytes from the guest's side, outside any session's order."""
        assert self.guest_end is not None
        os.write(self.guest_end.fileno(), data)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        if self.guest_end is not None:
            self.guest_end.close()
        self.listener.close()
        self.server.stop(0)


@contextlib.asynccontextmanager
async def relayed(line: Line) -> AsyncIterator[tuple[AgentClient, SerialRelay]]:
    """An agent client through a relay to ``line``; closed afterwards."""
    client = AgentClient.for_vm("serial", str(line.chardev), keepalive_s=0)
    assert client._relay is not None
    try:
        yield client, client._relay
    finally:
        await client.close()


async def probe_again(client: AgentClient) -> pb.HealthResponse:
    """Health, once more if the first call went out on the connection that
    just ended (gRPC fails a call in flight with UNAVAILABLE, as it should)."""
    try:
        return await client.probe(10)
    except AgentError as exc:
        assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
        return await client.probe(10)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    line = Line(tmp_path)
    yield line
    line.close()


def test_a_new_session_never_reads_the_last_ones_bytes(line: Line) -> None:
    async def scenario() -> None:
        async with relayed(line) as (client, relay):
            assert (await client.probe(10)).agent_version == "relay-test"
            # HTTP/2 bytes of a session that is over: a PING and a
            # SETTINGS ack, in DATA frames, and half a frame.
            stale = (framing.frame(framing.DATA, b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"p" * 8)
                     + framing.frame(framing.DATA, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                     + framing.frame(framing.DATA, b"cut short")[:6])
            for round in range(5):
                relay._end_session()  # as a keepalive timeout ends a connection
                line.inject(stale)
                assert (await probe_again(client)).agent_version == "relay-test", round
            assert relay.sessions == 6
            assert relay._sync.dropped >= 5 * len(stale) - 5 * 6  # the stale bytes went nowhere
            assert line.link is not None and line.link.sessions >= 6
        assert not relay.listen_path.exists()

    asyncio.run(scenario())


def test_a_guest_that_breaks_the_framing_loses_its_session_only(line: Line) -> None:
    async def scenario() -> None:
        async with relayed(line) as (client, relay):
            await client.probe(10)
            # A header that claims 4 GiB.
            line.inject(framing.MAGIC + bytes([framing.DATA]) + b"\xff\xff\xff\xff" + b"z" * 1000)
            for _ in range(100):
                if relay._session is None or relay.sessions > 1:
                    break
                await asyncio.sleep(0.05)
            assert (await probe_again(client)).agent_version == "relay-test"
            assert relay.sessions == 2

    asyncio.run(scenario())


def test_the_relay_survives_a_vmrtd_that_was_killed(line: Line, tmp_path: Path) -> None:
    """A socket file left by a killed vmrtd does not stop the next one."""
    (tmp_path / "relay.sock").write_bytes(b"")

    async def scenario() -> None:
        async with relayed(line) as (client, _):
            assert (await client.probe(10)).agent_version == "relay-test"

    asyncio.run(scenario())


def test_connections_at_once_leave_one_session_and_no_hello_storm(
        line: Line, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two connections accepted in one turn: the later one is the session,
    the earlier one ends, and nobody goes on saying HELLO."""
    from vmrt import serialrelay
    monkeypatch.setattr(serialrelay, "HELLO_RESEND", 0.2)
    monkeypatch.setattr(serialrelay, "HELLO_RESEND_MAX", 0.2)

    async def scenario() -> None:
        async with relayed(line) as (client, relay):
            await client.probe(10)
            extra = [await asyncio.open_unix_connection(str(relay.listen_path)) for _ in range(2)]
            await asyncio.sleep(1.0)
            assert line.link is not None
            settled = line.link.sessions
            await asyncio.sleep(1.5)  # seven resend periods
            assert line.link.sessions == settled
            assert relay._session is not None and relay._session.welcomed.is_set()
            first_reader, _ = extra[0]
            assert await asyncio.wait_for(first_reader.read(), 5) == b""  # superseded: closed
            for _, writer in extra:
                writer.close()
            assert (await probe_again(client)).agent_version == "relay-test"

    asyncio.run(scenario())
