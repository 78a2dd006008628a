"""Bridging the host's channel to the agent's local gRPC socket.

gRPC cannot serve on a character device, so the agent's gRPC server listens
on a unix socket inside the guest and a pump thread joins it to the host:

* **virtio-serial** (hosts without vhost-vsock): one port, one host
  connection at a time. While no host is connected the port polls as
  POLLHUP and reads return 0 at once, so we sleep-poll instead of spinning.
  Every host connection gets a fresh inner connection, so a host that
  reconnects always starts a clean HTTP/2 session.
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


# Every HTTP/2 client connection begins with this (RFC 9113, section 3.4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _PrefaceSync:
    """Drops host bytes until the start of an HTTP/2 connection.

    A serial port has no connection boundaries: bytes of a host connection
    that ended (a client that gave up mid-handshake, a daemon that
    restarted) can still be in flight when the next one starts. Every inner
    connection therefore begins at a client preface, never mid-stream.
    """

    def __init__(self) -> None:
        self.synced = False
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if self.synced:
            return data
        data = self._held + data
        start = data.find(HTTP2_PREFACE)
        if start >= 0:
            self.synced = True
            self._held = b""
            if start:
                log.debug("dropped %d stale bytes before the HTTP/2 preface", start)
            return data[start:]
        # Keep a tail that may be the beginning of a split preface.
        self._held = data[-(len(HTTP2_PREFACE) - 1):]
        return b""


def _pump(outer: int, inner: socket.socket) -> str:
    """Copy bytes both ways until either side hangs up."""
    inner.setblocking(False)
    inner_fd = inner.fileno()
    to_inner = bytearray()
    to_outer = bytearray()
    sync = _PrefaceSync()
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
                        to_inner += sync.feed(data)
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


def serve_serial(port_path: str, inner_path: str) -> None:
    """Forever: wait for a host on the port, pump it to a fresh inner connection."""
    fd = os.open(port_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    while True:
        if not _host_connected(fd):
            time.sleep(HOST_POLL_INTERVAL)
            continue
        try:
            inner = _connect_inner(inner_path)
        except OSError as exc:
            log.warning("cannot reach the local gRPC server: %s", exc)
            time.sleep(0.1)
            continue
        log.debug("host connected on %s", port_path)
        with inner:
            try:
                ended_by = _pump(fd, inner)
            except OSError as exc:
                ended_by = f"error {exc}"
        log.debug("host connection on %s ended: %s", port_path, ended_by)


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
