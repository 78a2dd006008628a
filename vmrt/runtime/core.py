"""The runtime's shared state: records, pod sandboxes, names, images, events.

``Runtime`` keeps the records and the lookups; ``PodService`` and
``ContainerService`` (what the CRI layer calls) do the work, and each ready
pod's running parts are its ``PodSandbox``. ``Runtime`` is the sandboxes'
``Ledger``: the one place a container's end, or a pod's loss, is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from cri_api.v1 import api_pb2 as api

from vmrt.config import Config
from vmrt.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    VmrtError,
)
from vmrt.fsutil import private_dir
from vmrt.guest.image import GuestImage
from vmrt.images.registry import RegistryClient
from vmrt.images.store import ImageStore
from vmrt.network.cni import CNI
from vmrt.network.pod import Networking, PodNetworking
from vmrt.runtime import sizing
from vmrt.runtime.counters import Counters
from vmrt.runtime.events import EventBus, Snapshot
from vmrt.runtime.names import NameIndex
from vmrt.runtime.records import (
    ContainerRecord,
    ContainerState,
    PodRecord,
    PodState,
)
from vmrt.runtime.sandbox import PodSandbox
from vmrt.runtime.store import RecordStore
from vmrt.runtime.tenants import Tenants
from vmrt.sandbox.driver import Drivers
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.vm import QemuDrivers, sandbox_dir

log = logging.getLogger(__name__)

T = TypeVar("T")

ADOPTION_WAIT = 60.0


class Runtime:
    def __init__(self, config: Config, guest_image: GuestImage,
                 drivers: Drivers | None = None,
                 networking: Networking | None = None) -> None:
        self.config = config
        self.guest_image = guest_image
        self.root = Path(config.storage.root)
        self.state = Path(config.storage.state)
        for private in (self.root / "pods", self.root / "containers",
                        self.state / "sandboxes"):
            private_dir(private)
        self.store = RecordStore(self.root)
        self.metrics = Counters()
        mirrors = {host: m.endpoints for host, m in config.registry.mirrors.items()}
        self.images = ImageStore(self.root, RegistryClient(mirrors))
        self.cni = CNI(config.cni.conf_dir, list(config.cni.bin_dirs))
        self.networking: Networking = networking or PodNetworking(
            self.cni, config.cni.host_network_subnet)
        # Templates are kept on the root's disk: the state directory is
        # usually a tmpfs, where a saved guest RAM would cost its size twice.
        self.drivers: Drivers = drivers or QemuDrivers(self.state, config.cgroups.root,
                                                       self.root / "templates")
        self.events = EventBus(self._event_snapshot)
        self.sandboxes: dict[str, PodSandbox] = {}
        # READY pods that recovery is still reattaching to (set when adopted).
        self.adoptions: dict[str, asyncio.Event] = {}
        self.tenants = Tenants(config.tenants)
        self.pod_names = NameIndex("pod sandbox")
        self.container_names = NameIndex("container")

    # -- lookups ------------------------------------------------------------

    def pod(self, pod_id: str) -> PodRecord:
        return _lookup(self.store.pods, pod_id, "pod sandbox", "pod_sandbox_id")

    def container(self, container_id: str) -> ContainerRecord:
        return _lookup(self.store.containers, container_id, "container", "container_id")

    async def settled(self, pod_id: str = "", container_id: str = "") -> None:
        """After a restart CRI is served while pods are still being adopted: a
        call on one of them (named by its id or a container's) waits for it,
        up to ``ADOPTION_WAIT``, then fails UNAVAILABLE."""
        if not self.adoptions:
            return
        with contextlib.suppress(VmrtError):
            if container_id:
                pod_id = self.container(container_id).pod_id
            elif pod_id:
                pod_id = self.pod(pod_id).id
        event = self.adoptions.get(pod_id)
        if event is None:
            return
        try:
            async with asyncio.timeout(ADOPTION_WAIT):
                await event.wait()
        except TimeoutError:
            raise UnavailableError(f"pod sandbox {pod_id} is still being recovered after a "
                                   "vmrtd restart; try again") from None

    def ready_sandbox(self, pod: PodRecord) -> PodSandbox:
        sandbox = self.sandboxes.get(pod.id)
        if sandbox is None or pod.state != PodState.READY:
            raise FailedPreconditionError(f"pod sandbox {pod.id} is not ready")
        return sandbox

    def sandbox_directory(self, pod_id: str) -> Path:
        """Where the pod's sandbox lives on the host (its console log, sockets, share)."""
        return sandbox_dir(self.state, pod_id)

    def container_dir(self, container_id: str) -> Path:
        return self.root / "containers" / container_id

    def layers_in_use(self) -> set[str]:
        """Layers that containers' root filesystems are built on (not to be collected)."""
        return {layer for c in self.store.containers.values() for layer in c.layers}

    def rebuild_names(self) -> None:
        for pod in self.store.pods.values():
            self.pod_names.reserve(pod.key, pod.id)
        for container in self.store.containers.values():
            self.container_names.reserve(
                container_key(container, self.store.pods[container.pod_id]), container.id)

    # -- VMs ----------------------------------------------------------------

    def vm_config(self, handler: str, pod_config: api.PodSandboxConfig,
                  pod_id: str = "") -> VMConfig:
        return sizing.vm_config(self.config, handler, pod_config, pod_id,
                                str(self.guest_image_for(handler).directory))

    def warm(self) -> None:
        """Start building the VM template of every handler that uses one, at
        its base size (pods without declared resources), so that even the
        first pods after start-up are clones; templates of guest images no
        handler uses are removed. A handler whose image or
        settings do not work is left to fail at its first pod, with the
        error that RunPodSandbox reports."""
        wanted: list[tuple[GuestImage, VMConfig, bool]] = []
        for handler in ("", *self.config.runtime_handlers):
            if not self.config.handler(handler).template:
                continue
            try:
                image = self.guest_image_for(handler)
                settings = sizing.vm_config(self.config, handler, api.PodSandboxConfig(), "",
                                            str(image.directory))
            except (VmrtError, OSError) as exc:
                log.info("no VM template for handler %r: %s", handler, exc)
                continue
            # Every pod has a NIC (CNI's, or the hostNetwork pods' own).
            if (image, settings, True) not in wanted:
                wanted.append((image, settings, True))
        self.drivers.warm(wanted)

    def committed_memory_mib(self) -> int:
        """The full guest RAM of every pod whose VM is or may be running, and
        of the VM templates kept for the pods to come."""
        return self.drivers.reserved_memory_mib() + sum(
            pod.vm.settings.memory_mib for pod in self.store.pods.values()
            if pod.vm is not None and pod.state in (PodState.STARTING, PodState.READY))

    def guest_image_for(self, handler: str) -> GuestImage:
        image_dir = self.config.handler(handler).image
        return GuestImage.load(image_dir) if image_dir else self.guest_image

    async def remove_pod_cgroup(self, pod: PodRecord) -> None:
        """The sandbox's cgroup, once its QEMU is gone (after a crash, or twice)."""
        cgroup = pod.vm.settings.cgroup if pod.vm else None
        if cgroup is not None:
            try:
                await cgroup.remove()
            except OSError as exc:
                log.warning("pod %s: cannot remove its cgroup: %s", pod.id[:12], exc)

    # -- the Ledger: what sandboxes report ------------------------------------

    def containers_of(self, pod_id: str) -> list[ContainerRecord]:
        return self.store.pod_containers(pod_id)

    def find_container(self, container_id: str) -> ContainerRecord | None:
        return self.store.containers.get(container_id)

    def container_exited(self, container: ContainerRecord, exit_code: int, finished_at: int,
                         oom_killed: bool = False, message: str = "",
                         reason: str = "") -> None:
        """The one place a container's end is recorded."""
        if container.state == ContainerState.EXITED:
            return
        if container.id not in self.store.containers:
            return  # removed meanwhile: nothing to record
        if not reason:
            reason = "OOMKilled" if oom_killed else "Completed" if exit_code == 0 else "Error"
        self.store.update_container(container, lambda s: dataclasses.replace(
            s, state=ContainerState.EXITED, exit_code=exit_code,
            finished_at=finished_at or time.time_ns(), reason=reason, message=message))
        self.events.publish(container.id, container.pod_id, "stopped")

    def _event_snapshot(self, pod_id: str) -> Snapshot:
        pod = self.store.pods.get(pod_id)
        if pod is None:
            return None, ()
        return PodRecord(pod.meta, pod.status), tuple(
            ContainerRecord(c.meta, c.status) for c in self.store.pod_containers(pod_id))

    def save_offsets(self, container: ContainerRecord, stdout: int, stderr: int) -> None:
        if container.id in self.store.containers:
            self.store.update_container(container, lambda s: dataclasses.replace(
                s, stdout_offset=stdout, stderr_offset=stderr), durable=False)

    async def sandbox_lost(self, sandbox: PodSandbox, message: str) -> None:
        await self.pod_lost(sandbox.record, message)

    async def pod_lost(self, pod: PodRecord, message: str) -> None:
        """The VM is gone or going: the pod is NOTREADY, its containers EXITED,
        and its sandbox destroyed."""
        sandbox = self.sandboxes.pop(pod.id, None)
        for container in self.store.pod_containers(pod.id):
            self.container_exited(container, 255, time.time_ns(), message=message)
        if pod.state == PodState.READY and pod.id in self.store.pods:
            self.store.update_pod(pod, lambda s: dataclasses.replace(
                s, state=PodState.NOTREADY, reason=message))
            self.events.publish(pod.id, pod.id, "stopped")  # the sandbox's own
        if sandbox is not None:
            await sandbox.destroy()


def container_key(container: ContainerRecord, pod: PodRecord) -> str:
    return name_key(container.name, container.attempt, pod)


def name_key(name: str, attempt: int, pod: PodRecord) -> str:
    """The CRI name reservation: one container per name and attempt in a pod."""
    return f"{name}_{pod.name}_{pod.namespace}_{pod.uid}_{attempt}"


def _lookup(table: Mapping[str, T], object_id: str, kind: str, field: str) -> T:
    if not object_id:
        raise InvalidArgumentError(f"{field}: is required")
    if object_id in table:
        return table[object_id]
    # A unique prefix, as crictl and containerd accept.
    matches = [k for k in table if k.startswith(object_id)]
    if len(matches) == 1:
        return table[matches[0]]
    if len(matches) > 1:
        raise InvalidArgumentError(f"{field}: prefix {object_id!r} is ambiguous")
    raise NotFoundError(f"{kind} {object_id!r} not found")
