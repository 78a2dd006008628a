"""A byte stream carried in binary WebSocket messages: client-go's SPDY tunnelling.

Newer clients (kubectl through the API server, ``critest --websocket-portforward``)
run port-forward's SPDY session inside a WebSocket whose subprotocol is
``SPDY/3.1+portforward.k8s.io``: each binary message is a slice of the SPDY
byte stream, with no framing of its own. These adapters let ``spdy.Session``
run over that unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib

from vmrt.streaming.websocket import ChannelSocket

PREFIX = "SPDY/3.1+"
BUFFER_LIMIT = 1024 * 1024


class TunnelReader:
    """``readexactly`` over the socket's messages, buffering at most about 1 MiB."""

    def __init__(self, sock: ChannelSocket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._eof = False
        self._wanted = 0  # what a waiting readexactly needs, which may exceed the limit
        self._changed = asyncio.Condition()
        self._pump = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while (message := await self._sock.receive_message()) is not None:
                async with self._changed:
                    await self._changed.wait_for(
                        lambda: len(self._buffer) < max(BUFFER_LIMIT, self._wanted))
                    self._buffer += message
                    self._changed.notify_all()
        finally:
            self._eof = True
            with contextlib.suppress(Exception):
                async with self._changed:
                    self._changed.notify_all()

    async def readexactly(self, n: int) -> bytes:
        async with self._changed:
            self._wanted = n
            self._changed.notify_all()
            await self._changed.wait_for(lambda: len(self._buffer) >= n or self._eof)
            self._wanted = 0
            if len(self._buffer) < n:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            self._changed.notify_all()
            return data

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(BaseException):
            await self._pump


class TunnelWriter:
    """The writer side: each ``write`` + ``drain`` becomes one binary message."""

    def __init__(self, sock: ChannelSocket, reader: TunnelReader) -> None:
        self._sock = sock
        self._reader = reader
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    async def drain(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            await self._sock.send_message(data)

    def close(self) -> None:
        # The closing handshake needs the loop; wait_closed() does it.
        pass

    async def wait_closed(self) -> None:
        await self._reader.close()
        await self._sock.close()
