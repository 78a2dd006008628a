"""Exec, attach and port-forward carried over WebSocket channels."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

from vmrt.errors import VmrtError
from vmrt.runtime.streams import StreamService
from vmrt.streaming.portforward import pump
from vmrt.streaming.remotecommand import (
    CommandIO,
    encode_status,
    exit_status,
    failure_status,
    parse_resize,
    serve_process,
    start_process,
    success_status,
)
from vmrt.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest
from vmrt.streaming.websocket import CLOSE_CHANNEL, ChannelSocket

log = logging.getLogger(__name__)

# Client's first choice wins. v5 adds the close signal that half-closes stdin.
COMMAND_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io",
                     "channel.k8s.io", "base64.channel.k8s.io")
# The first is client-go's SPDY session tunnelled through the WebSocket.
PORTFORWARD_PROTOCOLS = ("SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io",
                         "v4.base64.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io")

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
QUEUE_DEPTH = 16  # messages of at most 1 MiB each (websocket.MAX_MESSAGE)


class Demux:
    """Reads the socket and hands each channel's messages to its own reader.

    Bounded queues: a channel whose reader falls behind stops the socket
    being read, which pushes back on the client through TCP.
    """

    def __init__(self, sock: ChannelSocket, channels: list[int]) -> None:
        self._sock = sock
        self._queues: dict[int, asyncio.Queue[bytes | None]] = {
            c: asyncio.Queue(QUEUE_DEPTH) for c in channels}
        self.gone = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Demux:
        self._reading = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        """Stop reading and close the socket; a client gone mid-write is no error."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(BaseException):
                await self._reading
        await self._sock.close()
        if isinstance(exc, ConnectionError):
            log.debug("WebSocket client went away: %s", exc)
            return True
        return False

    async def run(self) -> None:
        try:
            while (message := await self._sock.receive()) is not None:
                channel, data = message
                if channel == CLOSE_CHANNEL and self._sock.version >= 5 and len(data) == 1:
                    queue = self._queues.get(data[0])
                    if queue is not None:
                        await queue.put(None)
                    continue
                queue = self._queues.get(channel)
                if queue is not None and data:
                    await queue.put(data)
        finally:
            self.gone.set()
            for queue in self._queues.values():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    def drop(self, channel: int) -> None:
        """Stop keeping the channel's messages (nobody reads them any more)."""
        queue = self._queues.pop(channel, None)
        if queue is not None:
            # Emptied, so that a reader blocked on this full queue goes on
            # (and finds the channel gone for its next message).
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

    async def read(self, channel: int) -> bytes:
        """The channel's next message; b"" once it is closed (or the socket is)."""
        queue = self._queues[channel]
        data = await queue.get()
        if data is None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            return b""
        return data

    async def messages(self, channel: int) -> AsyncIterator[bytes]:
        while data := await self.read(channel):
            yield data


async def _sizes(demux: Demux) -> AsyncIterator[tuple[int, int]]:
    async for message in demux.messages(RESIZE):
        size = parse_resize(message)
        if size is not None:
            yield size


async def serve_command(sock: ChannelSocket, request: ExecRequest | AttachRequest,
                        service: StreamService) -> None:
    inputs = [STDIN] if request.stdin else []
    inputs += [RESIZE] if request.tty else []
    async with Demux(sock, inputs) as demux:
        # The one empty message kubelet sends on the lowest writable channel:
        # the streams are ready.
        ready = STDOUT if request.stdout else STDERR if request.stderr and not request.tty \
            else ERROR
        await sock.send(ready, b"")

        async def report(status: dict[str, object]) -> None:
            if sock.version >= 4:
                await sock.send(ERROR, encode_status(status))
            elif status["status"] != "Success":
                await sock.send(ERROR, str(status.get("message", "")).encode())

        try:
            proc = await start_process(service, request)
        except VmrtError as exc:
            await report(failure_status(str(exc)))
            return

        async def out(data: bytes) -> None:
            await sock.send(STDOUT, data)

        async def err(data: bytes) -> None:
            await sock.send(STDERR, data)

        io = CommandIO(
            stdin=demux.messages(STDIN) if request.stdin else None,
            stdout=out if request.stdout else None,
            stderr=err if request.stderr else None,
            resize=_sizes(demux) if request.tty else None,
            gone=demux.gone)
        try:
            code = await serve_process(proc, io)
        except (VmrtError, ConnectionError) as exc:
            if not demux.gone.is_set():
                await report(failure_status(f"error streaming to the process: {exc}"))
            return
        if demux.gone.is_set():
            return
        if isinstance(request, ExecRequest) and code is not None:
            await report(exit_status(request.cmd, code))
        else:
            await report(success_status())


async def serve_portforward(sock: ChannelSocket, request: PortForwardRequest,
                            service: StreamService) -> None:
    """Each port of the request: data on channel 2i, errors on 2i+1, each opened
    with the port number (two bytes, little-endian)."""
    ports = list(request.ports)
    async with Demux(sock, [2 * i for i in range(len(ports))]) as demux:
        if not ports:
            await sock.close(1008, "the port-forward request names no ports")
            return
        for index, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await sock.send(2 * index, prefix)
            await sock.send(2 * index + 1, prefix)
        forwards = [asyncio.create_task(_forward_port(sock, demux, service, request.pod_id,
                                                      index, port))
                    for index, port in enumerate(ports)]
        gone: asyncio.Future[Any] = asyncio.create_task(demux.gone.wait())
        everything: asyncio.Future[Any] = asyncio.gather(*forwards)
        await asyncio.wait({everything, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in [*forwards, gone]:
            task.cancel()
        with contextlib.suppress(BaseException):
            await everything


async def _forward_port(sock: ChannelSocket, demux: Demux, service: StreamService,
                        pod_id: str, index: int, port: int) -> None:
    data, error = 2 * index, 2 * index + 1

    async def write(chunk: bytes) -> None:
        await sock.send(data, chunk)

    async def nothing() -> None:
        # The channel protocol has no half-close of one channel.
        return

    try:
        conn = await service.connect_port(pod_id, port)
        await pump(conn, lambda: demux.read(data), write, nothing)
    except VmrtError as exc:
        with contextlib.suppress(ConnectionError):
            await sock.send(error, f"error forwarding port {port} to pod {pod_id}, "
                                   f"uid : {exc}".encode())
    finally:
        # Whatever the client still sends for this port is dropped, so it
        # cannot hold up the other ports' channels.
        demux.drop(data)
