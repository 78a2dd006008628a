"""Port forwarding inside the guest: one TCP connection per call.

The pod's containers share the guest's network, so "localhost:PORT in the
pod" is simply the guest's loopback. Bytes from the host go out on a thread
of their own; bytes from the connection are yielded back as the call's
replies. Either side closing is passed on as a half-close, so protocols
that read to EOF (HTTP/1.0, netcat) behave as they would locally.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator

from vmrt.agent.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 5.0


def connect(port: int) -> socket.socket:
    """localhost:PORT, IPv4 first and then IPv6, as kubelet's forwarders try them."""
    if not 0 < port < 65536:
        raise InvalidArgument(f"invalid port {port}")
    errors = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            errors.append(f"{host}: {exc.strerror or exc}")
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise Unavailable(f"cannot connect to port {port} in the pod ({'; '.join(errors)})")


class _Shared:
    """The socket both directions use; whichever finishes last closes it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._users = 2
        self._lock = threading.Lock()

    def shutdown(self, how: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(how)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.sock.close()


def _upstream(incoming: Iterator[bytes], shared: _Shared) -> None:
    """Host → connection; the host's end of input is our half-close."""
    how = socket.SHUT_WR
    try:
        for data in incoming:
            if data:
                shared.sock.sendall(data)
    except Exception as exc:
        log.debug("port-forward upstream ended: %s", exc)
        how = socket.SHUT_RDWR
    finally:
        shared.shutdown(how)
        shared.release()


def forward(port: int, first_data: bytes, incoming: Iterator[bytes],
            on_cancel: Callable[[Callable[[], None]], object]) -> Iterator[bytes]:
    """Connect, yield b"" once connected, then what the connection sends until it closes.

    ``incoming`` is fed to the connection meanwhile.
    """
    shared = _Shared(connect(port))
    # The host going away ends the blocking recv below.
    on_cancel(lambda: shared.shutdown(socket.SHUT_RDWR))
    try:
        if first_data:
            shared.sock.sendall(first_data)
    except OSError as exc:
        shared.sock.close()
        raise Unavailable(f"port {port} in the pod: {exc.strerror or exc}") from None
    threading.Thread(target=_upstream, args=(incoming, shared), daemon=True,
                     name=f"pf-{port}").start()
    try:
        yield b""
        while True:
            try:
                data = shared.sock.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            yield data
    finally:
        # Whatever the host still sends has nowhere to go.
        shared.shutdown(socket.SHUT_RDWR)
        shared.release()
