"""SPDY/3.1 sessions and streams, as Kubernetes' streaming protocols use them.

kubelet, crictl and kubectl speak SPDY through moby/spdystream, which uses
a subset of SPDY/3.1: SYN_STREAM/SYN_REPLY to open streams, DATA with FIN
to half-close them, RST_STREAM, PING and GOAWAY. It ignores SETTINGS and
WINDOW_UPDATE and never enforces flow-control windows, so neither does
this module; memory is bounded instead by no longer reading from the
socket while any stream holds more than ``BUFFER_LIMIT`` unread bytes (or
all of them together more than ``SESSION_BUFFER_LIMIT``), and the number of
open streams is capped.

Frames are built and parsed in ``spdy_frames``, header blocks compressed
in ``spdy_headers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vmrt.streaming.spdy_frames import (
    CANCEL,
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    GOAWAY,
    HEADERS,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SYN_REPLY,
    SYN_STREAM,
    ByteReader,
    ByteWriter,
    Frame,
    ProtocolError,
    control_frame,
    data_frame,
    read_frame,
)
from vmrt.streaming.spdy_headers import HeaderDecoder, HeaderEncoder

log = logging.getLogger(__name__)

DATA_CHUNK = 32 * 1024
BUFFER_LIMIT = 1024 * 1024  # unread bytes per stream
SESSION_BUFFER_LIMIT = 8 * 1024 * 1024  # and per session
READ_LIMIT = 1024 * 1024
MAX_STREAMS = 512  # open at once; more are refused
CLOSE_TIMEOUT = 5.0


@dataclass
class Stream:
    """One SPDY stream as an async byte pipe."""

    session: Session
    id: int
    headers: dict[str, str]
    _chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    buffered: int = 0
    remote_closed: bool = False
    local_closed: bool = False
    reset: bool = False
    replied: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, limit: int = READ_LIMIT) -> bytes:
        """What has arrived (at least one frame's worth, up to about ``limit`` bytes);
        b"" once the peer has half-closed (or reset) the stream."""
        chunk = await self._chunks.get()
        if chunk is None:
            self._chunks.put_nowait(None)
            self.session._maybe_forget(self)
            return b""
        # Frames already here are handed over together: fewer, larger
        # writes downstream (each one a message to the agent).
        parts = [chunk]
        size = len(chunk)
        while size < limit and not self._chunks.empty():
            peeked = self._chunks.get_nowait()
            if peeked is None:
                self._chunks.put_nowait(None)
                break
            parts.append(peeked)
            size += len(peeked)
        self.buffered -= size
        self.session._buffer_drained()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            raise ConnectionResetError(f"stream {self.id} is closed")
        for start in range(0, len(data), DATA_CHUNK):
            await self.session._send(data_frame(self.id, 0, data[start:start + DATA_CHUNK]))

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN."""
        if self.local_closed or self.reset:
            return
        self.local_closed = True
        with contextlib.suppress(ConnectionError):
            await self.session._send(data_frame(self.id, FLAG_FIN, b""))
        self.session._maybe_forget(self)

    async def abort(self, status: int = CANCEL) -> None:
        if self.reset:
            return
        self._on_reset()
        with contextlib.suppress(ConnectionError):
            await self.session._send(control_frame(RST_STREAM, 0,
                                                   struct.pack(">II", self.id, status)))

    # -- driven by the session's reader ---------------------------------

    def _on_data(self, data: bytes, fin: bool) -> None:
        if self.remote_closed:
            raise ProtocolError(f"data on stream {self.id} after its FIN")
        if data:
            self.buffered += len(data)
            self._chunks.put_nowait(data)
        if fin:
            self._on_remote_close()

    def _on_remote_close(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._chunks.put_nowait(None)
        self.session._maybe_forget(self)

    def _on_reset(self, discard: bool = True) -> None:
        """The stream is over: reset by either side (its unread data is dropped) or,
        with ``discard`` False, cut off by the connection's end (what arrived stays
        readable)."""
        self.reset = True
        self.local_closed = True
        if discard:
            while not self._chunks.empty():
                self._chunks.get_nowait()
            self.buffered = 0
            if self.remote_closed:  # the end marker went with the data
                self._chunks.put_nowait(None)
        self._on_remote_close()
        self.replied.set()
        # Later DATA for it is dropped as for any unknown stream.
        self.session.streams.pop(self.id, None)
        self.session._buffer_drained()




class Session:
    """A SPDY/3.1 session over one connection, as server or client.

    The server side is given ``on_stream``, called for each stream the peer
    opens (after it has been replied to); the client opens streams with
    ``open_stream``. ``serve`` reads frames until the connection ends.
    """

    def __init__(self, reader: ByteReader, writer: ByteWriter, *,
                 client: bool, on_stream: Callable[[Stream], None] | None = None,
                 on_activity: Callable[[], None] = lambda: None) -> None:
        self._reader = reader
        self._on_activity = on_activity  # called for every frame read or sent
        self._writer = writer
        self._client = client
        self._on_stream = on_stream
        self._encoder = HeaderEncoder()
        self._decoder = HeaderDecoder()
        self._write_lock = asyncio.Lock()
        self._next_id = 1 if client else 2
        self._last_peer_id = 0
        self.streams: dict[int, Stream] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self.closed = asyncio.Event()
        self.going_away = False

    # -- sending --------------------------------------------------------

    async def _send(self, frame: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY session is closed")
        async with self._write_lock:
            self._writer.write(frame)
            await self._writer.drain()
        self._on_activity()

    async def _send_headers(self, build: Callable[[bytes], bytes],
                            headers: Iterable[tuple[str, str]]) -> None:
        # Header blocks must reach the wire in the order they were compressed.
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY session is closed")
        async with self._write_lock:
            self._writer.write(build(self._encoder.encode(headers)))
            await self._writer.drain()
        self._on_activity()

    async def open_stream(self, headers: Iterable[tuple[str, str]], *,
                          wait_reply: bool = True) -> Stream:
        stream_id = self._next_id
        self._next_id += 2
        stream = Stream(self, stream_id, dict(headers))
        self.streams[stream_id] = stream
        await self._send_headers(
            lambda block: control_frame(SYN_STREAM, 0,
                                        struct.pack(">IIBB", stream_id, 0, 0, 0) + block),
            stream.headers.items())
        if wait_reply:
            await stream.replied.wait()
            if stream.reset:
                raise ConnectionResetError(f"the peer refused stream {stream_id}")
        return stream

    async def goaway(self, status: int = 0) -> None:
        if self.going_away:
            return
        self.going_away = True
        with contextlib.suppress(ConnectionError):
            await self._send(control_frame(GOAWAY, 0,
                                           struct.pack(">II", self._last_peer_id, status)))

    async def close(self) -> None:
        """GOAWAY, then close the connection; every stream sees EOF.

        Bounded in time: a peer that stops reading cannot hold it up (the
        connection is then aborted).
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.goaway()
        self._shutdown()
        self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except Exception:  # timed out, or already broken: just drop it
            transport = getattr(self._writer, "transport", None)
            if transport is not None:
                transport.abort()

    def _shutdown(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in list(self.streams.values()):
            stream._on_reset(discard=False)
        self.streams.clear()
        self._drained.set()

    # -- receiving ------------------------------------------------------

    def _buffered_too_much(self) -> bool:
        sizes = [s.buffered for s in self.streams.values()]
        return max(sizes, default=0) > BUFFER_LIMIT or sum(sizes) > SESSION_BUFFER_LIMIT

    def _buffer_drained(self) -> None:
        if not self._buffered_too_much():
            self._drained.set()

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed and stream.buffered == 0:
            self.streams.pop(stream.id, None)

    async def serve(self) -> None:
        """Read and dispatch frames until the connection ends or breaks."""
        try:
            while True:
                await self._drained.wait()
                frame = await read_frame(self._reader)
                if frame is None:
                    return
                self._on_activity()
                await self._dispatch(frame)
        except (ConnectionError, ProtocolError) as exc:
            log.debug("SPDY session ended: %s", exc)
            if isinstance(exc, ProtocolError):
                with contextlib.suppress(ConnectionError):
                    await self.goaway(PROTOCOL_ERROR)
        finally:
            self._shutdown()

    async def _dispatch(self, frame: Frame) -> None:
        if frame.kind == 0:
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                # Late data for a stream already reset or forgotten.
                return
            stream._on_data(frame.payload, frame.fin)
            if self._buffered_too_much():
                self._drained.clear()
            return
        payload = frame.payload
        if frame.kind == SYN_STREAM:
            await self._on_syn_stream(frame)
        elif frame.kind in (SYN_REPLY, HEADERS):
            if len(payload) < 4:
                raise ProtocolError("short SYN_REPLY/HEADERS frame")
            (stream_id,) = struct.unpack(">I", payload[:4])
            headers = self._decoder.decode(payload[4:])
            stream = self.streams.get(stream_id & 0x7FFFFFFF)
            if stream is not None:
                stream.headers.update(headers)
                stream.replied.set()
                if frame.fin:
                    stream._on_remote_close()
        elif frame.kind == RST_STREAM:
            if len(payload) != 8:
                raise ProtocolError("RST_STREAM frame of the wrong size")
            stream_id, _status = struct.unpack(">II", payload)
            stream = self.streams.pop(stream_id & 0x7FFFFFFF, None)
            if stream is not None:
                stream._on_reset()
        elif frame.kind == PING:
            if len(payload) != 4:
                raise ProtocolError("PING frame of the wrong size")
            (ping_id,) = struct.unpack(">I", payload)
            # Answer the peer's pings (odd ids from a client, even from a server).
            if (ping_id & 1) == (1 if not self._client else 0):
                await self._send(control_frame(PING, 0, payload))
        elif frame.kind == GOAWAY:
            self.going_away = True
        # SETTINGS, WINDOW_UPDATE and anything newer: not used (see above).

    async def _on_syn_stream(self, frame: Frame) -> None:
        payload = frame.payload
        if len(payload) < 10:
            raise ProtocolError("short SYN_STREAM frame")
        stream_id, _associated = struct.unpack(">II", payload[:8])
        stream_id &= 0x7FFFFFFF
        headers = self._decoder.decode(payload[10:])
        if stream_id == 0 or (stream_id & 1) != (1 if not self._client else 0) \
                or stream_id <= self._last_peer_id:
            raise ProtocolError(f"invalid new stream id {stream_id}")
        self._last_peer_id = stream_id
        stream = Stream(self, stream_id, headers)
        if self.going_away or self._on_stream is None or len(self.streams) >= MAX_STREAMS:
            await Stream(self, stream_id, headers).abort(REFUSED_STREAM)
            return
        self.streams[stream_id] = stream
        stream.replied.set()
        await self._send_headers(
            lambda block: control_frame(SYN_REPLY, 0, struct.pack(">I", stream_id) + block), ())
        if frame.fin:
            stream._on_remote_close()
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        self._on_stream(stream)
