"""Container stdio inside the guest.

A process's stdout and stderr are FIFOs in the process's io directory (or
one pty master) drained by a thread each into an *output spool*: an
append-only file in the guest's tmpfs with a byte offset per stream. Readers
ask for "everything from offset N", so a host that reconnects picks up
exactly where it stopped, and a process never blocks on a full pipe while
nobody reads. Nothing ever waits for these FIFOs' EOF before crun returns:
the container holds their write ends until it exits.

Stdin is a FIFO whose write end the agent keeps; closing it gives the
process EOF.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import select
import shutil
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# Output the host has not taken yet, per stream: past this the process waits.
SPOOL_LIMIT = 4 * 1024 * 1024
SEGMENT = 1024 * 1024
# How long an idle follower sleeps before it looks again whether its caller
# is still there, when it will also be woken on the caller's end.
IDLE_RECHECK = 300.0
STDIN_WRITE_TIMEOUT = 30.0
# crun's console sockets live here, not in the bundle: a unix socket path
# has at most 107 bytes, and bundle paths with 64-character ids come close.
CONSOLE_DIR = "/run/vmrt-console"


class OutputSpool:
    """An output stream kept in segment files, with blocking follow-reads.

    Offsets count every byte the process ever wrote. Bytes before ``base``
    are gone: the host took them (``trim``), or, for a stream nobody takes,
    they fell out of the window. At most ``limit`` bytes past ``base`` are
    kept; with ``acked`` the writer then waits for the host (back-pressure:
    the drain stops reading, the process blocks on its full pipe), without
    it the oldest bytes go. Memory is freed a whole segment at a time.
    """

    def __init__(self, path: str, limit: int = SPOOL_LIMIT, acked: bool = True) -> None:
        self.path = path
        self.limit = limit
        self.acked = acked
        self._segments: list[int] = []  # fds; segment i starts at _first + i * SEGMENT
        self._first = 0
        self._base = 0
        self._size = 0
        self._closed = False
        self._destroyed = False
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        return self._size

    @property
    def base(self) -> int:
        return self._base

    @property
    def closed(self) -> bool:
        return self._closed

    def _segment_path(self, start: int) -> str:
        return f"{self.path}.{start}"

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        with self._cond:
            while view:
                while (self.acked and self._size - self._base >= self.limit
                       and not self._destroyed):
                    self._cond.wait(timeout=1.0)
                if self._destroyed:
                    return
                room = self.limit - (self._size - self._base) if self.acked else len(view)
                piece = view[:max(1, min(room, len(view)))]
                self._write_locked(piece)
                view = view[len(piece):]
                if not self.acked:
                    self._trim_locked(self._size - self.limit)
                self._cond.notify_all()

    def _write_locked(self, data: memoryview) -> None:
        while data:
            end = self._first + len(self._segments) * SEGMENT
            if self._size >= end:
                if not self._segments:
                    self._first = self._size - self._size % SEGMENT
                self._segments.append(os.open(
                    self._segment_path(self._first + len(self._segments) * SEGMENT),
                    os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
                end += SEGMENT
            within = self._size - (end - SEGMENT)
            count = min(len(data), SEGMENT - within)
            os.pwrite(self._segments[-1], data[:count], within)
            self._size += count
            data = data[count:]

    def trim(self, offset: int) -> None:
        """Everything before ``offset`` may go (the host has it)."""
        with self._cond:
            self._trim_locked(offset)
            self._cond.notify_all()

    def _trim_locked(self, offset: int) -> None:
        offset = min(offset, self._size)
        if offset <= self._base:
            return
        self._base = offset
        while self._segments and self._first + SEGMENT <= self._base:
            os.close(self._segments.pop(0))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._segment_path(self._first))
            self._first += SEGMENT

    def close(self) -> None:
        """Mark end of stream: the writer is gone."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Readers look at ``keep_going`` again (their caller went away)."""
        with self._cond:
            self._cond.notify_all()

    def read_from(
        self, offset: int, follow: bool, keep_going: Callable[[], bool] = lambda: True,
        on_cancel: Callable[[Callable[[], None]], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, data) from ``offset`` on; with ``follow``, until closed and
        drained. Bytes already forgotten are skipped: the first chunk may start
        later than asked. ``on_cancel`` registers a callback for when the
        caller goes away (gRPC's ``add_callback``): a reader then sleeps
        until there is something to do, instead of waking each second to
        ask ``keep_going`` (an idle guest's wake-ups are QEMU's work)."""
        patience = 1.0
        if on_cancel is not None:
            if not on_cancel(self.wake):
                return  # gone already
            patience = IDLE_RECHECK
        while True:
            with self._cond:
                while follow and offset >= self._size and not self._closed:
                    self._cond.wait(timeout=patience)
                    if not keep_going():
                        return
                if self._destroyed:
                    return
                offset = max(offset, self._base)
                done = self._closed or not follow
                data = b""
                if offset < self._size:
                    index = (offset - self._first) // SEGMENT
                    within = offset - self._first - index * SEGMENT
                    count = min(CHUNK, SEGMENT - within, self._size - offset)
                    # Under the lock: trim and destroy must not close the fd midway.
                    data = os.pread(self._segments[index], count, within)
            if data:
                yield offset, data
                offset += len(data)
                continue
            if done:
                return

    def destroy(self) -> None:
        with self._cond:
            if self._destroyed:
                return
            self._destroyed = True
            self._closed = True
            self._cond.notify_all()
            for index, fd in enumerate(self._segments):
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._segment_path(self._first + index * SEGMENT))
            self._segments.clear()


def _write_all(fd: int, data: bytes, timeout: float) -> None:
    """Write everything, giving up if the reader takes no input for ``timeout``.

    The fd stays blocking (a pty master's flags are shared with the drain's
    dup); poll first, then write at most PIPE_BUF, which a writable pipe
    takes without blocking.
    """
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view:
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"the process took no input for {timeout:.0f} s")
        view = view[os.write(fd, view[:select.PIPE_BUF]):]


def _drain(fd: int, spool: OutputSpool, name: str) -> None:
    try:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError as exc:
                # A pty master reports EIO once the last slave fd closes.
                if exc.errno != errno.EIO:
                    log.warning("%s: read failed: %s", name, exc)
                break
            if not data:
                break
            spool.append(data)
    finally:
        os.close(fd)
        spool.close()


@dataclass
class ChildStdio:
    """The fds a spawned crun gets as 0, 1, 2; the parent closes them after spawn."""

    stdin: int
    stdout: int
    stderr: int

    def close(self) -> None:
        for fd in {self.stdin, self.stdout, self.stderr}:
            if fd >= 0:
                os.close(fd)


class ProcessIO:
    """Stdio of one container process: spools for output, a writer for stdin."""

    def __init__(self, directory: str, terminal: bool, open_stdin: bool,
                 acked_output: bool = True) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.terminal = terminal
        self.stdout = OutputSpool(os.path.join(directory, "stdout"), acked=acked_output)
        self.stderr = OutputSpool(os.path.join(directory, "stderr"), acked=acked_output)
        self._stdin_w = -1
        self._pty_master = -1
        self._stdin_lock = threading.Lock()
        self._open_stdin = open_stdin
        self._threads: list[threading.Thread] = []
        self.console_socket_path = os.path.join(CONSOLE_DIR, f"{secrets.token_hex(8)}.sock")
        self._console_listener: socket.socket | None = None

    # -- before spawn ---------------------------------------------------

    def _fifo(self, name: str) -> tuple[int, int]:
        """A named pipe in the io directory: (read fd, write fd), both blocking."""
        path = os.path.join(self.directory, name)
        os.mkfifo(path, 0o600)
        # Opening the read end non-blocking first lets the write end open
        # without waiting for a peer.
        read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        write_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        os.set_blocking(read_fd, True)
        return read_fd, write_fd

    def child_fds(self) -> ChildStdio:
        """Create the FIFOs; returns the ends that belong to the child."""
        if self._open_stdin and not self.terminal:
            stdin_r, self._stdin_w = self._fifo("stdin.fifo")
        else:
            stdin_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if self.terminal:
            # crun sends the pty master over this socket; our own stdio for
            # crun is /dev/null so nothing of it reaches the terminal.
            os.makedirs(CONSOLE_DIR, mode=0o700, exist_ok=True)
            self._console_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._console_listener.bind(self.console_socket_path)
            self._console_listener.listen(1)
            null_out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            self.stderr.close()
            return ChildStdio(stdin_r, null_out, os.dup(null_out))
        out_r, out_w = self._fifo("stdout.fifo")
        err_r, err_w = self._fifo("stderr.fifo")
        self._start_drain(out_r, self.stdout, "stdout")
        self._start_drain(err_r, self.stderr, "stderr")
        return ChildStdio(stdin_r, out_w, err_w)

    def receive_console(self, timeout: float) -> None:
        """After crun started with --console-socket: take the pty master it sends."""
        assert self._console_listener is not None
        listener = self._console_listener
        listener.settimeout(timeout)
        try:
            conn, _ = listener.accept()
            with conn:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        finally:
            listener.close()
            self._console_listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.console_socket_path)
        if not fds:
            raise RuntimeError("crun sent no terminal file descriptor")
        self._pty_master = fds[0]
        os.set_inheritable(self._pty_master, False)
        self._start_drain(os.dup(self._pty_master), self.stdout, "tty")

    def abandon_console(self) -> None:
        if self._console_listener is not None:
            self._console_listener.close()
            self._console_listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.console_socket_path)

    def _start_drain(self, fd: int, spool: OutputSpool, name: str) -> None:
        thread = threading.Thread(target=_drain, args=(fd, spool, name), daemon=True, name=name)
        thread.start()
        self._threads.append(thread)

    # -- while running --------------------------------------------------

    def spool(self, stream: int) -> OutputSpool:
        return self.stderr if stream == 1 else self.stdout

    def write_stdin(self, data: bytes, close: bool) -> None:
        with self._stdin_lock:
            fd = self._pty_master if self.terminal else self._stdin_w
            if fd < 0:
                if data:
                    raise BrokenPipeError("stdin is not open for this process")
                return
            _write_all(fd, data, STDIN_WRITE_TIMEOUT)
            if close:
                if self.terminal:
                    # A terminal has no half-close; EOT at line start is what
                    # a shell reading the tty sees as end of input.
                    os.write(fd, b"\x04")
                else:
                    os.close(self._stdin_w)
                    self._stdin_w = -1

    def resize(self, rows: int, cols: int) -> None:
        if self._pty_master < 0:
            raise ValueError("the process has no terminal")
        fcntl.ioctl(self._pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def join(self, timeout: float) -> None:
        """Wait for the output drains to hit EOF."""
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        self.abandon_console()
        with self._stdin_lock:
            for fd in (self._stdin_w, self._pty_master):
                if fd >= 0:
                    os.close(fd)
            self._stdin_w = self._pty_master = -1
        self.stdout.close()
        self.stderr.close()

    def destroy(self) -> None:
        self.close()
        self.stdout.destroy()
        self.stderr.destroy()
        shutil.rmtree(self.directory, ignore_errors=True)
