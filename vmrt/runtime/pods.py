"""Pod sandboxes: run (with rollback), stop, remove, status, list."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cri_api.v1 import api_pb2 as api

from vmrt import crashpoint
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.aio import push_cleanup, settle
from vmrt.errors import FailedPreconditionError, NotFoundError
from vmrt.guest.image import GuestImage
from vmrt.network.pod import PodNetworkState, PodNIC, PreparedNetwork
from vmrt.runtime import ocispec, sizing
from vmrt.runtime.core import Runtime, container_key
from vmrt.runtime.records import ContainerState, PodRecord, PodState, VMState
from vmrt.runtime.sandbox import PodSandbox
from vmrt.safefs import remove_tree_async
from vmrt.sandbox.settings import VMConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodFilter:
    id: str = ""
    state: str | None = None  # "ready" | "notready"
    labels: tuple[tuple[str, str], ...] = ()


class PodService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._teardowns: set[asyncio.Future[bool]] = set()

    # -- run ----------------------------------------------------------------

    async def run(self, config: api.PodSandboxConfig, handler: str) -> str:
        """``config`` has passed ``vmrt.cri.validate.pod_config``."""
        meta = config.metadata
        pod_id = secrets.token_hex(32)
        image = self.rt.guest_image_for(handler)
        vm_config = self.rt.vm_config(handler, config, pod_id)
        sizing.admit(self.rt.config, vm_config, self.rt.committed_memory_mib())
        self.rt.tenants.admit(self.rt.store.pods.values(), meta.namespace, vm_config.memory_mib)
        # The VM's settings are in the record before the VM exists: a
        # vmrtd that dies while it boots leaves what recovery needs to undo it.
        record = PodRecord.new(pod_id, config, handler, time.time_ns(),
                               vm=VMState(settings=vm_config))
        self.rt.pod_names.reserve(record.key, pod_id)
        try:
            sandbox = await self._start(record, config, vm_config, image)
        except BaseException:
            if pod_id not in self.rt.store.pods:  # kept when the rollback was incomplete
                self.rt.pod_names.release(record.key, pod_id)
            raise
        self.rt.sandboxes[pod_id] = sandbox
        sandbox.watch()
        log.info("pod %s (%s/%s) is ready", pod_id[:12], meta.namespace, meta.name)
        return pod_id

    async def _start(self, record: PodRecord, config: api.PodSandboxConfig,
                     vm_config: VMConfig, image: GuestImage) -> PodSandbox:
        """Network, VM, guest set-up; every step undone if a later one fails.

        If undoing fails too (a CNI DEL that errors), the record stays,
        NOTREADY with the reason, as containerd keeps such a sandbox: it
        holds what StopPodSandbox / RemovePodSandbox need to try again.
        """
        store = self.rt.store
        # No await since the admission: two concurrent runs cannot both fit in one gap.
        store.add_pod(record)
        crashpoint.reached("run", "recorded")
        failed: BaseException | None = None
        try:
            async with contextlib.AsyncExitStack() as undo:
                try:
                    sandbox, network = await self._steps(record, config, vm_config, image, undo)
                except BaseException as exc:
                    failed = exc
                    raise
                undo.pop_all()
        except BaseException as exc:
            if failed is None or exc is failed:
                store.remove_pod(record.id)  # everything was undone
                raise
            log.error("pod %s: RunPodSandbox failed (%s) and undoing it failed too (%s); "
                      "kept NOTREADY for StopPodSandbox/RemovePodSandbox to retry",
                      record.id[:12], failed, exc)
            reason = f"RunPodSandbox failed and could not undo everything: {exc}"
            store.update_pod(record, lambda s: dataclasses.replace(
                s, state=PodState.NOTREADY, reason=reason))
            raise failed from exc
        if network.nic.tap_fd >= 0:
            os.close(network.nic.tap_fd)  # QEMU has its own copy
        # The sandbox's own events (its id as the container id), as containerd's.
        self.rt.events.publish(record.id, record.id, "created")
        self.rt.events.publish(record.id, record.id, "started")
        return sandbox

    async def _steps(self, record: PodRecord, config: api.PodSandboxConfig,
                     vm_config: VMConfig, image: GuestImage,
                     undo: contextlib.AsyncExitStack) -> tuple[PodSandbox, PreparedNetwork]:
        store = self.rt.store

        def remember(state: PodNetworkState) -> None:
            store.update_pod(record, lambda s: dataclasses.replace(s, network=state))

        began = time.monotonic()
        nic = await self.rt.networking.create_nic(
            record.id, config, undo, remember,
            self.rt.tenants.network_of(config.metadata.namespace))
        vm = self.rt.drivers.create(record.id, image, vm_config, nic.spec)
        launching = time.monotonic()
        # CNI ADD runs while the VM launches (and restores, or boots): the
        # VM needs only its tap; the guest is given the veth's MAC and
        # addresses with SetupSandbox, which waits for them.
        connected = asyncio.ensure_future(self._connect(nic, undo, remember))
        networked = launching

        async def guest_network() -> pb.ConfigureNetworkRequest:
            nonlocal networked
            network = await asyncio.shield(connected)
            networked = time.monotonic()
            iface = network.interface
            return pb.ConfigureNetworkRequest(
                interfaces=[pb.Interface(mac=iface.mac, name=iface.name, mtu=iface.mtu,
                                         addresses=iface.addresses)],
                routes=[pb.Route(destination=r.destination, gateway=r.gateway,
                                 interface=r.interface) for r in network.routes],
                pod_ips=network.state.ips)

        request = asyncio.ensure_future(guest_network())
        try:
            await vm.start(
                hostname=ocispec.pod_hostname(config),
                dns=pb.DnsConfig(servers=config.dns_config.servers,
                                 searches=config.dns_config.searches,
                                 options=config.dns_config.options),
                sysctls=sorted(config.linux.sysctls.items()),
                # With the set-up, in one round trip.
                network=request,
            )
        except BaseException:
            # CNI ADD is let finish, so that its undo (DEL) is on the stack
            # when the caller unwinds it; cancelling a plugin half-way would
            # leave what it did unknown.
            request.cancel()
            for task in (connected, request):
                await settle(task)  # a second cancellation must not cut the wait short
                if not task.cancelled():
                    task.exception()  # retrieved: what vm.start raised is the error
            raise
        network = connected.result()
        push_cleanup(undo, vm.destroy)
        crashpoint.reached("run", "vm-started")
        sandbox = PodSandbox(record, vm, self.rt)
        crashpoint.reached("run", "configured")
        # Where the start's time went (bench/density.py reads this line).
        steps = {"nic": launching - began, "network": networked - began, **vm.timings,
                 "configured": time.monotonic() - launching}
        log.info("pod %s started%s in %.2f s: %s", record.id[:12],
                 " from a template" if vm.from_template else "", time.monotonic() - began,
                 ", ".join(f"{k} {v:.3f}" for k, v in steps.items()))
        self.rt.metrics.observe_start(time.monotonic() - began, bool(vm.from_template))
        running = VMState(settings=vm_config, pid=vm.pid, start_time=vm.start_time,
                          boot_seconds=round(vm.timings.get("setup", 0.0), 3),
                          template=vm.from_template)
        store.update_pod(record, lambda s: dataclasses.replace(
            s, state=PodState.READY, vm=running))
        crashpoint.reached("run", "ready")
        return sandbox, network

    async def _connect(self, nic: PodNIC,
                       undo: contextlib.AsyncExitStack,
                       remember: Callable[[PodNetworkState], None]) -> PreparedNetwork:
        network = await self.rt.networking.connect(nic, undo)
        remember(network.state)
        crashpoint.reached("run", "network")
        return network

    # -- stop and remove ----------------------------------------------------

    async def stop(self, pod_id: str) -> None:
        """Idempotent. The teardown runs in a task of its own: a caller whose
        deadline passes gets its answer, and the teardown still finishes (a
        later stop waits for it, then sweeps)."""
        pod = self.rt.pod(pod_id)
        sandbox = self.rt.sandboxes.get(pod.id)
        if sandbox is not None:
            task = asyncio.ensure_future(self._stop_sandbox(pod, sandbox))
            self._teardowns.add(task)
            task.add_done_callback(self._teardowns.discard)
            if await asyncio.shield(task):
                return
        # Already stopped, or its VM died: make sure nothing is left.
        await self.rt.drivers.clean(pod.id)
        await self.rt.remove_pod_cgroup(pod)
        await self._teardown_network(pod)

    async def _stop_sandbox(self, pod: PodRecord, sandbox: PodSandbox) -> bool:
        """Stop the pod's containers and VM; False if another stop did it first."""
        async with sandbox.lock:
            if self.rt.sandboxes.get(pod.id) is not sandbox:
                return False
            sandbox.begin_stop()
            running = [c for c in self.rt.store.pod_containers(pod.id)
                       if c.state in (ContainerState.CREATED, ContainerState.RUNNING)]
            with contextlib.suppress(Exception):
                await sandbox.kill_containers(running)
            crashpoint.reached("stop", "killed")
            await self.rt.pod_lost(pod, "the pod sandbox was stopped")
            crashpoint.reached("stop", "vm-gone")
            await self._teardown_network(pod)
            crashpoint.reached("stop", "network-down")
            return True

    async def _teardown_network(self, pod: PodRecord) -> None:
        state = pod.network
        if state.mode == "none":
            return
        await self.rt.networking.teardown(state)
        self.rt.store.update_pod(pod, lambda s: dataclasses.replace(
            s, network=PodNetworkState(ips=state.ips)))

    async def remove(self, pod_id: str) -> None:
        try:
            pod = self.rt.pod(pod_id)
        except NotFoundError:
            return
        await self.stop(pod.id)
        for container in self.rt.store.pod_containers(pod.id):
            await remove_tree_async(self.rt.container_dir(container.id))
            self.rt.events.publish(container.id, pod.id, "deleted")
        for container in self.rt.store.pod_containers(pod.id):
            self.rt.container_names.release(container_key(container, pod), container.id)
        self.rt.events.publish(pod.id, pod.id, "deleted")  # with its last status
        self.rt.store.remove_pod(pod.id)
        self.rt.pod_names.release(pod.key, pod.id)

    # -- queries ------------------------------------------------------------

    async def usage(self, pod: PodRecord) -> pb.ContainerStatsResponse | None:
        """The VM's resource use as its agent sees it; None when the pod is not running."""
        sandbox = self.rt.sandboxes.get(pod.id)
        if sandbox is None:
            return None
        return await sandbox.usage("")

    async def resize(self, pod_id: str, resources: api.LinuxContainerResources) -> None:
        """UpdatePodSandboxResources. A microvm (and vmrt's q35 alike, booted
        without hot-pluggable memory or CPUs) cannot grow past the size it
        booted with, but within it the VM moves: the balloon gives guest RAM
        back to the host and takes it again, vCPUs go offline and online. A
        resize past the boot size is refused with the sizes and the reason."""
        pod = self.rt.pod(pod_id)
        sandbox = self.rt.ready_sandbox(pod)
        have = pod.vm.settings if pod.vm else None
        if have is None:
            raise FailedPreconditionError(f"pod {pod.id} has no running VM")
        config = pod.config()
        config.linux.resources.CopyFrom(resources)
        wanted = self.rt.vm_config(pod.meta.runtime_handler, config)
        if wanted.memory_mib > have.memory_mib or wanted.vcpus > have.vcpus:
            raise FailedPreconditionError(
                f"pod {pod.id[:13]}'s VM booted with {have.memory_mib} MiB and {have.vcpus} "
                f"vCPU(s): its {have.machine} machine has no memory or CPU hot-plug, so it "
                f"can shrink and grow back within that but cannot become "
                f"{wanted.memory_mib} MiB and {wanted.vcpus} vCPU(s) in place "
                "(a new pod with the new resources can)")
        memory, vcpus = await sandbox.vm.resize(wanted.memory_mib, wanted.vcpus)
        log.info("pod %s resized to %d MiB (asked %d) and %d vCPU(s)", pod.id[:13], memory,
                 wanted.memory_mib, vcpus)
        if vcpus != wanted.vcpus or abs(memory - wanted.memory_mib) > 1:
            raise FailedPreconditionError(
                f"pod {pod.id[:13]}'s guest holds {memory} MiB and {vcpus} vCPU(s) after "
                f"being asked for {wanted.memory_mib} MiB and {wanted.vcpus}: its balloon "
                "driver has not given the memory back (in use, or refused)")

    def list(self, flt: PodFilter) -> list[PodRecord]:
        pods = []
        for pod in self.rt.store.pods.values():
            if pod.state == PodState.STARTING:
                continue
            if flt.id and not pod.id.startswith(flt.id):
                continue
            if flt.state and cri_state(pod) != flt.state:
                continue
            labels = pod.config().labels
            if any(labels.get(k) != v for k, v in flt.labels):
                continue
            pods.append(pod)
        return pods


def cri_state(pod: PodRecord) -> str:
    return "ready" if pod.state == PodState.READY else "notready"
