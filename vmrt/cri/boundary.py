"""The one place CRI calls are logged and errors become gRPC status codes.

Handlers just raise. This interceptor wraps every handler of every service:
it applies the caller's deadline, logs the call and its outcome, and maps
vmrt's exceptions to status codes with the exception's message, which
names the field or object at fault.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vmrt.agentapi import AgentError
from vmrt.config import ConfigError
from vmrt.cri.intercept import rewrap
from vmrt.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StatusError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    VmrtError,
)

log = logging.getLogger("vmrt.cri")

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnimplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, AgentError | StatusError):
        return exc.code, str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # A full disk is the node's state, not a bug: kubelet backs off and retries.
        where = f": {exc.filename}" if exc.filename else ""
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{os.strerror(exc.errno)}{where}"
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc) or type(exc).__name__
    if isinstance(exc, VmrtError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e9 else None


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: BaseException,
                started: float) -> None:
    code, message = status_of(exc)
    elapsed = time.monotonic() - started
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, VmrtError):
        log.exception("%s failed after %.3fs", method, elapsed)
    elif isinstance(exc, OSError):  # a full disk: the node's trouble, worth a warning
        log.warning("%s -> %s after %.3fs: %s", method, code.name, elapsed, message)
    else:
        log.info("%s -> %s after %.3fs: %s", method, code.name, elapsed, message)
    await context.abort(code, message)


Prepare = Callable[[Any], Awaitable[None]]


async def _nothing(request: Any) -> None:
    return None


Observe = Callable[[str, str, float], None]


def _ignore(method: str, code: str, seconds: float) -> None:
    return None


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]],
                prepare: Prepare, observe: Observe) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        try:
            async with asyncio.timeout(_deadline(context)):
                await prepare(request)
                reply = await behavior(request, context)
        except asyncio.CancelledError:
            # gRPC cancels the handler when the caller goes away or its
            # deadline passes; handlers have unwound their work by now.
            log.info("%s cancelled by the caller after %.3fs", method,
                     time.monotonic() - started)
            observe(method, "CANCELLED", time.monotonic() - started)
            raise
        except Exception as exc:
            observe(method, status_of(exc)[0].name, time.monotonic() - started)
            await _fail(context, method, exc, started)
        log.debug("%s ok in %.3fs", method, time.monotonic() - started)
        observe(method, "OK", time.monotonic() - started)
        return reply

    return unary


def _wrap_stream(method: str,
                 behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.monotonic()
        try:
            async for reply in behavior(request, context):
                yield reply
        except Exception as exc:
            await _fail(context, method, exc, started)

    return stream


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """``prepare`` is awaited before each unary handler, under the caller's
    deadline and inside the error mapping (vmrtd waits there for a pod that
    recovery is still adopting). ``observe`` counts each unary call's outcome."""

    def __init__(self, prepare: Prepare = _nothing, observe: Observe = _ignore) -> None:
        self.prepare = prepare
        self.observe = observe  # (method, status code name, seconds) of each unary call

    async def intercept_service(self, continuation: Any,
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return rewrap(handler,
                      lambda behavior: _wrap_unary(method, behavior, self.prepare, self.observe),
                      lambda behavior: _wrap_stream(method, behavior))
