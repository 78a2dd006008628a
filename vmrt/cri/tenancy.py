"""A caller's view of one tenant: the ``vmrt-tenant`` request header.

A call that carries the header sees only that tenant's pods and containers:
listings and the event stream leave the others out, an id (or a prefix) is
looked up among the tenant's own objects only (another tenant's is "not
found", word for word as one that does not exist), and RunPodSandbox puts
the pod in the tenant (its namespace becomes the tenant's when it is not
one of them). A call without it (kubelet's) sees the whole node. The
header is a scope, not a credential: whoever can reach the socket is
root on the node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as api

from vmrt.cri.intercept import rewrap
from vmrt.errors import InvalidArgumentError, NotFoundError
from vmrt.runtime.core import Runtime
from vmrt.runtime.tenants import check_name

HEADER = "vmrt-tenant"

# CRI: stopping or removing what is not there succeeds (kubelet retries).
_MISSING_IS_SUCCESS = frozenset({"StopPodSandbox", "RemovePodSandbox", "StopContainer",
                                 "RemoveContainer"})


def requested_tenant(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == HEADER:
            return check_name(str(value), f"{HEADER} header")
    return None


class Scope:
    def __init__(self, runtime: Runtime, tenant: str) -> None:
        self.rt = runtime
        self.tenant = tenant

    def owns_pod(self, pod_id: str) -> bool:
        pod = self.rt.store.pods.get(pod_id)
        return pod is not None and self.rt.tenants.of(pod.namespace) == self.tenant

    def owns_container(self, container_id: str) -> bool:
        container = self.rt.store.containers.get(container_id)
        return container is not None and self.owns_pod(container.pod_id)

    def _resolve(self, table: Mapping[str, Any], owns: Callable[[str], bool], value: str,
                 kind: str, field: str) -> str:
        """The full id of the tenant's object that ``value`` names (an id or a
        unique prefix among the tenant's own), as ``Runtime``'s lookups do."""
        if value in table and owns(value):
            return value
        matches = [key for key in table if key.startswith(value) and owns(key)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidArgumentError(f"{field}: prefix {value!r} is ambiguous")
        raise NotFoundError(f"{kind} {value!r} not found")

    def narrow(self, request: Any) -> None:
        """Point the request's id at the tenant's own object (NotFoundError if none)."""
        fields = request.DESCRIPTOR.fields_by_name
        if "pod_sandbox_id" in fields and request.pod_sandbox_id:
            request.pod_sandbox_id = self._resolve(self.rt.store.pods, self.owns_pod,
                                                   request.pod_sandbox_id, "pod sandbox",
                                                   "pod_sandbox_id")
        if "container_id" in fields and request.container_id:
            request.container_id = self._resolve(self.rt.store.containers,
                                                 self.owns_container, request.container_id,
                                                 "container", "container_id")

    def place(self, request: api.RunPodSandboxRequest) -> None:
        """A new pod goes into the tenant: its namespace, unless already one of the tenant's."""
        meta = request.config.metadata
        if self.rt.tenants.of(meta.namespace) != self.tenant:
            meta.namespace = self.rt.tenants.primary(self.tenant)

    def filter(self, reply: Any) -> None:
        """Leave the other tenants' objects out of a listing."""
        if isinstance(reply, api.ListPodSandboxResponse):
            _keep(reply.items, lambda p: self.rt.tenants.of(p.metadata.namespace) == self.tenant)
        elif isinstance(reply, api.ListContainersResponse):
            _keep(reply.containers, lambda c: self.owns_pod(c.pod_sandbox_id))
        elif isinstance(reply, api.ListContainerStatsResponse):
            _keep(reply.stats, lambda s: self.owns_container(s.attributes.id))
        elif isinstance(reply, api.ListPodSandboxStatsResponse):
            _keep(reply.stats, lambda s: self.owns_pod(s.attributes.id))

    def sees_event(self, event: api.ContainerEventResponse) -> bool:
        if event.HasField("pod_sandbox_status"):  # as it was at the event
            namespace = event.pod_sandbox_status.metadata.namespace
            return self.rt.tenants.of(namespace) == self.tenant
        return self.owns_container(event.container_id) or self.owns_pod(event.container_id)


def _keep(items: Any, wanted: Callable[[Any], bool]) -> None:
    kept = [item for item in items if wanted(item)]
    del items[:]
    items.extend(kept)


class TenantScope(grpc.aio.ServerInterceptor):
    """Behind the error boundary: what it raises becomes a status code there."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def intercept_service(self, continuation: Any,
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return rewrap(handler, lambda behavior: self._unary(method, behavior), self._stream)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            tenant = requested_tenant(context)
            if tenant is None:
                return await behavior(request, context)
            scope = Scope(self.rt, tenant)
            if isinstance(request, api.RunPodSandboxRequest):
                scope.place(request)
            else:
                try:
                    scope.narrow(request)
                except NotFoundError:
                    if method in _MISSING_IS_SUCCESS:
                        return getattr(api, f"{method}Response")()
                    raise
            reply = await behavior(request, context)
            scope.filter(reply)
            return reply

        return unary

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            tenant = requested_tenant(context)
            scope = Scope(self.rt, tenant) if tenant is not None else None
            async for reply in behavior(request, context):
                if (scope is None or not isinstance(reply, api.ContainerEventResponse)
                        or scope.sees_event(reply)):
                    yield reply

        return stream
