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
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


def push_cleanup(stack: contextlib.AsyncExitStack, fn: Callable[..., Awaitable[Any]],
                 *args: Any) -> None:
    stack.push_async_callback(finish, fn, *args)
