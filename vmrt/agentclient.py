"""The host's side of the agent protocol: a gRPC channel to one sandbox's agent.

``AgentClient`` implements ``vmrt.agentapi.Agent``: each method is one RPC,
and every failure of the call is an ``AgentError`` with the status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agent.v1 import agent_pb2_grpc as pb_grpc
from vmrt.agentapi import DEFAULT_TIMEOUT, AgentError, AgentUnreachable
from vmrt.serialrelay import SerialRelay

log = logging.getLogger(__name__)

MAX_REPLY = 4 * 1024 * 1024
KEEPALIVE_S = 10.0
# A PING unanswered this long ends the connection. Generous: a guest on a
# host loaded with TCG guests can take many seconds to be scheduled (5 s cut
# off 14 of 30 busy pods in bench/load.py), and the connection's end only
# starts the watchdog's probes, it declares nothing.
KEEPALIVE_TIMEOUT_S = 20.0
RELAY_SOCKET = "relay.sock"
R = TypeVar("R")


def _target(transport: str, agent_socket: str, vsock_cid: int, vsock_port: int) -> str:
    if transport == "vsock":
        return f"vsock:{vsock_cid}:{vsock_port}"
    return f"unix:{agent_socket}"


def _failed(method: str, exc: grpc.aio.AioRpcError) -> AgentError:
    return AgentError(method, exc.code(), exc.details() or str(exc.code()))


class GrpcPortStream:
    """A PortForward call: the first message names the port, then data both ways."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call

    async def send(self, data: bytes) -> None:
        try:
            await self._call.write(pb.PortForwardData(data=data))
        except grpc.aio.AioRpcError as exc:
            raise _failed("PortForward", exc) from None
        except asyncio.InvalidStateError:
            raise AgentError("PortForward", grpc.StatusCode.CANCELLED,
                             "the connection to the pod's agent ended") from None

    async def close_write(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()

    async def received(self) -> AsyncIterator[bytes]:
        # read(), not iteration: the first reply was taken with read().
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                assert isinstance(message, pb.PortForwardData)
                yield message.data
        except grpc.aio.AioRpcError as exc:
            raise _failed("PortForward", exc) from None
        except asyncio.InvalidStateError:
            raise AgentError("PortForward", grpc.StatusCode.CANCELLED,
                             "the connection to the pod's agent ended") from None

    def cancel(self) -> None:
        self._call.cancel()


class AgentClient:
    def __init__(self, target: str, connect_timeout: float = 20.0,
                 keepalive_s: float = KEEPALIVE_S,
                 ping_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> None:
        self.target = target
        keepalive = [
            # Liveness: an HTTP/2 PING after keepalive_s without traffic; no
            # answer within ping_timeout_s ends the connection, which the
            # sandbox's watchdog then notices.
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(ping_timeout_s * 1000)),
            # Newer gRPC cores time a PING out by this one (60 s by default).
            ("grpc.http2.ping_timeout_ms", int(ping_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ] if keepalive_s > 0 else []
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
                *keepalive,
            ],
        )
        self.stub = pb_grpc.AgentStub(self._channel)
        self._relay: SerialRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None

    @classmethod
    def for_vm(cls, transport: str, agent_socket: str, vsock_cid: int = 0,
               vsock_port: int = 1024, connect_timeout: float = 20.0,
               keepalive_s: float = KEEPALIVE_S, adopted: bool = False,
               ping_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> AgentClient:
        """A client of one VM's agent. On the serial transport, gRPC talks to
        a relay of ours (``relay.sock`` beside QEMU's ``agent_socket``) that
        frames each connection as a session; called in a running event loop.
        ``adopted``: the VM was started by an earlier vmrtd, whose last
        frame on the line may be cut short."""
        if transport != "serial":
            return cls(_target(transport, agent_socket, vsock_cid, vsock_port), connect_timeout,
                       keepalive_s, ping_timeout_s)
        relay = SerialRelay(Path(agent_socket), Path(agent_socket).with_name(RELAY_SOCKET),
                            resync=adopted)
        relay.bind()
        client = cls(f"unix:{relay.listen_path}", connect_timeout, keepalive_s, ping_timeout_s)
        client._relay = relay
        client._relay_task = asyncio.get_running_loop().create_task(
            relay.start(), name=f"relay {agent_socket}")
        return client

    async def close(self) -> None:
        await self._channel.close()
        if self._relay is not None:
            if self._relay_task is not None:
                with contextlib.suppress(Exception):
                    await self._relay_task
            await self._relay.close()
            self._relay = None

    def connected(self) -> bool:
        """The connection is up (the keepalive pings take it down when the guest hangs)."""
        return self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY

    async def probe(self, timeout: float) -> pb.HealthResponse:
        """One Health call, waiting for a connection for up to ``timeout``."""
        return await self._unary("Health", pb.HealthRequest(), pb.HealthResponse, timeout=timeout,
                          wait_for_ready=True)

    async def _unary(self, method: str, request: object, reply_type: type[R],
                     timeout: float | None = DEFAULT_TIMEOUT,
                     wait_for_ready: bool = False) -> R:
        rpc: Any = getattr(self.stub, method)
        try:
            reply = await rpc(request, timeout=timeout, wait_for_ready=wait_for_ready)
        except grpc.aio.AioRpcError as exc:
            raise _failed(method, exc) from None
        if not isinstance(reply, reply_type):
            raise AgentError(method, grpc.StatusCode.INTERNAL, "a reply of the wrong type")
        return reply

    # -- the sandbox ------------------------------------------------------

    async def _health_until(self, timeout: float) -> pb.HealthResponse:
        """Health until it answers or ``timeout`` passes. A connection that
        breaks meanwhile (a keepalive PING unanswered by a guest still
        booting on a loaded host) is not the end: the next one is tried."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self._unary("Health", pb.HealthRequest(), pb.HealthResponse,
                                         timeout=max(remaining, 0.001), wait_for_ready=True)
            except AgentError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE or remaining < 1.0:
                    raise
                log.debug("agent Health: %s; trying again", exc)
                await asyncio.sleep(0.2)

    async def wait_ready(self, timeout: float, vm_exited: Awaitable[object]) -> pb.HealthResponse:
        """Health with wait-for-ready, abandoned as soon as the VM exits."""
        return await _unless_exited(self._health_until(timeout), vm_exited)

    async def wait_connected(self, timeout: float, vm_exited: Awaitable[object]) -> None:
        """Until the connection is up (the guest's gRPC server sent its
        SETTINGS), abandoned when the VM exits; for a guest whose agent is
        known to be running (a template's clone), in place of a Health call."""
        try:
            await _unless_exited(asyncio.wait_for(self._channel.channel_ready(), timeout),
                                 vm_exited)
        except TimeoutError:
            raise AgentError("connect", grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"no connection to the agent within {timeout:g} s") from None

    async def setup_sandbox(self, request: pb.SetupSandboxRequest) -> pb.SetupSandboxResponse:
        return await self._unary("SetupSandbox", request, pb.SetupSandboxResponse)

    async def set_clock(self, host_time_ns: int) -> None:
        await self._unary("SetClock", pb.SetClockRequest(host_time_ns=host_time_ns),
                          pb.SetClockResponse)

    async def configure_network(self, request: pb.ConfigureNetworkRequest) -> None:
        await self._unary("ConfigureNetwork", request, pb.ConfigureNetworkResponse)

    # -- containers and processes -----------------------------------------

    async def create_container(self, container_id: str, oci_spec: bytes, rootfs: pb.Rootfs,
                               stdio: pb.StdioOptions) -> None:
        await self._unary("CreateContainer", pb.CreateContainerRequest(
            container_id=container_id, oci_spec=oci_spec, rootfs=rootfs, stdio=stdio),
            pb.CreateContainerResponse)

    async def start_container(self, container_id: str) -> None:
        await self._unary("StartContainer", pb.StartContainerRequest(container_id=container_id),
                          pb.StartContainerResponse)

    async def exec_process(self, container_id: str, exec_id: str, process: bytes,
                           stdio: pb.StdioOptions) -> None:
        await self._unary("ExecProcess", pb.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, process=process, stdio=stdio),
            pb.ExecProcessResponse)

    async def signal_process(self, container_id: str, signal: int, *, exec_id: str = "",
                             all_processes: bool = False,
                             timeout: float | None = DEFAULT_TIMEOUT) -> None:
        await self._unary("SignalProcess", pb.SignalProcessRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all_processes),
            pb.SignalProcessResponse, timeout=timeout)

    async def wait_process(self, container_id: str, exec_id: str = "",
                           timeout: float | None = None) -> pb.ExitStatus:
        reply = await self._unary("WaitProcess", pb.WaitProcessRequest(
            container_id=container_id, exec_id=exec_id), pb.WaitProcessResponse, timeout=timeout)
        return reply.status

    async def remove_container(self, container_id: str, force: bool = False) -> None:
        await self._unary("RemoveContainer", pb.RemoveContainerRequest(
            container_id=container_id, force=force), pb.RemoveContainerResponse)

    async def remove_exec(self, container_id: str, exec_id: str) -> None:
        await self._unary("RemoveExec", pb.RemoveExecRequest(
            container_id=container_id, exec_id=exec_id), pb.RemoveExecResponse)

    async def update_container(self, container_id: str, resources: bytes) -> None:
        await self._unary("UpdateContainer", pb.UpdateContainerRequest(
            container_id=container_id, resources=resources), pb.UpdateContainerResponse)

    async def list_processes(self) -> Sequence[pb.ProcessInfo]:
        reply = await self._unary("ListProcesses", pb.ListProcessesRequest(),
                                  pb.ListProcessesResponse)
        return list(reply.processes)

    async def container_stats(self, container_id: str) -> pb.ContainerStatsResponse:
        return await self._unary("ContainerStats",
                                 pb.ContainerStatsRequest(container_id=container_id),
                                 pb.ContainerStatsResponse)

    async def set_online_cpus(self, count: int) -> int:
        reply = await self._unary("SetOnlineCpus", pb.SetOnlineCpusRequest(count=count),
                                  pb.SetOnlineCpusResponse)
        return int(reply.online)

    # -- stdio ------------------------------------------------------------

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
            raise _failed("ReadOutput", exc) from None

    async def trim_output(self, container_id: str, stream: pb.Stream, offset: int,
                          exec_id: str = "") -> None:
        await self._unary("TrimOutput", pb.TrimOutputRequest(
            container_id=container_id, exec_id=exec_id, stream=stream, offset=offset),
            pb.TrimOutputResponse, timeout=30)

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes,
                          close: bool = False) -> None:
        await self._unary("WriteStdin", pb.WriteStdinRequest(
            container_id=container_id, exec_id=exec_id, data=data, close=close),
            pb.WriteStdinResponse)

    async def resize_tty(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        await self._unary("ResizeTty", pb.ResizeTtyRequest(
            container_id=container_id, exec_id=exec_id, rows=rows, cols=cols),
            pb.ResizeTtyResponse)

    # -- streams ----------------------------------------------------------

    async def connect_port(self, port: int) -> GrpcPortStream:
        """Connect to localhost:PORT in the guest; the agent's refusal says why."""
        call = self.stub.PortForward()
        try:
            await call.write(pb.PortForwardData(port=port))
            # The agent's first reply, empty, means connected; a refused
            # connection ends the call instead, with the reason.
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise _failed("PortForward", exc) from None
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF:
            call.cancel()
            raise AgentError("PortForward", grpc.StatusCode.UNAVAILABLE,
                             f"the pod's agent gave up on port {port}")
        return GrpcPortStream(call)

    async def events(self) -> AsyncIterator[pb.Event]:
        call = self.stub.GetEvents(pb.GetEventsRequest())
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise _failed("GetEvents", exc) from None


async def _unless_exited(call: Awaitable[R], vm_exited: Awaitable[object]) -> R:
    """``call``'s result, or AgentUnreachable as soon as the VM exits first."""
    answer = asyncio.ensure_future(call)
    died = asyncio.ensure_future(vm_exited)
    try:
        done, _ = await asyncio.wait({answer, died}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (answer, died):
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
    if answer in done:
        return answer.result()
    raise AgentUnreachable("the VM exited before its agent answered")
