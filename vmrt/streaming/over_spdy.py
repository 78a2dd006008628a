"""Exec, attach and port-forward carried over SPDY/3.1 (crictl's and kubelet's default)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator

from vmrt.errors import VmrtError
from vmrt.runtime.streams import StreamService
from vmrt.streaming import spdy, spdy_frames
from vmrt.streaming.portforward import pump
from vmrt.streaming.remotecommand import (
    MAX_RESIZE_MESSAGE,
    CommandIO,
    encode_status,
    exit_status,
    failure_status,
    resize_of,
    serve_process,
    start_process,
    success_status,
)
from vmrt.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest

log = logging.getLogger(__name__)

COMMAND_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)
STREAM_CREATION_TIMEOUT = 30.0
MAX_CONNECTIONS = 128  # forwarded connections (with pairs still forming) per session
CLOSE_GRACE = 5.0
_SPACE = re.compile(r"\s*")


async def _chunks(stream: spdy.Stream) -> AsyncIterator[bytes]:
    while data := await stream.read():
        yield data


async def _sizes(stream: spdy.Stream) -> AsyncIterator[tuple[int, int]]:
    """The resize stream: JSON values one after another, split anywhere.
    Each chunk is scanned once (an index moves on; the text is not copied
    per value)."""
    decoder = json.JSONDecoder()
    buffer = ""
    async for data in _chunks(stream):
        buffer += data.decode("utf-8", "replace")
        index = 0
        for count in itertools.count(1):
            if (index := _skip_space(buffer, index)) >= len(buffer):
                break
            try:
                value, index = decoder.raw_decode(buffer, index)
            except (ValueError, RecursionError):
                break
            size = resize_of(value)
            if size is not None:
                yield size
            if count % 256 == 0:
                await asyncio.sleep(0)  # a flood of tiny values must not hog the loop
        buffer = buffer[index:]
        if len(buffer) > MAX_RESIZE_MESSAGE:
            # Not a size message, however long it grows: drop it.
            buffer = ""


def _skip_space(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    return match.end() if match else index


async def _finish(session: spdy.Session, serving: asyncio.Task[None]) -> None:
    """GOAWAY, then let the client close (it reads the error stream to EOF first)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_GRACE):
            await session.goaway()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(serving), CLOSE_GRACE)
    await session.close()


async def serve_command(session: spdy.Session, incoming: asyncio.Queue[spdy.Stream],
                        serving: asyncio.Task[None], protocol: str,
                        request: ExecRequest | AttachRequest,
                        service: StreamService) -> None:
    version = int(protocol[1])
    expected = {"error"}
    if request.stdin:
        expected.add("stdin")
    if request.stdout:
        expected.add("stdout")
    if request.stderr and not request.tty:
        expected.add("stderr")
    if request.tty and version >= 3:
        expected.add("resize")
    streams: dict[str, spdy.Stream] = {}
    try:
        async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
            while set(streams) != expected:
                stream = await _next_stream(incoming, serving)
                if stream is None:
                    return
                kind = stream.headers.get("streamtype", "")
                if kind not in expected or kind in streams:
                    await stream.abort(spdy_frames.PROTOCOL_ERROR)
                    continue
                streams[kind] = stream
    except TimeoutError:
        log.warning("streaming client did not open %s within %.0f s",
                    ", ".join(sorted(expected - set(streams))), STREAM_CREATION_TIMEOUT)
        await session.close()
        return

    # Streams opened after the expected ones are refused, not left to fill up.
    refusing = asyncio.create_task(_refuse_more(incoming, serving))
    try:
        await _run_command(session, serving, version, streams, request, service)
    finally:
        refusing.cancel()


async def _refuse_more(incoming: asyncio.Queue[spdy.Stream],
                       serving: asyncio.Task[None]) -> None:
    while (stream := await _next_stream(incoming, serving)) is not None:
        await stream.abort(spdy_frames.REFUSED_STREAM)


async def _run_command(session: spdy.Session, serving: asyncio.Task[None], version: int,
                       streams: dict[str, spdy.Stream], request: ExecRequest | AttachRequest,
                       service: StreamService) -> None:
    error = streams["error"]

    async def report(status: dict[str, object]) -> None:
        if version >= 4:
            await error.write(encode_status(status))
        elif status["status"] != "Success":
            await error.write(str(status.get("message", "")).encode())

    try:
        proc = await start_process(service, request)
    except VmrtError as exc:
        await report(failure_status(str(exc)))
        await error.close()
        await _finish(session, serving)
        return
    io = CommandIO(
        stdin=_chunks(streams["stdin"]) if "stdin" in streams else None,
        stdout=streams["stdout"].write if "stdout" in streams else None,
        stderr=streams["stderr"].write if "stderr" in streams else None,
        resize=_sizes(streams["resize"]) if "resize" in streams else None,
        gone=session.closed)
    try:
        code = await serve_process(proc, io)
    except (VmrtError, ConnectionError) as exc:
        if session.closed.is_set():
            return
        await report(failure_status(f"error streaming to the process: {exc}"))
    else:
        if code is None and session.closed.is_set():
            return
        for kind in ("stdout", "stderr"):
            if kind in streams:
                await streams[kind].close()
        if isinstance(request, ExecRequest) and code is not None:
            await report(exit_status(request.cmd, code))
        else:
            await report(success_status())
    await error.close()
    await _finish(session, serving)


