"""The runtime's shared state: records, live pods, images, events.

``Runtime`` is what the CRI layer talks to through ``PodService`` and
``ContainerService``; it owns the lookups and the single place where a
container's end is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cri_api.v1 import api_pb2 as api

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import Agent
from vmrt.config import Config
from vmrt.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from vmrt.fsutil import private_dir
from vmrt.guest.image import GuestImage
from vmrt.hypervisor.accel import choose_accel
from vmrt.images.registry import RegistryClient
from vmrt.images.store import ImageStore
from vmrt.network.cni import CNI
from vmrt.network.pod import PodNetworking
from vmrt.runtime.events import EventBus
from vmrt.runtime.logs import CRILogWriter, LogPump
from vmrt.runtime.records import ContainerRecord, PodRecord, RecordStore
from vmrt.sandbox import cgroups
from vmrt.sandbox.vm import SandboxVM, VMConfig

log = logging.getLogger(__name__)

MIB = 1024 * 1024
T = TypeVar("T")


@dataclass
class LivePod:
    """The running parts of a ready pod."""

    record: PodRecord
    vm: SandboxVM
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pumps: dict[str, LogPump] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False
    warnings: int = 0

    @property
    def agent(self) -> Agent:
        if self.vm.agent is None:
            raise FailedPreconditionError(f"pod {self.record.id} has no agent connection")
        return self.vm.agent

    def warn_once(self, problem: str) -> None:
        """Log what the guest did wrong, without letting a guest flood the log."""
        self.warnings += 1
        if self.warnings <= 10 or self.warnings % 1000 == 0:
            log.warning("pod %s: %s (%d such warnings)", self.record.id[:12], problem,
                        self.warnings)

    async def cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        self.tasks.clear()


class Runtime:
    def __init__(self, config: Config, guest_image: GuestImage) -> None:
        self.config = config
        self.guest_image = guest_image
        self.root = Path(config.storage.root)
        self.state = Path(config.storage.state)
        for private in (self.root / "pods", self.root / "containers",
                        self.state / "sandboxes"):
            private_dir(private)
        self.store = RecordStore(self.root)
        mirrors = {host: m.endpoints for host, m in config.registry.mirrors.items()}
        self.images = ImageStore(self.root, RegistryClient(mirrors))
        self.cni = CNI(config.cni.conf_dir, list(config.cni.bin_dirs))
        self.networking = PodNetworking(self.cni, config.cni.host_network_subnet)
        self.events = EventBus()
        self.live: dict[str, LivePod] = {}
        self.pod_cidr = ""
        self._pod_names: dict[str, str] = {}
        self._container_names: dict[str, str] = {}

    # -- lookups ------------------------------------------------------------

    def pod(self, pod_id: str) -> PodRecord:
        return _lookup(self.store.pods, pod_id, "pod sandbox", "pod_sandbox_id")

    def container(self, container_id: str) -> ContainerRecord:
        return _lookup(self.store.containers, container_id, "container", "container_id")

    def live_pod(self, pod: PodRecord) -> LivePod:
        live = self.live.get(pod.id)
        if live is None or pod.state != "ready":
            raise FailedPreconditionError(f"pod sandbox {pod.id} is not ready")
        return live

    def container_dir(self, container_id: str) -> Path:
        return self.root / "containers" / container_id

    def layers_in_use(self) -> set[str]:
        """Layers that containers' root filesystems are built on (not to be collected)."""
        return {layer for c in self.store.containers.values() for layer in c.layers}

    # -- name reservations -------------------------------------------------

    def reserve_pod_name(self, key: str, pod_id: str) -> None:
        holder = self._pod_names.get(key)
        if holder is not None and holder != pod_id:
            raise AlreadyExistsError(f"pod sandbox name {key} is already in use by {holder}")
        self._pod_names[key] = pod_id

    def release_pod_name(self, key: str, pod_id: str) -> None:
        if self._pod_names.get(key) == pod_id:
            del self._pod_names[key]

    def reserve_container_name(self, key: str, container_id: str) -> None:
        holder = self._container_names.get(key)
        if holder is not None and holder != container_id:
            raise AlreadyExistsError(f"container name {key} is already in use by {holder}")
        self._container_names[key] = container_id

    def release_container_name(self, key: str, container_id: str) -> None:
        if self._container_names.get(key) == container_id:
            del self._container_names[key]

    def rebuild_reservations(self) -> None:
        for pod in self.store.pods.values():
            self._pod_names[pod.key] = pod.id
        for container in self.store.containers.values():
            self._container_names[container_key(container, self.store.pods[container.pod_id])] = \
                container.id

    # -- VM sizing ----------------------------------------------------------

    def vm_config(self, handler: str, pod_config: api.PodSandboxConfig,
                  pod_id: str = "") -> VMConfig:
        """The handler's VM, grown by the pod's declared resources and overhead,
        in the pod's cgroup (when ``pod_id`` is given)."""
        hv = self.config.handler(handler)
        linux = pod_config.linux
        memory = hv.memory_mib
        cpus = float(hv.vcpus)
        for resources in (linux.resources, linux.overhead):
            if resources.memory_limit_in_bytes > 0:
                memory += math.ceil(resources.memory_limit_in_bytes / MIB)
            if resources.cpu_quota > 0 and resources.cpu_period > 0:
                cpus += resources.cpu_quota / resources.cpu_period
        limit = hv.max_memory_mib or host_memory_mib()
        if memory > limit:
            raise InvalidArgumentError(
                f"config.linux.resources.memory_limit_in_bytes "
                f"({linux.resources.memory_limit_in_bytes}) and "
                f"config.linux.overhead.memory_limit_in_bytes "
                f"({linux.overhead.memory_limit_in_bytes}): the pod needs a VM of {memory} MiB "
                f"({hv.memory_mib} MiB for handler {handler or 'default'!r} plus the pod's), "
                f"more than the maximum of {limit} MiB (hypervisor.max_memory_mib"
                f"{'' if hv.max_memory_mib else ', by default the host memory'})")
        vcpus = max(1, min(math.ceil(cpus), os.cpu_count() or 1, 255))
        cgroup = None
        if pod_id:
            cgroup = cgroups.for_pod(self.config.cgroups.driver, linux.cgroup_parent, pod_id,
                                     self.config.cgroups.root,
                                     self.config.cgroups.default_parent)
        return VMConfig(
            memory_mib=memory, vcpus=vcpus, machine=hv.machine,
            accel=choose_accel(hv.accel).name, transport=hv.transport,
            tb_size_mib=hv.tb_size_mib, debug=hv.debug, boot_timeout=hv.boot_timeout,
            qemu_binary=hv.qemu_binary, extra_cmdline=tuple(hv.kernel_params),
            cgroup=cgroup, qemu_capabilities=tuple(hv.qemu_capabilities),
        )

    def pod_cgroup(self, pod: PodRecord) -> cgroups.PodCgroup | None:
        relative = pod.vm.get("cgroup", "")
        if not relative:
            return None
        return cgroups.PodCgroup(self.config.cgroups.driver, relative, self.config.cgroups.root)

    async def remove_pod_cgroup(self, pod: PodRecord) -> None:
        """The sandbox's cgroup, once its QEMU is gone (after a crash, or twice)."""
        cgroup = self.pod_cgroup(pod)
        if cgroup is not None:
            try:
                await cgroup.remove()
            except OSError as exc:
                log.warning("pod %s: cannot remove its cgroup: %s", pod.id[:12], exc)

    def guest_image_for(self, handler: str) -> GuestImage:
        image_dir = self.config.handler(handler).image
        return GuestImage.load(image_dir) if image_dir else self.guest_image

    # -- the one place a container's end is recorded ------------------------

    def container_exited(self, container: ContainerRecord, exit_code: int, finished_at: int,
                         oom_killed: bool = False, message: str = "") -> None:
        if container.state == "exited":
            return
        if oom_killed:
            reason = "OOMKilled"
        elif exit_code == 0:
            reason = "Completed"
        else:
            reason = "Error"
        self.store.update_container(container, state="exited", exit_code=exit_code,
                                    finished_at=finished_at or time.time_ns(), reason=reason,
                                    message=message)
        self.events.publish(container.id, container.pod_id, "stopped")

    # -- watching a live pod -----------------------------------------------

    def watch(self, live: LivePod) -> None:
        live.tasks.append(asyncio.create_task(self._follow_events(live),
                                              name=f"events-{live.record.id}"))
        live.tasks.append(asyncio.create_task(self._watch_vm(live),
                                              name=f"vm-{live.record.id}"))

    async def _follow_events(self, live: LivePod) -> None:
        """Container exits from the agent, for as long as the VM lives."""
        backoff = 0.5
        while live.vm.qemu.alive:
            try:
                async for event in live.agent.events():
                    backoff = 0.5
                    if event.exec_id or event.kind != pb.Event.EXIT:
                        continue
                    container = self.store.containers.get(event.container_id)
                    # A guest speaks for its own pod only: an id of another
                    # pod's container (or none at all) is a lie or a bug.
                    if container is None or container.pod_id != live.record.id:
                        live.warn_once(f"its agent reported an exit of container "
                                       f"{event.container_id[:64]!r}, which is not in this "
                                       "pod; ignored")
                        continue
                    self.container_exited(container, event.exit.exit_code,
                                          _sane_time(event.exit.finished_at_ns),
                                          event.exit.oom_killed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event stream of pod %s broke (%s); resubscribing",
                            live.record.id[:12], exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            # Exits that happened while the stream was down.
            try:
                await self.reconcile(live)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod %s: cannot reconcile containers: %s", live.record.id[:12], exc)

    async def reconcile(self, live: LivePod) -> None:
        """Bring container records in line with what the agent knows."""
        processes = await live.agent.list_processes()
        known = {p.container_id: p for p in processes if not p.exec_id}
        for container in self.store.pod_containers(live.record.id):
            proc = known.get(container.id)
            if container.state == "exited":
                continue
            if proc is None:
                self.container_exited(container, 255, time.time_ns(),
                                      message="the container is gone from the VM")
            elif proc.state == pb.ProcessInfo.EXITED:
                self.container_exited(container, proc.exit.exit_code,
                                      _sane_time(proc.exit.finished_at_ns), proc.exit.oom_killed)

    async def _watch_vm(self, live: LivePod) -> None:
        await live.vm.qemu.wait_exit()
        await live.vm.qemu.console_drained()
        async with live.lock:
            if live.stopping:
                return
            how = live.vm.qemu.death_message()
            log.error("the VM of pod %s died: %s", live.record.id, how)
            await self.vm_gone(live.record, f"the pod's VM exited: {how}")

    async def vm_gone(self, pod: PodRecord, message: str) -> None:
        """The VM is gone: the pod is NOTREADY and its containers EXITED."""
        live = self.live.pop(pod.id, None)
        for container in self.store.pod_containers(pod.id):
            if container.state != "exited":
                self.container_exited(container, 255, time.time_ns(), message=message)
        if pod.state == "ready":
            self.store.update_pod(pod, state="notready", reason=message)
        if live is not None:
            live.stopping = True
            for pump in live.pumps.values():
                await pump.stop()
            current = asyncio.current_task()
            live.tasks = [t for t in live.tasks if t is not current]
            await live.cancel_tasks()
            await live.vm.destroy()

    # -- logs ---------------------------------------------------------------

    def start_log_pump(self, live: LivePod, container: ContainerRecord) -> None:
        if container.id in live.pumps or not container.log_path:
            return
        offsets = {"stdout": container.stdout_offset, "stderr": container.stderr_offset}

        def save(offsets: dict[str, int]) -> None:
            if container.id in self.store.containers:
                self.store.update_container(container, durable=False,
                                            stdout_offset=offsets["stdout"],
                                            stderr_offset=offsets["stderr"])

        log_directory = live.record.config().log_directory
        relative = os.path.relpath(container.log_path, log_directory) if log_directory else ""
        if not log_directory or relative.startswith(".."):
            log.error("container %s: log path %s is outside its pod's log directory; no log",
                      container.id[:12], container.log_path)
            return
        pump = LogPump(live.agent, container.id, CRILogWriter(log_directory, relative),
                       offsets, save)
        live.pumps[container.id] = pump
        pump.start()


def host_memory_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def _sane_time(ns: int) -> int:
    """A guest's timestamp, or now when it is not a plausible one."""
    now = time.time_ns()
    return ns if 0 < ns <= now + 86_400 * 10**9 else now


def container_key(container: ContainerRecord, pod: PodRecord) -> str:
    return f"{container.name}_{pod.name}_{pod.namespace}_{pod.uid}_{container.attempt}"


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
