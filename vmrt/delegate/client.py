"""One delegate: a CRI runtime on a unix socket, called with vmrt's own requests.

Its errors keep their status code and gain its name; a delegate that cannot
be reached is UNAVAILABLE, naming it and its socket, so kubelet retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cri_api.v1 import api_pb2_grpc as api_grpc

from vmrt.config import DelegateConfig
from vmrt.errors import StatusError, UnavailableError, VmrtError

MAX_MESSAGE = 16 * 1024 * 1024 + 4096
# A delegate that went away is retried within a second of its return (gRPC's
# own backoff grows to two minutes), and a call waits that long for it to
# connect before it says UNAVAILABLE.
RECONNECT_MS = (100, 1000)
CONNECT_WAIT = 1.0
IMAGE_METHODS = frozenset({"ListImages", "ImageStatus", "PullImage", "RemoveImage",
                           "ImageFsInfo"})


class DelegateError(StatusError):
    """The delegate answered with an error; ``code`` is its status."""

    def __init__(self, name: str, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, f"{details} (from delegate {name!r}, {method})")


class Delegate:
    def __init__(self, name: str, config: DelegateConfig) -> None:
        self.name = name
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._runtime: Any = None
        self._images: Any = None

    def _stubs(self) -> tuple[Any, Any]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.config.cri_endpoint,
                options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                         ("grpc.max_send_message_length", MAX_MESSAGE),
                         ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS[0]),
                         ("grpc.min_reconnect_backoff_ms", RECONNECT_MS[0]),
                         ("grpc.max_reconnect_backoff_ms", RECONNECT_MS[1])])
            self._runtime = api_grpc.RuntimeServiceStub(self._channel)
            self._images = api_grpc.ImageServiceStub(self._channel)
        return self._runtime, self._images

    def _error(self, method: str, exc: grpc.aio.AioRpcError) -> VmrtError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return UnavailableError(f"delegate {self.name!r} at {self.config.cri_endpoint} is "
                                    f"unavailable: {exc.details()}")
        return DelegateError(self.name, method, exc.code(), exc.details() or "")

    async def _connected(self) -> None:
        assert self._channel is not None
        if self._channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._channel.channel_ready(), CONNECT_WAIT)

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        runtime, images = self._stubs()
        stub = images if method in IMAGE_METHODS else runtime
        await self._connected()
        try:
            return await getattr(stub, method)(request, timeout=timeout or self.config.timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(method, exc) from None

    async def stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        runtime, _ = self._stubs()
        await self._connected()
        call = getattr(runtime, method)(request)
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as exc:
            raise self._error(method, exc) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
