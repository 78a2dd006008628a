"""asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def finish(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run a clean-up step to its end even if the task is cancelled meanwhile.

    Rollbacks run while a call is being cancelled (a CRI deadline, a client
    that went away), and gRPC may cancel the handler more than once; a second
    cancellation must not stop half-way a step that removes a VM, a mount or
    a namespace. The step's own errors still propagate.
    """
    task = asyncio.ensure_future(fn(*args))
    await settle(task)
    task.result()


async def settle(task: asyncio.Future[Any]) -> None:
    """Until ``task`` is done, however often the caller is cancelled meanwhile
    (its result or error stay in it, for the caller to take)."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


def push_cleanup(stack: contextlib.AsyncExitStack, fn: Callable[..., Awaitable[Any]],
                 *args: Any) -> None:
    stack.push_async_callback(finish, fn, *args)
