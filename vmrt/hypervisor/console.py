"""The guest's serial console on the host, bounded.

The guest writes its serial port as fast as it likes; the host keeps the
most recent part, which is what explains a failed boot or a crash. QEMU's
serial goes to a unix socket that vmrtd bound and connected before QEMU
started (nothing the guest prints is lost, not even the first line), and
vmrtd copies it into ``console.log``. When that reaches ``cap`` bytes it
becomes ``console.log.1`` (replacing the older one), so between ``cap`` and
``2 * cap`` bytes of the latest output are always on disk, and stay there
after QEMU is gone. Reading is rate-limited: a guest flooding its serial
port is slowed down (the UART waits) instead of costing the host CPU.

While vmrtd is not running nobody reads, and QEMU drops the output; a
restarted vmrtd connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

CONSOLE_CAP = 1024 * 1024
RATE = 256 * 1024  # bytes per second kept on average...
BURST = 1024 * 1024  # ...after a first burst of this much
READ_SIZE = 64 * 1024


class ConsoleLog:
    def __init__(self, path: Path, cap: int = CONSOLE_CAP) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".1")
        self.cap = cap
        self._fd = -1
        self._size = 0

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        if self._fd < 0:
            self._open()
        if self._size + len(data) > self.cap and self._size > 0:
            os.close(self._fd)
            os.replace(self.path, self.previous)
            self._open()
        data = data[-self.cap:]
        os.write(self._fd, data)
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def tail(self, lines: int, max_bytes: int = 64 * 1024) -> str:
        chunks = []
        for path in (self.previous, self.path):
            try:
                with path.open("rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - max_bytes))
                    chunks.append(f.read())
            except FileNotFoundError:
                continue
        text = b"".join(chunks)[-max_bytes:].decode(errors="replace")
        return "\n".join(text.replace("\r", "").rstrip().splitlines()[-lines:])


def connect_early(path: Path) -> socket.socket:
    """A client of the console socket, connected while QEMU has not started:
    the kernel queues the connection on the listening socket we bound, and
    QEMU (``wait=on``) takes it before the guest runs."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    client.connect(str(path))
    client.setblocking(False)
    return client


async def pump(sock: socket.socket, console: ConsoleLog) -> None:
    """Copy the console into its log until QEMU closes it."""
    loop = asyncio.get_running_loop()
    allowance = float(BURST)
    last = time.monotonic()
    try:
        while True:
            data = await loop.sock_recv(sock, READ_SIZE)
            if not data:
                return
            console.write(data)
            now = time.monotonic()
            allowance = min(BURST, allowance + (now - last) * RATE) - len(data)
            last = now
            if allowance < 0:
                # Not reading makes the socket fill and the guest's UART wait.
                await asyncio.sleep(-allowance / RATE)
    except OSError as exc:
        log.debug("console %s: %s", console.path, exc)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        console.close()


async def reconnect(path: Path) -> socket.socket | None:
    """A new client for a running QEMU's console (after a vmrtd restart)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    client.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(client, str(path))
    except OSError as exc:
        log.warning("cannot reconnect to the console %s: %s", path, exc)
        client.close()
        return None
    return client
