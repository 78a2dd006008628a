"""Bridging the host's channel to the agent's local gRPC socket.

gRPC cannot serve on a character device, so the agent's gRPC server listens
on a unix socket inside the guest and a pump thread joins it to the host:

* **virtio-serial** (hosts without vhost-vsock): one port, one byte stream
  for the VM's life, carrying frames (``vmrt.agent.framing``): each host
  session begins with a HELLO and gets a fresh inner connection, so a host
  that reconnects always starts a clean HTTP/2 session, whatever bytes of
  the last one are still on the line. While no host is connected the port
  polls as POLLHUP and reads return 0 at once, so we sleep-poll instead of
  spinning.
* **vsock** (KVM hosts): a listening AF_VSOCK socket; each accepted host
  connection is pumped to its own inner connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time

from vmrt.agent import framing

log = logging.getLogger(__name__)

BUF = 256 * 1024
HOST_POLL_INTERVAL = 0.005


def find_serial_port(name: str, sys_dir: str = "/sys/class/virtio-ports") -> str:
    """The /dev path of the virtio-serial port called ``name``."""
    try:
        entries = sorted(os.listdir(sys_dir))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        try:
            with open(os.path.join(sys_dir, entry, "name")) as f:
                if f.read().strip() == name:
                    return f"/dev/{entry}"
        except OSError:
            continue
    raise FileNotFoundError(f"no virtio-serial port named {name!r} in {sys_dir}")


def _pump(outer: int, inner: socket.socket) -> str:
    """Copy bytes both ways until either side hangs up."""
    inner.setblocking(False)
    inner_fd = inner.fileno()
    to_inner = bytearray()
    to_outer = bytearray()
    poller = select.poll()
    while True:
        # Read from a side only while what we read last has gone out: this
        # bounds memory and passes back-pressure through.
        outer_events = (0 if to_inner else select.POLLIN) | (select.POLLOUT if to_outer else 0)
        inner_events = (0 if to_outer else select.POLLIN) | (select.POLLOUT if to_inner else 0)
        poller.register(outer, outer_events)
        poller.register(inner_fd, inner_events)
        for fd, events in poller.poll():
            if fd == outer:
                if events & select.POLLIN:
                    data = _read(outer)
                    if data == b"":
                        return "host hung up"
                    if data:
                        to_inner += data
                elif events & (select.POLLHUP | select.POLLERR) and not to_outer:
                    return "host hung up"
                if events & select.POLLOUT and to_outer:
                    del to_outer[: _write(outer, to_outer)]
            else:
                if events & select.POLLIN:
                    data = _recv(inner)
                    if data == b"":
                        # The inner server closed: flush what is left, then drop.
                        _flush(outer, to_outer)
                        return "agent closed"
                    if data:
                        to_outer += data
                elif events & (select.POLLHUP | select.POLLERR):
                    return "agent hung up"
                if events & select.POLLOUT and to_inner:
                    with contextlib.suppress(BlockingIOError):
                        del to_inner[: inner.send(to_inner)]


def _read(fd: int) -> bytes | None:
    """Bytes read, b"" at end of stream, None when nothing is ready."""
    try:
        return os.read(fd, BUF)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENXIO, errno.EIO):
            return b""
        raise


def _recv(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(BUF)
    except BlockingIOError:
        return None
    except (ConnectionResetError, BrokenPipeError):
        return b""


def _write(fd: int, data: bytearray) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def _flush(fd: int, data: bytearray) -> None:
    deadline = time.monotonic() + 1.0
    while data and time.monotonic() < deadline:
        select.select([], [fd], [], 0.05)
        del data[: _write(fd, data)]


def _connect_inner(path: str) -> socket.socket:
    inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inner.connect(path)
    return inner


def _host_connected(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    events = poller.poll(0)
    if not events:
        return False
    mask = events[0][1]
    return bool(mask & select.POLLIN) or not mask & select.POLLHUP


class SerialLink:
    """The guest's end of the framed serial line: one inner connection per
    host session, bytes both ways as DATA frames."""

    def __init__(self, fd: int, inner_path: str, forged_fd: int = -1) -> None:
        self.fd = fd
        self.inner_path = inner_path
        # Test hook (vmrt.agent.testhooks): raw bytes for the line, unframed.
        self.forged_fd = forged_fd
        self.sync = framing.GuestSync()
        self.inner: socket.socket | None = None
        self.to_inner = bytearray()
        self.to_outer = bytearray()
        self.sessions = 0

    def run(self) -> None:
        while True:
            if not _host_connected(self.fd):
                self._host_gone()
                time.sleep(HOST_POLL_INTERVAL)
                continue
            self.step()

    def step(self, timeout_ms: int | None = None) -> None:
        """Wait for the line or the inner connection, then move bytes once."""
        poller = select.poll()
        # Read from a side only while what we read last has gone out: this
        # bounds memory and passes back-pressure through.
        poller.register(self.fd, (0 if self.to_inner else select.POLLIN)
                        | (select.POLLOUT if self.to_outer else 0))
        if self.inner is not None:
            poller.register(self.inner.fileno(), (0 if self.to_outer else select.POLLIN)
                            | (select.POLLOUT if self.to_inner else 0))
        if self.forged_fd >= 0:
            poller.register(self.forged_fd, 0 if self.to_outer else select.POLLIN)
        inner = self.inner
        for fd, events in poller.poll(timeout_ms):
            if fd == self.forged_fd:
                self.to_outer += _read(fd) or b""
            elif fd == self.fd:
                if events & select.POLLIN:
                    data = _read(self.fd)
                    if data == b"":
                        self._host_gone()
                        return
                    if data:
                        for kind, payload in self.sync.feed(data):
                            self._frame(kind, payload)
                elif events & (select.POLLHUP | select.POLLERR):
                    self._host_gone()
                    return
                if events & select.POLLOUT and self.to_outer:
                    del self.to_outer[: _write(self.fd, self.to_outer)]
            elif self.inner is not None and self.inner is inner and fd == inner.fileno():
                # (Not for an inner connection a HELLO just replaced: the
                # new one may have the old one's fd number.)
                if events & select.POLLIN:
                    data = _recv(self.inner)
                    if data == b"":
                        self._inner_closed()
                        continue
                    if data:
                        self.to_outer += framing.data_frames(data)
                elif events & (select.POLLHUP | select.POLLERR):
                    self._inner_closed()
                    continue
                if events & select.POLLOUT and self.to_inner:
                    with contextlib.suppress(BlockingIOError):
                        del self.to_inner[: self.inner.send(self.to_inner)]

    def _frame(self, kind: int, payload: bytes) -> None:
        if kind == framing.HELLO:
            self._close_inner()
            # What is left of the last session's bytes to the host goes:
            # the host drops all it gets before this session's WELCOME.
            self.to_outer.clear()
            try:
                self.inner = _connect_inner(self.inner_path)
                self.inner.setblocking(False)
            except OSError as exc:
                # No WELCOME: the host says HELLO again.
                log.warning("cannot reach the local gRPC server: %s", exc)
                return
            self.sessions += 1
            self.to_outer += framing.frame(framing.WELCOME, payload)
        elif kind == framing.DATA:
            if self.inner is not None:
                self.to_inner += payload
        elif kind == framing.END:
            self._close_inner()
        # A WELCOME from the host means nothing; it is dropped.

    def _inner_closed(self) -> None:
        """The gRPC server ended the session: tell the host."""
        self._close_inner()
        self.to_outer += framing.frame(framing.END)

    def _close_inner(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        self.to_inner.clear()

    def _host_gone(self) -> None:
        if self.inner is not None or self.sync.synced:
            log.debug("host hung up; %d byte(s) dropped out of step so far", self.sync.dropped)
        self._close_inner()
        self.to_outer.clear()
        self.sync.reset()


def serve_serial(port_path: str, inner_path: str, forged_fd: int = -1) -> None:
    """Forever: frames on the port, to a fresh inner connection per host session."""
    fd = os.open(port_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    SerialLink(fd, inner_path, forged_fd).run()


def serve_vsock(port: int, inner_path: str) -> None:
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    listener.bind((socket.VMADDR_CID_ANY, port))
    listener.listen(16)
    while True:
        conn, _addr = listener.accept()
        threading.Thread(target=_serve_one, args=(conn, inner_path), daemon=True).start()


def _serve_one(conn: socket.socket, inner_path: str) -> None:
    with conn, _connect_inner(inner_path) as inner:
        conn.setblocking(False)
        try:
            _pump(conn.fileno(), inner)
        except OSError as exc:
            log.debug("vsock pump: %s", exc)
