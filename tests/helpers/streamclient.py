"""Clients of the streaming server, for tests: SPDY/3.1 and WebSocket.

SPDY uses ``vmrt.streaming.spdy.Session`` in its client role (its framing is
checked against the spec's layouts in tests/unit/test_spdy.py) behind the
HTTP upgrade of ``vmrt.streaming.client``; WebSocket uses the ``websockets``
library. Both speak
to the server over real TCP, as crictl and kubelet do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from vmrt.streaming import client, spdy
from vmrt.streaming.client import UpgradeError


@dataclass
class Outcome:
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""  # what the error stream/channel carried
    events: list[str] = field(default_factory=list)

    @property
    def status(self) -> dict[str, Any]:
        return json.loads(self.error) if self.error else {}

    @property
    def exit_code(self) -> int:
        status = self.status
        if status.get("status") == "Success":
            return 0
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise AssertionError(f"no exit code in {status}")


HTTPError = UpgradeError
upgrade = client.upgrade
read_all = client.read_all
spdy_session = client.connect


async def spdy_command(url: str, *, stdin: bytes | None = None, stdout: bool = True,
                       stderr: bool = True, tty: bool = False,
                       resize: tuple[int, int] | None = None,
                       protocol: str = "v4.channel.k8s.io") -> Outcome:
    """Run an exec/attach session the way client-go's v4 executor does."""
    session, serving, chosen = await spdy_session(url, [protocol])
    assert chosen == protocol
    error = await session.open_stream([("streamType", "error")])
    await error.close()  # the client never writes on it
    streams: dict[str, spdy.Stream] = {}
    if stdin is not None:
        streams["stdin"] = await session.open_stream([("streamType", "stdin")])
    if stdout:
        streams["stdout"] = await session.open_stream([("streamType", "stdout")])
    if stderr and not tty:
        streams["stderr"] = await session.open_stream([("streamType", "stderr")])
    if tty:
        streams["resize"] = await session.open_stream([("streamType", "resize")])
    if resize is not None:
        width, height = resize
        await streams["resize"].write(json.dumps({"Width": width, "Height": height}).encode()
                                      + b"\n")
    if stdin is not None:
        await streams["stdin"].write(stdin)
        await streams["stdin"].close()
    outcome = Outcome()
    readers = []
    if "stdout" in streams:
        readers.append(read_all(streams["stdout"]))
    if "stderr" in streams:
        readers.append(read_all(streams["stderr"]))
    results = await asyncio.gather(*readers)
    if "stdout" in streams:
        outcome.stdout = results[0]
    if "stderr" in streams:
        outcome.stderr = results[-1]
    outcome.error = await read_all(error)
    await session.close()
    serving.cancel()
    return outcome


async def ws_command(url: str, protocol: str, *, stdin: bytes | None = None,
                     close_stdin: bool = True, resize: tuple[int, int] | None = None) -> Outcome:
    """An exec/attach session over WebSocket channels; v5 half-closes stdin."""
    outcome = Outcome()
    async with websockets.connect(url.replace("http://", "ws://"), subprotocols=[protocol],
                                  max_size=None) as ws:
        assert ws.subprotocol == protocol
        if resize is not None:
            width, height = resize
            await ws.send(bytes([4]) + json.dumps({"Width": width, "Height": height}).encode())
        if stdin is not None:
            for start in range(0, len(stdin), 32768):
                await ws.send(bytes([0]) + stdin[start:start + 32768])
            if close_stdin:
                await ws.send(bytes([255, 0]))
        async for message in ws:
            assert isinstance(message, bytes)
            channel, data = message[0], message[1:]
            if channel == 1:
                outcome.stdout += data
            elif channel == 2:
                outcome.stderr += data
            elif channel == 3:
                outcome.error += data
            if not data:
                outcome.events.append(f"empty:{channel}")
    return outcome


async def spdy_forward(session: spdy.Session, port: int, request_id: int,
                       payload: bytes) -> tuple[bytes, bytes]:
    """One forwarded connection as client-go opens it: (data received, error text)."""
    headers = [("streamType", "error"), ("port", str(port)), ("requestID", str(request_id))]
    error = await session.open_stream(headers)
    await error.close()
    data = await session.open_stream([("streamType", "data"), *headers[1:]])
    await data.write(payload)
    await data.close()
    received, problem = await asyncio.gather(read_all(data), read_all(error))
    return received, problem


async def ws_forward(url: str, port: int, payload: bytes,
                     protocol: str = "v4.channel.k8s.io") -> tuple[bytes, bytes]:
    """One port over WebSocket: channel 0 data, 1 errors, each opened with the port."""
    received, problem = bytearray(), bytearray()
    prefixes: dict[int, bytes] = {}
    async with websockets.connect(url.replace("http://", "ws://"), subprotocols=[protocol],
                                  max_size=None) as ws:
        # A refused port may be answered and closed before the payload goes out.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(bytes([0]) + payload)
        async for message in ws:
            assert isinstance(message, bytes)
            channel, data = message[0], message[1:]
            if channel not in prefixes:
                prefixes[channel] = data[:2]
                data = data[2:]
            (received if channel == 0 else problem).extend(data)
    assert prefixes.get(0) == struct.pack("<H", port), prefixes
    return bytes(received), bytes(problem)


class _WSBytes:
    """The SPDY byte stream inside a client WebSocket's binary messages (wsproto).

    ``websockets`` refuses the subprotocol name (a "/" is not an RFC 6455
    token character, though Go's gorilla/websocket sends it), so this side
    of the test uses wsproto's client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ws: WSConnection) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ws
        self.buffer = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = await self.reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(bytes(self.buffer), n)
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    self.buffer += event.data
                elif isinstance(event, CloseConnection):
                    self.writer.write(self.ws.send(event.response()))
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def write(self, data: bytes) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=data)))

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        await self.writer.wait_closed()


async def tunnelled_session(url: str) -> tuple[spdy.Session, asyncio.Task[None]]:
    """Port-forward's SPDY session inside a WebSocket, as newer client-go dials it."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host=parts.netloc, target=parts.path,
                                 subprotocols=["SPDY/3.1+portforward.k8s.io"])))
    while True:
        ws.receive_data(await reader.read(65536))
        accepted = [e for e in ws.events() if isinstance(e, AcceptConnection)]
        if accepted:
            assert accepted[0].subprotocol == "SPDY/3.1+portforward.k8s.io"
            break
    pipe = _WSBytes(reader, writer, ws)
    session = spdy.Session(pipe, pipe, client=True)
    return session, asyncio.create_task(session.serve())


async def session_pair() -> tuple[spdy.Session, spdy.Session, list[spdy.Stream],
                                  list[asyncio.Task[None]]]:
    """A server and a client SPDY session joined by a socketpair, both
    serving; ``accepted`` collects the streams the client opens."""
    left, right = socket.socketpair()
    accepted: list[spdy.Stream] = []
    server_io = await asyncio.open_connection(sock=left)
    client_io = await asyncio.open_connection(sock=right)
    server = spdy.Session(*server_io, client=False, on_stream=accepted.append)
    client = spdy.Session(*client_io, client=True)
    tasks = [asyncio.create_task(server.serve()), asyncio.create_task(client.serve())]
    return server, client, accepted, tasks
