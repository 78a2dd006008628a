"""WebSocket transport for the Kubernetes channel protocols (wsproto, server side).

Every binary message is one channel's data: the first byte is the channel
number, the rest its payload. ``*.base64.channel.k8s.io`` variants carry the
channel as an ASCII digit and the payload base64-encoded, in text messages.
v5 adds a close signal: the message ``[255, channel]`` half-closes a channel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable, Iterable

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

CLOSE_CHANNEL = 255
MAX_MESSAGE = 1024 * 1024
CLOSE_TIMEOUT = 5.0
READ_CHUNK = 64 * 1024


class ChannelSocket:
    """An accepted WebSocket speaking one of the channel subprotocols."""

    def __init__(self, ws: WSConnection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, subprotocol: str) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self.subprotocol = subprotocol
        self.base64 = ".base64." in f".{subprotocol}" or subprotocol.startswith("base64.")
        self.closed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._partial = bytearray()
        self._partial_text: list[str] = []
        self._partial_text_size = 0
        self.on_activity: Callable[[], None] = lambda: None  # any bytes read or sent

    @property
    def version(self) -> int:
        """The channel protocol's version: 5 for v5.channel.k8s.io, 1 for channel.k8s.io."""
        head = self.subprotocol.split(".", 1)[0]
        return int(head[1:]) if head.startswith("v") and head[1:].isdigit() else 1

    async def _flush(self, data: bytes) -> None:
        async with self._write_lock:
            self._writer.write(data)
            await self._writer.drain()
        self.on_activity()

    async def send_message(self, data: bytes) -> None:
        """One whole binary message, no channel byte (SPDY tunnelling)."""
        if self.closed.is_set():
            raise ConnectionResetError("the WebSocket is closed")
        await self._flush(self._ws.send(BytesMessage(data=data)))

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the WebSocket is closed")
        if self.base64:
            message = TextMessage(data=f"{channel}{base64.b64encode(data).decode()}")
            await self._flush(self._ws.send(message))
        else:
            await self._flush(self._ws.send(BytesMessage(data=bytes([channel]) + data)))

    async def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, payload); None once the connection is closed."""
        while (message := await self.receive_message()) is not None:
            if message:
                return message[0], message[1:]
        return None

    async def receive_message(self) -> bytes | None:
        """The next whole message (base64 ones decoded, channel digit made a byte)."""
        while True:
            for event in self._ws.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            if self.closed.is_set():
                return None
            try:
                data = await self._reader.read(READ_CHUNK)
            except ConnectionError:
                data = b""
            if not data:
                self.closed.set()
                return None
            self.on_activity()
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as exc:
                log.debug("WebSocket protocol error: %s", exc)
                with contextlib.suppress(LocalProtocolError, ConnectionError):
                    await self._flush(self._ws.send(exc.event_hint or CloseConnection(1002)))
                self.closed.set()
                return None

    async def _handle(self, event: object) -> bytes | None:
        if isinstance(event, Ping):
            with contextlib.suppress(ConnectionError, LocalProtocolError):
                await self._flush(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            with contextlib.suppress(ConnectionError, LocalProtocolError):
                await self._flush(self._ws.send(event.response()))
            self.closed.set()
        elif isinstance(event, BytesMessage):
            self._partial += event.data
            if len(self._partial) > MAX_MESSAGE:
                await self.close(1009, "message too big")
            elif event.message_finished:
                raw, self._partial = bytes(self._partial), bytearray()
                return raw
        elif isinstance(event, TextMessage):
            if not self.base64:
                await self.close(1003, "this subprotocol takes binary messages only")
                return None
            if event.data:
                self._partial_text.append(event.data)
                self._partial_text_size += len(event.data)
            if self._partial_text_size > MAX_MESSAGE * 4 // 3 + 8:
                await self.close(1009, "message too big")
            elif event.message_finished:
                text, self._partial_text = "".join(self._partial_text), []
                self._partial_text_size = 0
                if text and self.base64 and text[0].isdigit():
                    with contextlib.suppress(ValueError):
                        return bytes([int(text[0])]) + base64.b64decode(text[1:])
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close handshake and connection, bounded in time (then aborted)."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if not self.closed.is_set():
                    self.closed.set()
                    with contextlib.suppress(ConnectionError, LocalProtocolError):
                        await self._flush(self._ws.send(CloseConnection(code=code,
                                                                        reason=reason)))
                self._writer.close()
                await self._writer.wait_closed()
        except Exception:  # timed out, or already broken: just drop it
            self._writer.transport.abort()


async def accept(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 supported: Iterable[str]) -> ChannelSocket | None:
    """Complete the handshake of a request whose head is ``head``.

    The subprotocol is the client's first choice among ``supported``; a
    client offering none of them is refused with 400 and the list.
    """
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(head)
    request = next((e for e in ws.events() if isinstance(e, Request)), None)
    if request is None:
        raise ValueError("not a WebSocket handshake")
    offered = list(request.subprotocols)
    supported = list(supported)
    chosen = next((p for p in offered if p in supported), None)
    if chosen is None:
        body = (f"none of the offered subprotocols {offered} is supported; "
                f"use one of {supported}\n").encode()
        writer.write(ws.send(RejectConnection(
            status_code=400, headers=[(b"content-type", b"text/plain"),
                                      (b"content-length", str(len(body)).encode())],
            has_body=True)))
        writer.write(ws.send(RejectData(data=body)))
        await writer.drain()
        return None
    writer.write(ws.send(AcceptConnection(subprotocol=chosen)))
    await writer.drain()
    return ChannelSocket(ws, reader, writer, chosen)
