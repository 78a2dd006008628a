"""Single-use tokens for streaming URLs.

CRI ``Exec``, ``Attach`` and ``PortForward`` only validate and remember the
request; the client then opens the returned URL. As in kubelet's streaming
server, a token is good for one connection within a minute, and the cache
is bounded so that a caller who never connects cannot grow it forever.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vmrt.errors import ResourceExhaustedError

TOKEN_TTL = 60.0
MAX_PENDING = 1000


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardRequest:
    pod_id: str
    ports: tuple[int, ...]


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class TokenCache:
    def __init__(self, ttl: float = TOKEN_TTL, capacity: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._pending: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            token, (deadline, _) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[token]

    def put(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._pending) >= self._capacity:
            raise ResourceExhaustedError(
                f"too many streaming requests are waiting for their client "
                f"({self._capacity}); try again shortly")
        token = secrets.token_urlsafe(24)
        self._pending[token] = (self._clock() + self._ttl, request)
        return token

    def take(self, token: str) -> StreamRequest | None:
        """The request for ``token``, once: a second use, or a late one, gets None."""
        self._expire()
        entry = self._pending.pop(token, None)
        return entry[1] if entry is not None else None
