"""The router: behind the tenant scope, it sends each CRI call on a delegated
pod or container to its delegate, runs new pods there when their handler
says so (or, with ``[cri] host_namespace_handler``, when they ask for the
node's namespaces), and merges the delegates into listings, stats, events
and the image service. Everything else goes to vmrt's own handlers.

The image rule: kubelet asks ImageStatus with no pod, and pulls only what
is missing, so an image is present only when every store that may run it
has it: vmrt's and every delegate's that answers. Pulls and removals go to
all of them, and succeed when vmrt's own does: a delegate that cannot pull
an image (one only vmrt has, like its built-in busybox, or a delegate that
is down) is logged and left out, so VM pods keep starting; its own pods
then fail to create with the delegate's own "not found", and kubelet's next
ImageStatus says "missing" and pulls again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as api

from vmrt.cri.intercept import rewrap
from vmrt.cri.tenancy import requested_tenant
from vmrt.delegate import listing
from vmrt.delegate.client import Delegate, DelegateError
from vmrt.delegate.records import DelegatedRecords, Entry
from vmrt.errors import FailedPreconditionError, UnavailableError, VmrtError
from vmrt.runtime.core import Runtime

log = logging.getLogger(__name__)

UNAVAILABLE_ANNOTATION = "vmrt.io/delegate-unavailable"
EVENT_RETRY = 2.0
EVENT_QUEUE = 1024
# CRI: stopping or removing what is not there succeeds (kubelet retries).
_GONE_IS_SUCCESS = frozenset({"StopPodSandbox", "RemovePodSandbox", "StopContainer",
                              "RemoveContainer"})
_MERGED = frozenset({"ListPodSandbox", "ListContainers", "ListContainerStats",
                     "ListPodSandboxStats", "ListPodSandboxMetrics", "ListImages",
                     "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo",
                     "UpdateRuntimeConfig", "Status"})

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def asks_for_the_node(config: api.PodSandboxConfig) -> bool:
    options = config.linux.security_context.namespace_options
    return api.NODE in (options.network, options.pid, options.ipc)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e9 else None


class Router(grpc.aio.ServerInterceptor):
    def __init__(self, runtime: Runtime, delegates: dict[str, Delegate],
                 records: DelegatedRecords, host_handler: str = "") -> None:
        self.rt = runtime
        self.delegates = delegates
        self.records = records
        self.host_handler = host_handler

    async def close(self) -> None:
        for delegate in self.delegates.values():
            await delegate.close()

    async def intercept_service(self, continuation: Any,
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return rewrap(handler, lambda behavior: self._unary(method, behavior),
                      lambda behavior: self._stream(method, behavior))

    # -- where a call goes ---------------------------------------------------------

    def _delegate(self, name: str) -> Delegate:
        delegate = self.delegates.get(name)
        if delegate is None:
            raise UnavailableError(f"delegate {name!r} runs this object but is no longer "
                                   "configured")
        return delegate

    def _target(self, request: Any) -> tuple[Delegate, Entry] | None:
        """The delegate that runs the object the request names, the request's id
        made whole; None for vmrt's own (or for none at all)."""
        fields = request.DESCRIPTOR.fields_by_name
        for field, table, local in (
                ("container_id", self.records.containers, self.rt.store.containers),
                ("pod_sandbox_id", self.records.pods, self.rt.store.pods)):
            if field in fields and getattr(request, field):
                found = self.records.resolve(table, getattr(request, field), local, field)
                if found is None:
                    return None
                setattr(request, field, found)
                return self._delegate(table[found].delegate), table[found]
        return None

    def _runner(self, request: api.RunPodSandboxRequest,
                context: grpc.aio.ServicerContext) -> str:
        """The delegating handler a new pod goes to, or ""."""
        if request.runtime_handler in self.delegates:
            name = request.runtime_handler
        elif self.host_handler and asks_for_the_node(request.config):
            name = self.host_handler
        else:
            return ""
        if requested_tenant(context) is not None:
            raise FailedPreconditionError(
                f"a tenant's pods run in VMs only: this one would run on delegate {name!r} "
                "(its handler, or the node's namespaces it asks for)")
        return name

    def _unary(self, method: str, behavior: Behavior) -> Behavior:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if method == "RunPodSandbox":
                name = self._runner(request, context)
                if name:
                    return await self._run_pod(name, request, _deadline(context))
            elif method in _MERGED:
                reply = await behavior(request, context)
                await getattr(self, f"_merge_{method}")(request, reply)
                return reply
            target = self._target(request)
            if target is None:
                return await behavior(request, context)
            return await self._forward(method, request, target, _deadline(context))

        return unary

    # -- forwarded calls -----------------------------------------------------------------

    async def _run_pod(self, name: str, request: api.RunPodSandboxRequest,
                       timeout: float | None) -> api.RunPodSandboxResponse:
        delegate = self._delegate(name)
        forwarded = api.RunPodSandboxRequest()
        forwarded.CopyFrom(request)
        forwarded.runtime_handler = delegate.config.runtime_handler
        try:
            reply = await delegate.call("RunPodSandbox", forwarded, timeout)
            pod_id = reply.pod_sandbox_id
            if pod_id in self.rt.store.pods or not pod_id:
                raise VmrtError(f"delegate {name!r} answered pod id {pod_id!r}, which is not "
                                "a new id")
            config = request.config
            self.records.add_pod(name, api.PodSandbox(
                id=pod_id, metadata=config.metadata, state=api.SANDBOX_READY,
                created_at=time.time_ns(), labels=config.labels, annotations=config.annotations,
                runtime_handler=request.runtime_handler))
        except BaseException as exc:
            # Cut short (the caller's deadline, a lost answer, a record not
            # written): the delegate may have made the pod; nobody else knows it.
            if not isinstance(exc, DelegateError) or exc.code in (
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                await asyncio.shield(self._undo_run(delegate, request.config.metadata))
            raise
        log.info("pod %s runs on delegate %s", pod_id[:13], name)
        return reply

    async def _undo_run(self, delegate: Delegate, metadata: api.PodSandboxMetadata) -> None:
        """Remove the pod a failed RunPodSandbox may have left at the delegate
        (found by its metadata, which kubelet makes unique per attempt)."""
        try:
            pods = await delegate.call("ListPodSandbox", api.ListPodSandboxRequest())
            for pod in pods.items:
                if pod.metadata == metadata and pod.id not in self.records.pods:
                    await delegate.call("StopPodSandbox",
                                        api.StopPodSandboxRequest(pod_sandbox_id=pod.id))
                    await delegate.call("RemovePodSandbox",
                                        api.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
                    log.info("removed pod %s a failed run left at delegate %s", pod.id[:13],
                             delegate.name)
        except VmrtError as exc:
            log.warning("could not undo a failed run at delegate %s: %s", delegate.name, exc)

    async def _forward(self, method: str, request: Any, target: tuple[Delegate, Entry],
                       timeout: float | None) -> Any:
        delegate, entry = target
        try:
            reply = await delegate.call(method, request, timeout)
        except DelegateError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND or method not in _GONE_IS_SUCCESS:
                raise
            reply = getattr(api, f"{method}Response")()
        if method == "RemovePodSandbox":
            self.records.drop_pod(request.pod_sandbox_id)
        elif method == "RemoveContainer":
            self.records.drop_container(request.container_id)
        elif method == "CreateContainer":
            config = request.config
            self.records.add_container(delegate.name, api.Container(
                id=reply.container_id, pod_sandbox_id=request.pod_sandbox_id,
                metadata=config.metadata, image=config.image, state=api.CONTAINER_CREATED,
                created_at=time.time_ns(), labels=config.labels,
                annotations=config.annotations))
        elif method in ("PodSandboxStatus", "ContainerStatus"):
            self._remember_state(entry, reply.status.state)
        return reply

    def _remember_state(self, entry: Entry, state: int) -> None:
        if entry.item.state != state:
            entry.item.state = state
            self.records.save()

    # -- merged calls ----------------------------------------------------------------

    def _holding(self, table: dict[str, Entry]) -> list[Delegate]:
        """The delegates that run something of ``table``'s."""
        names = {entry.delegate for entry in table.values()}
        return [self.delegates[n] for n in sorted(names) if n in self.delegates]

    async def _ask(self, delegates: Iterable[Delegate], method: str,
                   request: Any) -> list[tuple[Delegate, Any | VmrtError]]:
        """Each delegate's answer, or the error it gave."""
        async def one(delegate: Delegate) -> Any | VmrtError:
            try:
                return await delegate.call(method, request)
            except (DelegateError, UnavailableError) as exc:
                return exc
        found = list(delegates)
        return list(zip(found, await asyncio.gather(*(one(d) for d in found)), strict=True))

    async def _merge_ListPodSandbox(self, request: api.ListPodSandboxRequest,
                                    reply: api.ListPodSandboxResponse) -> None:
        asked_at = None if request.HasField("filter") else time.monotonic()
        for delegate, answer in await self._ask(self._holding(self.records.pods),
                                                "ListPodSandbox", request):
            if isinstance(answer, VmrtError):
                reply.items.extend(self._remembered(self.records.pods, delegate, answer,
                                                    lambda p: listing.pod_matches(
                                                        p, request.filter)))
                continue
            for item in answer.items:
                entry = self.records.pods.get(item.id)
                if entry is not None:  # vmrt's handler name, not the delegate's
                    item.runtime_handler = entry.item.runtime_handler
            reply.items.extend(self.records.refresh(self.records.pods, delegate.name,
                                                    list(answer.items), asked_at))

    async def _merge_ListContainers(self, request: api.ListContainersRequest,
                                    reply: api.ListContainersResponse) -> None:
        asked_at = None if request.HasField("filter") else time.monotonic()
        for delegate, answer in await self._ask(self._holding(self.records.containers),
                                                "ListContainers", request):
            if isinstance(answer, VmrtError):
                reply.containers.extend(self._remembered(
                    self.records.containers, delegate, answer,
                    lambda c: listing.container_matches(c, request.filter)))
                continue
            reply.containers.extend(self.records.refresh(
                self.records.containers, delegate.name, list(answer.containers), asked_at))

    def _remembered(self, table: dict[str, Entry], delegate: Delegate, error: VmrtError,
                    wanted: Callable[[Any], bool]) -> list[Any]:
        """A down delegate's objects as last seen, each saying why."""
        log.warning("listing delegate %s: %s", delegate.name, error)
        items = []
        for entry in table.values():
            if entry.delegate == delegate.name and wanted(entry.item):
                item = type(entry.item)()
                item.CopyFrom(entry.item)
                item.annotations[UNAVAILABLE_ANNOTATION] = str(error)[:512]
                items.append(item)
        return items

    async def _merge_stats(self, method: str, request: Any, reply: Any, table: dict[str, Entry],
                           items: Callable[[Any], Any], key: Callable[[Any], str]) -> None:
        """Stats and metrics: each delegate's for what vmrt gave it; a delegate
        that is down, or does not implement the call, adds nothing."""
        for delegate, answer in await self._ask(self._holding(table), method, request):
            if isinstance(answer, VmrtError):
                log.info("%s of delegate %s: %s", method, delegate.name, answer)
                continue
            items(reply).extend(i for i in items(answer) if key(i) in table)

    async def _merge_ListContainerStats(self, request: Any, reply: Any) -> None:
        await self._merge_stats("ListContainerStats", request, reply, self.records.containers,
                                lambda r: r.stats, lambda s: s.attributes.id)

    async def _merge_ListPodSandboxStats(self, request: Any, reply: Any) -> None:
        await self._merge_stats("ListPodSandboxStats", request, reply, self.records.pods,
                                lambda r: r.stats, lambda s: s.attributes.id)

    async def _merge_ListPodSandboxMetrics(self, request: Any, reply: Any) -> None:
        await self._merge_stats("ListPodSandboxMetrics", request, reply, self.records.pods,
                                lambda r: r.pod_metrics, lambda m: m.pod_sandbox_id)

    # -- the image service and node-wide calls: every delegate -------------------------

    def _every(self) -> list[Delegate]:
        return [self.delegates[n] for n in sorted(self.delegates)]

    def _answers(self, method: str,
                 answers: list[tuple[Delegate, Any | VmrtError]]) -> Iterable[tuple[Delegate, Any]]:
        """The delegates' answers; a delegate's error is logged and it is left out."""
        for delegate, answer in answers:
            if isinstance(answer, VmrtError):
                log.warning("%s: %s; left out", method, answer)
                continue
            yield delegate, answer

    async def _everywhere(self, method: str, request: Any) -> list[tuple[Delegate, Any]]:
        """``method`` at every delegate: the answers of those that gave one."""
        return list(self._answers(method, await self._ask(self._every(), method, request)))

    async def _merge_PullImage(self, request: Any, reply: Any) -> None:
        # vmrt's own pull has succeeded; a delegate that cannot pull is logged
        # (its pods then fail to create with its own "not found").
        await self._everywhere("PullImage", request)

    async def _merge_RemoveImage(self, request: Any, reply: Any) -> None:
        await self._everywhere("RemoveImage", request)

    async def _merge_ImageStatus(self, request: Any, reply: api.ImageStatusResponse) -> None:
        if not reply.image.id:
            return
        for delegate, answer in await self._everywhere("ImageStatus", request):
            if not answer.image.id:
                log.info("image %s is missing from delegate %s: reported missing",
                         request.image.image[:200], delegate.name)
                reply.Clear()
                return

    async def _merge_ListImages(self, request: Any, reply: api.ListImagesResponse) -> None:
        for _, answer in await self._everywhere("ListImages", request):
            listing.merge_images(reply.images, answer.images)

    async def _merge_ImageFsInfo(self, request: Any, reply: api.ImageFsInfoResponse) -> None:
        for _, answer in await self._everywhere("ImageFsInfo", request):
            reply.image_filesystems.extend(answer.image_filesystems)
            reply.container_filesystems.extend(answer.container_filesystems)

    async def _merge_Status(self, request: Any, reply: api.StatusResponse) -> None:
        """Each delegating handler listed with the features its delegate gives
        the handler it is asked for; a delegate that is down lists none."""
        for delegate, answer in await self._everywhere("Status", api.StatusRequest()):
            features = next((h.features for h in answer.runtime_handlers
                             if h.name == delegate.config.runtime_handler), None)
            reply.runtime_handlers.append(api.RuntimeHandler(name=delegate.name,
                                                             features=features))

    async def _merge_UpdateRuntimeConfig(self, request: Any, reply: Any) -> None:
        for delegate, answer in await self._ask(self._every(), "UpdateRuntimeConfig", request):
            if isinstance(answer, VmrtError):
                log.warning("UpdateRuntimeConfig of delegate %s: %s", delegate.name, answer)

    # -- the event stream ----------------------------------------------------------------

    def _stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]]
                ) -> Callable[..., AsyncIterator[Any]]:
        if method != "GetContainerEvents":
            return behavior

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            queue: asyncio.Queue[Any] = asyncio.Queue(EVENT_QUEUE)
            ended = object()

            async def local() -> None:
                try:
                    async for event in behavior(request, context):
                        await queue.put(event)
                finally:
                    # Never blocks: a full queue's reader is gone or far behind,
                    # and the stream ends when the caller goes anyway.
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(ended)

            tasks = [asyncio.create_task(local(), name="events-local")]
            tasks += [asyncio.create_task(self._delegate_events(d, request, queue),
                                          name=f"events-{d.name}") for d in self._every()]
            try:
                while (event := await queue.get()) is not ended:
                    yield event
                tasks[0].result()  # the local stream's own error, if it had one
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

        return stream

    async def _delegate_events(self, delegate: Delegate, request: Any,
                               queue: asyncio.Queue[Any]) -> None:
        """A delegate's events about what vmrt gave it, reconnecting while it is down."""
        while True:
            try:
                async for event in delegate.stream("GetContainerEvents", request):
                    if self._note_event(delegate, event):
                        await queue.put(event)
            except (DelegateError, UnavailableError) as exc:
                log.debug("events of delegate %s: %s", delegate.name, exc)
            await asyncio.sleep(EVENT_RETRY)

    def _note_event(self, delegate: Delegate, event: api.ContainerEventResponse) -> bool:
        entry = (self.records.containers.get(event.container_id)
                 or self.records.pods.get(event.container_id))  # a sandbox's own events
        if entry is None or entry.delegate != delegate.name:
            return False
        states = {api.CONTAINER_STARTED_EVENT: api.CONTAINER_RUNNING,
                  api.CONTAINER_STOPPED_EVENT: api.CONTAINER_EXITED}
        if event.container_event_type in states:
            self._remember_state(entry, states[event.container_event_type])
        return True


def from_config(runtime: Runtime) -> Router | None:
    """The router for the configured delegates; also with none configured
    when some pod still runs on one (its calls then say it is gone)."""
    records = DelegatedRecords(runtime.root / "delegated.json")
    records.load()
    config = runtime.config
    if not config.delegates and not records.pods:
        return None
    delegates = {name: Delegate(name, c) for name, c in config.delegates.items()}
    return Router(runtime, delegates, records, config.cri.host_namespace_handler)
