"""Closing streaming connections that carry nothing for too long.

As kubelet's and containerd's streaming servers do (``stream_idle_timeout``,
4 h by default): the clock restarts with every frame or message read or
sent, pings included, so client-go clients, which ping every 5 s, stay
connected; a client that vanished without a FIN does not hold its exec
process, port-forward and slot for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleTimer:
    """Calls ``on_idle`` once nothing has ``touch``ed it for ``timeout`` seconds.

    ``touch`` only stores the time, so it is cheap enough for every frame; the
    one scheduled callback re-arms itself for the latest deadline.
    """

    def __init__(self, timeout: float, on_idle: Callable[[], object]) -> None:
        self.timeout = timeout
        self.expired = False
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + timeout, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        deadline = self._last + self.timeout
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self.expired = True
        self._on_idle()
