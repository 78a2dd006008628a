"""The host's end of the agent's framed virtio-serial line.

gRPC connects to a unix socket of ours (``listen_path``); we keep one
connection to QEMU's chardev socket (``port_path``) for as long as we run
and carry each gRPC connection over it as one session of frames
(``vmrt.agent.framing``). A gRPC connection that ends (a keepalive
timeout, a call cancelled mid-handshake) therefore never leaves the next
one reading the last one's bytes: each session starts with a HELLO whose
nonce the guest must echo, and everything the guest sent before that echo
is dropped.

One session at a time: a new gRPC connection supersedes the old one. What
the guest sends is parsed strictly and bounded by the frame size; a guest
that breaks the framing loses its session (gRPC reconnects) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from vmrt.agent import framing

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# A HELLO that gets no WELCOME is said again, with a new nonce, after this
# (doubling up to HELLO_RESEND_MAX): the guest may not have opened its port yet.
HELLO_RESEND = 2.0
HELLO_RESEND_MAX = 10.0


class SerialRelay:
    """``resync``: the line may be in the middle of a frame of an earlier
    vmrtd's (one that was killed mid-write): the first bytes on it are a
    frame's worth of filler, so the guest is back in step before our HELLO.
    """

    def __init__(self, port_path: Path, listen_path: Path, resync: bool = False) -> None:
        self.port_path = port_path
        self.listen_path = listen_path
        self.resync = resync
        self.sessions = 0
        self._listener: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._port: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._port_lock = asyncio.Lock()
        self._port_task: asyncio.Task[None] | None = None
        self._sync = framing.HostSync()
        self._session: _Session | None = None
        self._closed = False

    def bind(self) -> None:
        """Bind the socket gRPC connects to (now, so a connect never races us)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen_path)  # a socket left by a vmrtd that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.listen_path))
            os.chmod(self.listen_path, 0o600)
            sock.listen(8)
        except BaseException:
            sock.close()
            raise
        self._listener = sock

    async def start(self) -> None:
        if self._listener is None:
            self.bind()
        self._server = await asyncio.start_unix_server(self._client, sock=self._listener)

    async def close(self) -> None:
        async with self._port_lock:  # no line is opened after this
            self._closed = True
        if self._server is not None:
            self._server.close()
        elif self._listener is not None:
            self._listener.close()
        self._end_session()
        if self._port_task is not None:
            # Its end closes the line (a frame cut short there is what
            # ``resync`` is for, in the next vmrtd).
            self._port_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._port_task
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen_path)

    # -- the line to QEMU --------------------------------------------------

    async def _line(self) -> asyncio.StreamWriter:
        async with self._port_lock:
            if self._closed:
                raise ConnectionAbortedError("the relay is closed")
            if self._port is None:
                reader, writer = await asyncio.open_unix_connection(str(self.port_path))
                self._port = (reader, writer)
                self._sync.lose()
                if self.resync:
                    # No magic in it: the guest skips it whatever state it is in.
                    writer.write(bytes(framing.HEADER.size + framing.MAX_PAYLOAD))
                self._port_task = asyncio.create_task(self._read_line(reader, writer),
                                                      name=f"serial-line {self.port_path}")
            return self._port[1]

    async def _read_line(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """Everything the guest sends, to the session it belongs to.

        One read is handled at once for the session that was current when
        it came (frames of a session that a newer one replaced meanwhile
        are dropped), its DATA in one write, and then other tasks get their
        turn: a guest that sends tiny frames costs its own pod time only.
        """
        try:
            while data := await reader.read(READ_SIZE):
                session = self._session
                try:
                    frames = self._sync.feed(data)
                except framing.FrameError as exc:
                    log.warning("%s: the guest broke the framing (%s); its session ends",
                                self.port_path, exc)
                    self._end_session()
                    continue
                payloads = []
                for kind, payload in frames:
                    if session is None or session is not self._session:
                        break
                    if kind == framing.WELCOME:
                        session.welcomed.set()
                    elif kind == framing.DATA and session.welcomed.is_set():
                        payloads.append(payload)
                    elif kind == framing.END:
                        self._end_session()
                    # A HELLO from the guest means nothing.
                if payloads and session is not None:
                    await session.to_client(b"".join(payloads))
                await asyncio.sleep(0)
        except (ConnectionError, OSError) as exc:
            log.debug("%s: line error: %s", self.port_path, exc)
        finally:
            # QEMU closed the line (it exited): the session cannot go on.
            if self._port is not None and self._port[1] is writer:
                self._port = None
            writer.transport.abort()
            self._end_session()

    def _end_session(self) -> None:
        """No session: what the guest sends is dropped until the next WELCOME."""
        self._sync.lose()
        session, self._session = self._session, None
        if session is not None:
            session.end()

    # -- gRPC's connections ------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        if self._closed:
            session.end()
            return
        # A new connection supersedes the old one, at once (no await between).
        old, self._session = self._session, session
        self._sync.lose()
        if old is not None:
            old.end()
        try:
            line = await self._line()
            await self._hello(session, line)
            self.sessions += 1
            while data := await reader.read(READ_SIZE):
                if session.ended:
                    break
                line.write(framing.data_frames(data))
                await line.drain()
            if not session.ended and self._session is session:
                line.write(framing.frame(framing.END))
                await line.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("%s: session ended: %s", self.port_path, exc)
        finally:
            if self._session is session:
                self._session = None
                self._sync.lose()
            session.end()

    async def _hello(self, session: _Session, line: asyncio.StreamWriter) -> None:
        """HELLO until the guest answers with the latest nonce."""
        wait = HELLO_RESEND
        while True:
            if session.ended or self._session is not session:
                raise ConnectionResetError("the session ended before the guest answered")
            nonce = os.urandom(framing.NONCE_SIZE)
            self._sync.expect(nonce)
            line.write(framing.frame(framing.HELLO, nonce))
            with contextlib.suppress(TimeoutError):
                # (The drain too: a guest that reads nothing holds it.)
                await asyncio.wait_for(_drained_then(line, session.welcomed), wait)
            if session.welcomed.is_set() and not session.ended:
                return
            wait = min(wait * 2, HELLO_RESEND_MAX)


async def _drained_then(line: asyncio.StreamWriter, event: asyncio.Event) -> None:
    await line.drain()
    await event.wait()


class _Session:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.welcomed = asyncio.Event()
        self.ended = False

    async def to_client(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.welcomed.set()  # wakes a HELLO wait
        self.writer.transport.abort()  # at once, unsent bytes or not
