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

    async def downstream() -> None:
        async for data in conn.received():
            await write(data)
        await close_write()

    sending = asyncio.create_task(upstream())
    receiving = asyncio.create_task(downstream())
    try:
        # Done when the pod's side is, or as soon as the client's side fails
        # (a client that finished sending is no reason to stop).
        while not receiving.done():
            await asyncio.wait({receiving} if sending.done() else {sending, receiving},
                               return_when=asyncio.FIRST_COMPLETED)
            if sending.done() and not sending.cancelled() and \
                    (problem := sending.exception()) is not None:
                raise problem
        receiving.result()
    finally:
        for task in (sending, receiving):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        conn.abort()
