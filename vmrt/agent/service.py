"""The agent's gRPC service: request decoding, one error boundary, replies."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from vmrt.agent import AGENT_VERSION, guestinfo
from vmrt.agent.containers import ContainerManager
from vmrt.agent.errors import AgentError, InvalidArgument
from vmrt.agent.events import EventBus
from vmrt.agent.guest import Guest, set_online_cpus
from vmrt.agent.model import ExitEvent, Process
from vmrt.agent.portforward import forward
from vmrt.agent.stdio import IDLE_RECHECK
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _status_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, AgentError):
        return getattr(grpc.StatusCode, exc.code)
    # Internal timeouts (a helper command, crun) are failures of ours, not the
    # caller's deadline running out: INTERNAL, so clients do not treat them
    # as their own.
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, name: str, exc: BaseException) -> None:
    code = _status_code(exc)
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, AgentError):
        log.exception("%s failed", name)
        message = f"{type(exc).__name__}: {exc}"
    else:
        log.info("%s: %s", name, exc)
        message = str(exc)
    context.abort(code, message)


def rpc(method: F) -> F:
    """The error boundary every RPC goes through: log, map the error, reply."""
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                _abort(context, name, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        log.debug("%s", name)
        try:
            return method(self, request, context)
        except Exception as exc:
            _abort(context, name, exc)

    return unary_wrapper  # type: ignore[return-value]


def _exit_status(proc: Process) -> pb.ExitStatus:
    status = pb.ExitStatus(started_at_ns=proc.started_at_ns, oom_killed=proc.oom_killed)
    if proc.exit is not None:
        status.exit_code = proc.exit.exit_code
        status.signal = proc.exit.signal
        status.finished_at_ns = proc.exit.finished_at_ns
    return status


_STATE = {
    "created": pb.ProcessInfo.CREATED,
    "running": pb.ProcessInfo.RUNNING,
    "exited": pb.ProcessInfo.EXITED,
}


class AgentService(pb_grpc.AgentServicer):
    def __init__(
        self,
        containers: ContainerManager,
        guest: Guest,
        events: EventBus,
        transport: str,
        ready_at: Callable[[], float],
    ) -> None:
        self._containers = containers
        self._guest = guest
        self._events = events
        self._transport = transport
        self._ready_at = ready_at
        self._kernel_release = os.uname().release

    @rpc
    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> Any:
        return pb.HealthResponse(
            agent_version=AGENT_VERSION,
            kernel_release=self._kernel_release,
            ready_at_uptime=self._ready_at(),
            transport=self._transport,
        )

    @rpc
    def SetupSandbox(self, request: pb.SetupSandboxRequest, context: grpc.ServicerContext) -> Any:
        self._guest.set_clock(request.host_time_ns)
        if request.entropy:
            self._guest.reseed(request.entropy)
        self._guest.set_machine_id(request.sandbox_id)
        if request.nic_mac_was and request.nic_mac:
            self._guest.set_mac(request.nic_mac_was, request.nic_mac)
        self._guest.bring_up_loopback()
        self._guest.set_hostname(request.hostname)
        # Always written: containers bind-mount the pod's resolv.conf.
        self._guest.set_dns(request.dns.servers, request.dns.searches, request.dns.options)
        sysctls = [(s.key, s.value) for s in request.sysctls]
        self._guest.set_sysctls(sysctls)
        self._containers.set_pod_ipc_sysctls(sysctls)
        if request.share_tag:
            self._guest.mount_share(request.share_tag)
        if not request.HasField("network"):
            return pb.SetupSandboxResponse()
        self._configure_network(request.network)
        return pb.SetupSandboxResponse(network_configured=True)

    @rpc
    def ConfigureNetwork(self, request: pb.ConfigureNetworkRequest,
                         context: grpc.ServicerContext) -> Any:
        self._configure_network(request)
        return pb.ConfigureNetworkResponse()

    def _configure_network(self, request: pb.ConfigureNetworkRequest) -> None:
        self._guest.configure_network(
            [(i.mac, i.name, i.mtu, list(i.addresses)) for i in request.interfaces],
            [(r.destination, r.gateway, r.interface) for r in request.routes])
        if request.pod_ips:
            self._guest.add_hosts_entries(request.pod_ips)

    @rpc
    def SetClock(self, request: pb.SetClockRequest, context: grpc.ServicerContext) -> Any:
        self._guest.set_clock(request.host_time_ns)
        return pb.SetClockResponse()

    @rpc
    def CreateContainer(
        self, request: pb.CreateContainerRequest, context: grpc.ServicerContext
    ) -> Any:
        pid = self._containers.create(
            request.container_id,
            request.oci_spec,
            request.rootfs.share_path,
            request.rootfs.guest_overlay,
            request.stdio.terminal,
            request.stdio.open_stdin,
            request.stdio.acked_output,
        )
        return pb.CreateContainerResponse(pid=pid)

    @rpc
    def StartContainer(
        self, request: pb.StartContainerRequest, context: grpc.ServicerContext
    ) -> Any:
        self._containers.start(request.container_id)
        return pb.StartContainerResponse()

    @rpc
    def ExecProcess(self, request: pb.ExecProcessRequest, context: grpc.ServicerContext) -> Any:
        pid = self._containers.exec(
            request.container_id,
            request.exec_id,
            request.process,
            request.stdio.terminal,
            request.stdio.open_stdin,
            request.stdio.acked_output,
        )
        return pb.ExecProcessResponse(pid=pid)

    @rpc
    def SignalProcess(
        self, request: pb.SignalProcessRequest, context: grpc.ServicerContext
    ) -> Any:
        if not 0 < request.signal < 65:
            raise InvalidArgument(f"invalid signal number {request.signal}")
        self._containers.signal(request.container_id, request.exec_id, request.signal,
                                request.all)
        return pb.SignalProcessResponse()

    @rpc
    def WaitProcess(self, request: pb.WaitProcessRequest, context: grpc.ServicerContext) -> Any:
        # Wake up now and then to notice a caller that went away.
        while True:
            proc = self._containers.wait(request.container_id, request.exec_id, timeout=1.0)
            if proc.exit is not None or not context.is_active():
                return pb.WaitProcessResponse(status=_exit_status(proc))

    @rpc
    def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext
    ) -> Any:
        self._containers.remove(request.container_id, request.force)
        return pb.RemoveContainerResponse()

    @rpc
    def RemoveExec(self, request: pb.RemoveExecRequest, context: grpc.ServicerContext) -> Any:
        self._containers.remove_exec(request.container_id, request.exec_id)
        return pb.RemoveExecResponse()

    @rpc
    def UpdateContainer(
        self, request: pb.UpdateContainerRequest, context: grpc.ServicerContext
    ) -> Any:
        self._containers.update(request.container_id, request.resources)
        return pb.UpdateContainerResponse()

    @rpc
    def ListProcesses(
        self, request: pb.ListProcessesRequest, context: grpc.ServicerContext
    ) -> Any:
        reply = pb.ListProcessesResponse()
        for ctr in self._containers.containers():
            for proc in (ctr.init, *ctr.execs.values()):
                reply.processes.append(pb.ProcessInfo(
                    container_id=ctr.id,
                    exec_id=proc.exec_id,
                    pid=proc.pid,
                    state=_STATE[proc.state],
                    exit=_exit_status(proc),
                    stdout_size=proc.io.stdout.size,
                    stderr_size=proc.io.stderr.size,
                ))
        return reply

    @rpc
    def ReadOutput(
        self, request: pb.ReadOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        if request.offset < 0:
            raise InvalidArgument(f"negative offset {request.offset}")
        chunks = self._containers.read_output(
            request.container_id, request.exec_id, request.stream, request.offset,
            request.follow, context.is_active, request.trim_sent, context.add_callback,
        )
        for offset, data in chunks:
            yield pb.OutputChunk(offset=offset, data=data)

    @rpc
    def TrimOutput(self, request: pb.TrimOutputRequest, context: grpc.ServicerContext) -> Any:
        if request.offset < 0:
            raise InvalidArgument(f"negative offset {request.offset}")
        self._containers.trim_output(request.container_id, request.exec_id, request.stream,
                                     request.offset)
        return pb.TrimOutputResponse()

    @rpc
    def WriteStdin(self, request: pb.WriteStdinRequest, context: grpc.ServicerContext) -> Any:
        self._containers.write_stdin(request.container_id, request.exec_id, request.data,
                                     request.close)
        return pb.WriteStdinResponse()

    @rpc
    def ResizeTty(self, request: pb.ResizeTtyRequest, context: grpc.ServicerContext) -> Any:
        self._containers.resize(request.container_id, request.exec_id, request.rows,
                                request.cols)
        return pb.ResizeTtyResponse()

    @rpc
    def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: grpc.ServicerContext
    ) -> Any:
        reply = self._containers.stats(request.container_id)
        reply.timestamp_ns = time.time_ns()
        if not request.container_id:  # the whole pod: the guest's own view too
            reply.interfaces.extend(
                pb.InterfaceStats(**dataclasses.asdict(i)) for i in guestinfo.interfaces())
            reply.guest_memory_total_bytes, reply.guest_memory_available_bytes = \
                guestinfo.meminfo()
        return reply

    @rpc
    def SetOnlineCpus(self, request: pb.SetOnlineCpusRequest,
                      context: grpc.ServicerContext) -> Any:
        return pb.SetOnlineCpusResponse(online=set_online_cpus(request.count))

    @rpc
    def PortForward(self, request_iterator: Iterator[pb.PortForwardData],
                    context: grpc.ServicerContext) -> Iterator[Any]:
        first = next(request_iterator, None)
        if first is None:
            return
        incoming = (message.data for message in request_iterator)
        # The first chunk, empty, tells the host the connection is made.
        for data in forward(first.port, first.data, incoming, context.add_callback):
            yield pb.PortForwardData(data=data)

    @rpc
    def GetEvents(self, request: pb.GetEventsRequest, context: grpc.ServicerContext) -> Any:
        subscription = self._events.subscribe()
        # Woken by an event or by the caller's end (None), not each second.
        context.add_callback(lambda: subscription.put(None))
        try:
            while context.is_active():
                try:
                    event: ExitEvent | None = subscription.get(timeout=IDLE_RECHECK)
                except queue.Empty:
                    continue
                if event is None:
                    break
                status = pb.ExitStatus(
                    exit_code=event.exit.exit_code,
                    signal=event.exit.signal,
                    oom_killed=event.oom_killed,
                    started_at_ns=event.started_at_ns,
                    finished_at_ns=event.exit.finished_at_ns,
                )
                if event.oom_killed:
                    yield pb.Event(container_id=event.container_id, exec_id=event.exec_id,
                                   kind=pb.Event.OOM, exit=status)
                yield pb.Event(container_id=event.container_id, exec_id=event.exec_id,
                               kind=pb.Event.EXIT, exit=status)
        finally:
            self._events.unsubscribe(subscription)
