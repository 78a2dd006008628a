"""The host's side of the agent protocol: a gRPC channel to one sandbox's agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable

import grpc

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agent.v1 import agent_pb2_grpc as pb_grpc
from vmrt.errors import VmrtError

log = logging.getLogger(__name__)

MAX_REPLY = 4 * 1024 * 1024


class AgentError(VmrtError):
    """The agent answered with an error; ``code`` is its gRPC status."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"agent {method}: {details}")


class AgentUnreachable(VmrtError):
    pass


def _target(transport: str, agent_socket: str, vsock_cid: int, vsock_port: int) -> str:
    if transport == "vsock":
        return f"vsock:{vsock_cid}:{vsock_port}"
    return f"unix:{agent_socket}"


class AgentClient:
    def __init__(self, target: str, connect_timeout: float = 20.0) -> None:
        self.target = target
        # gRPC's "min reconnect backoff" is really the connection timeout:
        # how long a connection may take to see the server's SETTINGS. While
        # a VM boots, the first connection waits in QEMU's socket for the
        # agent, so it must outlast the boot; a connection that gives up
        # early leaves half a handshake in the serial line.
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                # The guest is hostile: no reply of its may be larger than
                # the biggest we ask for (256 KiB of port-forward data).
                ("grpc.max_receive_message_length", MAX_REPLY),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_metadata_size", 16 * 1024),
                ("grpc.min_reconnect_backoff_ms", int(connect_timeout * 1000)),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self.stub = pb_grpc.AgentStub(self._channel)

    @classmethod
    def for_vm(cls, transport: str, agent_socket: str, vsock_cid: int = 0,
               vsock_port: int = 1024, connect_timeout: float = 20.0) -> AgentClient:
        return cls(_target(transport, agent_socket, vsock_cid, vsock_port), connect_timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, method: str, request: object, timeout: float | None = 60.0,
                   wait_for_ready: bool = False) -> object:
        try:
            return await getattr(self.stub, method)(request, timeout=timeout,
                                                    wait_for_ready=wait_for_ready)
        except grpc.aio.AioRpcError as exc:
            raise AgentError(method, exc.code(), exc.details() or str(exc.code())) from None

    async def wait_ready(self, timeout: float, vm_exited: Awaitable[object]) -> pb.HealthResponse:
        """Health with wait-for-ready, abandoned as soon as the VM exits."""
        health = asyncio.ensure_future(
            self.call("Health", pb.HealthRequest(), timeout=timeout, wait_for_ready=True))
        died = asyncio.ensure_future(vm_exited)
        try:
            done, _ = await asyncio.wait({health, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (health, died):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        if health in done:
            reply = health.result()
            assert isinstance(reply, pb.HealthResponse)
            return reply
        raise AgentUnreachable("the VM exited before its agent answered")

    async def follow_output(self, container_id: str, exec_id: str, stream: pb.Stream,
                            offset: int = 0, trim_sent: bool = False
                            ) -> AsyncIterator[pb.OutputChunk]:
        request = pb.ReadOutputRequest(container_id=container_id, exec_id=exec_id,
                                       stream=stream, offset=offset, follow=True,
                                       trim_sent=trim_sent)
        call = self.stub.ReadOutput(request)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise AgentError("ReadOutput", exc.code(), exc.details() or "") from None
