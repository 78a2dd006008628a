"""The CRI gRPC server: both services on one unix socket, behind the error boundary."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2_grpc as api_grpc

from vmrt.cri.boundary import ErrorBoundary
from vmrt.cri.containers import ContainerRPCs
from vmrt.cri.images import ImageRPCs
from vmrt.cri.pods import PodRPCs
from vmrt.cri.runtime_info import RuntimeInfoRPCs
from vmrt.cri.stats import StatsRPCs
from vmrt.cri.tenancy import TenantScope
from vmrt.runtime.core import Runtime
from vmrt.streaming.server import StreamServer

MAX_MESSAGE = 16 * 1024 * 1024 + 4096


class RuntimeServicer(RuntimeInfoRPCs, PodRPCs, ContainerRPCs, StatsRPCs,
                      api_grpc.RuntimeServiceServicer):
    pass


class ImageServicer(ImageRPCs, api_grpc.ImageServiceServicer):
    pass


def _adoption_wait(runtime: Runtime) -> Callable[[Any], Awaitable[None]]:
    async def prepare(request: Any) -> None:
        await runtime.settled(getattr(request, "pod_sandbox_id", ""),
                              getattr(request, "container_id", ""))
    return prepare


async def serve(runtime: Runtime, socket_path: str, stream_server: StreamServer,
                router: grpc.aio.ServerInterceptor | None = None) -> grpc.aio.Server:
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = grpc.aio.server(
        # The boundary outermost: the tenant scope's errors are mapped there too.
        # The router innermost: a tenant sees only its own (VM) pods.
        interceptors=[ErrorBoundary(_adoption_wait(runtime), runtime.metrics.observe_call),
                      TenantScope(runtime), *([router] if router is not None else [])],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                 ("grpc.max_send_message_length", MAX_MESSAGE)],
    )
    api_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(runtime, stream_server),
                                                  server)
    api_grpc.add_ImageServiceServicer_to_server(ImageServicer(runtime, stream_server), server)
    server.add_insecure_port(f"unix://{path}")
    # Tighten the mode before anyone can connect: the socket is root's.
    old_umask = os.umask(0o117)
    try:
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    return server
