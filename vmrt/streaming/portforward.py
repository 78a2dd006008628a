"""Port-forward connections, whatever carries them: bytes both ways through the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from vmrt.runtime.streams import PortConnection

log = logging.getLogger(__name__)

Read = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


async def pump(conn: PortConnection, read: Read, write: Write,
               close_write: Callable[[], Awaitable[None]]) -> None:
    """Copy between the client (``read``/``write``) and the pod until the pod side closes.

    The client's end of input (``read`` returning b"") half-closes the pod's
    connection; the pod's end closes the client side with ``close_write``.
    The agent call is cancelled if this is cancelled (the client went away).
    """

    async def upstream() -> None:
        while data := await read():
            await conn.send(data)
        await conn.close_write()

    sending = asyncio.create_task(upstream())
    try:
        async for data in conn.received():
            await write(data)
        await close_write()
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        conn.abort()
