"""Container lifecycle RPCs, ExecSync, and the streaming RPCs (Exec, Attach, PortForward)."""

from __future__ import annotations

import contextlib
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.cri import convert, validate
from vmrt.cri.base import Base
from vmrt.errors import InvalidArgumentError, NotFoundError, UnimplementedError, about
from vmrt.runtime.containers import ContainerFilter
from vmrt.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest


def _check_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    if tty and stderr:
        raise InvalidArgumentError("stderr: cannot be true with tty: a terminal has "
                                   "one output stream")
    if not (stdin or stdout or stderr):
        raise InvalidArgumentError("stdout: one of stdin, stdout or stderr is required")


class ContainerRPCs(Base):
    async def CreateContainer(self, request: api.CreateContainerRequest,
                              context: Any) -> api.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgumentError("pod_sandbox_id: is required")
        if not request.HasField("config"):
            raise InvalidArgumentError("config: is required")
        pod = self.rt.pod(request.pod_sandbox_id)
        validate.container_config(request.config, pod.config().log_directory)
        # The pod's own config, as RunPodSandbox checked and stored it: the
        # copy in the request is the caller's word for it, nothing more.
        with about("config"):
            container_id = await self.containers.create(pod.id, request.config)
        return api.CreateContainerResponse(container_id=container_id)

    async def StartContainer(self, request: api.StartContainerRequest,
                             context: Any) -> api.StartContainerResponse:
        await self.containers.start(request.container_id)
        return api.StartContainerResponse()

    async def StopContainer(self, request: api.StopContainerRequest,
                            context: Any) -> api.StopContainerResponse:
        validate.timeout(request.timeout, "timeout")
        # CRI: stopping what is not there succeeds.
        with contextlib.suppress(NotFoundError):
            await self.containers.stop(request.container_id, request.timeout)
        return api.StopContainerResponse()

    async def RemoveContainer(self, request: api.RemoveContainerRequest,
                              context: Any) -> api.RemoveContainerResponse:
        await self.containers.remove(request.container_id)
        return api.RemoveContainerResponse()

    async def ListContainers(self, request: api.ListContainersRequest,
                             context: Any) -> api.ListContainersResponse:
        flt = request.filter
        state = None
        if flt.HasField("state"):
            validate.enum(flt.state.state, convert.CONTAINER_STATE_NAMES, "filter.state.state")
            state = convert.CONTAINER_STATE_NAMES[flt.state.state]
            if state is None:
                return api.ListContainersResponse()  # no container is ever UNKNOWN
        found = self.containers.list(ContainerFilter(
            id=flt.id, pod_id=flt.pod_sandbox_id, state=state,
            labels=tuple(flt.label_selector.items())))
        return api.ListContainersResponse(containers=[convert.container_item(c) for c in found])

    async def ContainerStatus(self, request: api.ContainerStatusRequest,
                              context: Any) -> api.ContainerStatusResponse:
        container = self.rt.container(request.container_id)
        reply = api.ContainerStatusResponse(status=convert.container_status(container))
        if request.verbose:
            reply.info.update(convert.container_info(container))
        return reply

    async def UpdateContainerResources(self, request: api.UpdateContainerResourcesRequest,
                                       context: Any) -> api.UpdateContainerResourcesResponse:
        validate.resources(request.linux, "linux")
        await self.containers.update_resources(request.container_id, request.linux)
        return api.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request: api.ReopenContainerLogRequest,
                                 context: Any) -> api.ReopenContainerLogResponse:
        self.containers.reopen_log(request.container_id)
        return api.ReopenContainerLogResponse()

    async def ExecSync(self, request: api.ExecSyncRequest,
                       context: Any) -> api.ExecSyncResponse:
        validate.command(request.cmd)
        validate.timeout(request.timeout, "timeout")
        result = await self.streams.exec_sync(request.container_id, request.cmd,
                                              request.timeout)
        return api.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                    exit_code=result.exit_code)

    async def Exec(self, request: api.ExecRequest, context: Any) -> api.ExecResponse:
        validate.command(request.cmd)
        _check_stdio(request.stdin, request.stdout, request.stderr, request.tty)
        container, _ = self.streams.running_container(request.container_id)
        return api.ExecResponse(url=self.stream_server.url(ExecRequest(
            container.id, tuple(request.cmd), tty=request.tty, stdin=request.stdin,
            stdout=request.stdout, stderr=request.stderr)))

    async def Attach(self, request: api.AttachRequest, context: Any) -> api.AttachResponse:
        _check_stdio(request.stdin, request.stdout, request.stderr, request.tty)
        container, _ = self.streams.running_container(request.container_id)
        return api.AttachResponse(url=self.stream_server.url(AttachRequest(
            container.id, tty=request.tty, stdin=request.stdin, stdout=request.stdout,
            stderr=request.stderr)))

    async def PortForward(self, request: api.PortForwardRequest,
                          context: Any) -> api.PortForwardResponse:
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgumentError(f"port: {port} is not a TCP port number")
        pod = self.rt.pod(request.pod_sandbox_id)
        self.rt.ready_sandbox(pod)
        return api.PortForwardResponse(url=self.stream_server.url(PortForwardRequest(
            pod.id, tuple(request.port))))

    async def CheckpointContainer(self, request: api.CheckpointContainerRequest,
                                  context: Any) -> api.CheckpointContainerResponse:
        raise UnimplementedError("container checkpointing is not supported by vmrt")

    async def UpdatePodSandboxResources(
            self, request: api.UpdatePodSandboxResourcesRequest,
            context: Any) -> api.UpdatePodSandboxResourcesResponse:
        validate.resources(request.resources, "resources")
        validate.resources(request.overhead, "overhead")
        await self.pods.resize(request.pod_sandbox_id, request.resources)
        return api.UpdatePodSandboxResourcesResponse()

    async def GetContainerEvents(self, request: api.GetEventsRequest, context: Any) -> Any:
        queue = self.rt.events.subscribe()
        try:
            while True:
                event = await queue.get()
                reply = api.ContainerEventResponse(
                    container_id=event.container_id,
                    container_event_type={
                        "created": api.CONTAINER_CREATED_EVENT,
                        "started": api.CONTAINER_STARTED_EVENT,
                        "stopped": api.CONTAINER_STOPPED_EVENT,
                        "deleted": api.CONTAINER_DELETED_EVENT}[event.kind],
                    created_at=event.at_ns)
                if event.pod is not None:  # as it was when the event happened
                    reply.pod_sandbox_status.CopyFrom(convert.pod_status(event.pod))
                    reply.containers_statuses.extend(
                        convert.container_status(c) for c in event.containers)
                yield reply
        finally:
            self.rt.events.unsubscribe(queue)