async def _next_stream(incoming: asyncio.Queue[spdy.Stream],
                       serving: asyncio.Task[None]) -> spdy.Stream | None:
    """The next stream the client opens, or None once the connection is gone."""
    getter = asyncio.ensure_future(incoming.get())
    try:
        await asyncio.wait({getter, serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()   # Queue.get gives the item back when cancelled
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


async def serve_portforward(session: spdy.Session, incoming: asyncio.Queue[spdy.Stream],
                            serving: asyncio.Task[None], request: PortForwardRequest,
                            service: StreamService) -> None:
    """Pairs of (error, data) streams, one TCP connection per pair, until the client leaves."""
    pending: dict[str, dict[str, spdy.Stream]] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def expire(request_id: str) -> None:
        await asyncio.sleep(STREAM_CREATION_TIMEOUT)
        timers.pop(request_id, None)
        pair = pending.pop(request_id, {})
        for stream in pair.values():
            if stream.headers.get("streamtype") == "error":
                # FIN after the message: a reset could overtake it.
                with contextlib.suppress(ConnectionError):
                    await stream.write(f"request {request_id}: timed out waiting for the "
                                       f"data and error streams".encode())
                await stream.close()
            else:
                await stream.abort()

    timers: dict[str, asyncio.Task[None]] = {}
    try:
        while (stream := await _next_stream(incoming, serving)) is not None:
            kind = stream.headers.get("streamtype", "")
            port = _port(stream.headers.get("port", ""))
            if kind not in ("data", "error") or port is None or \
                    (request.ports and port not in request.ports):
                await stream.abort(spdy_frames.PROTOCOL_ERROR)
                continue
            # Clients that send no request id open the error stream, then the
            # data stream (the next id of theirs, two higher).
            request_id = stream.headers.get("requestid") or \
                str(stream.id if kind == "error" else stream.id - 2)
            if request_id not in pending and len(pending) + len(tasks) >= MAX_CONNECTIONS:
                await stream.abort(spdy_frames.REFUSED_STREAM)
                continue
            pair = pending.setdefault(request_id, {})
            if kind in pair:
                await stream.abort(spdy_frames.PROTOCOL_ERROR)
                continue
            pair[kind] = stream
            if len(pair) < 2:
                timers[request_id] = asyncio.create_task(expire(request_id))
                continue
            del pending[request_id]
            timer = timers.pop(request_id, None)
            if timer is not None:
                timer.cancel()
            task = asyncio.create_task(
                _forward_pair(service, request.pod_id, port, pair["data"], pair["error"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in [*tasks, *timers.values()]:
            task.cancel()
        for task in [*tasks, *timers.values()]:
            with contextlib.suppress(BaseException):
                await task
        await session.close()


def _port(value: str) -> int | None:
    try:
        port = int(value)
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


async def _forward_pair(service: StreamService, pod_id: str, port: int, data: spdy.Stream,
                        error: spdy.Stream) -> None:
    # As kubelet does: a failure is written on the error stream and both
    # streams are then closed (FIN, not reset: a reset may overtake the
    # message and the client would drop it unread).
    try:
        conn = await service.connect_port(pod_id, port)
    except VmrtError as exc:
        with contextlib.suppress(ConnectionError):
            await error.write(
                f"error forwarding port {port} to pod {pod_id}, uid : {exc}".encode())
        await data.close()
    else:
        async def upload() -> bytes:
            chunk = await data.read()
            if not chunk and data.reset:
                # Cut off, not finished: the pod must not take it for a
                # complete upload.
                raise ConnectionResetError("the client reset the data stream")
            return chunk

        try:
            await pump(conn, upload, data.write, data.close)
        except (VmrtError, ConnectionError) as exc:
            log.debug("port-forward to %s:%d ended: %s", pod_id[:12], port, exc)
            with contextlib.suppress(ConnectionError):
                await error.write(f"error forwarding port {port}: {exc}".encode())
            await data.close()
    await error.close()
    # The pod's side is closed; what the client still sends (until it sees
    # our FIN and closes its side) is read and dropped, never left to fill
    # the session's buffers.
    try:
        async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
            while await data.read():
                pass
    except TimeoutError:
        await data.abort()
