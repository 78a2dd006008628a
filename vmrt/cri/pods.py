"""RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.config import ConfigError
from vmrt.cri import convert, validate
from vmrt.cri.base import Base
from vmrt.errors import InvalidArgumentError, NotFoundError
from vmrt.runtime.pods import PodFilter


class PodRPCs(Base):
    async def RunPodSandbox(self, request: api.RunPodSandboxRequest,
                            context: Any) -> api.RunPodSandboxResponse:
        if not request.HasField("config"):
            raise InvalidArgumentError("config: is required")
        validate.pod_config(request.config)
        handler = request.runtime_handler
        try:
            self.rt.config.handler(handler)
        except ConfigError as exc:  # unknown: its message names the ones configured
            raise InvalidArgumentError(f"runtime_handler: {exc}") from None
        pod_id = await self.pods.run(request.config, handler)
        return api.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    async def StopPodSandbox(self, request: api.StopPodSandboxRequest,
                             context: Any) -> api.StopPodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgumentError("pod_sandbox_id: is required")
        # CRI: stopping a pod that is not there succeeds (kubelet retries).
        with contextlib.suppress(NotFoundError):
            await self.pods.stop(request.pod_sandbox_id)
        return api.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: api.RemovePodSandboxRequest,
                               context: Any) -> api.RemovePodSandboxResponse:
        await self.pods.remove(request.pod_sandbox_id)
        return api.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: api.PodSandboxStatusRequest,
                               context: Any) -> api.PodSandboxStatusResponse:
        pod = self.rt.pod(request.pod_sandbox_id)
        reply = api.PodSandboxStatusResponse(status=convert.pod_status(pod),
                                             timestamp=time.time_ns())
        reply.containers_statuses.extend(
            convert.container_status(c) for c in self.rt.store.pod_containers(pod.id))
        if request.verbose:
            reply.info.update(convert.pod_info(pod, str(self.rt.sandbox_directory(pod.id)),
                                               self.rt.tenants.of(pod.namespace)))
        return reply

    async def ListPodSandbox(self, request: api.ListPodSandboxRequest,
                             context: Any) -> api.ListPodSandboxResponse:
        flt = request.filter
        state = None
        if flt.HasField("state"):
            validate.enum(flt.state.state, (api.SANDBOX_READY, api.SANDBOX_NOTREADY),
                          "filter.state.state")
            state = "ready" if flt.state.state == api.SANDBOX_READY else "notready"
        pods = self.pods.list(PodFilter(id=flt.id, state=state,
                                        labels=tuple(flt.label_selector.items())))
        return api.ListPodSandboxResponse(items=[convert.pod_item(p) for p in pods])
