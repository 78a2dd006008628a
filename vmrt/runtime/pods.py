"""Pod sandboxes: run (with rollback), stop, remove, status, list."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass

from cri_api.v1 import api_pb2 as api

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.aio import push_cleanup
from vmrt.errors import NotFoundError
from vmrt.guest.image import GuestImage
from vmrt.network.pod import PodNetworkState
from vmrt.runtime import ocispec
from vmrt.runtime.core import LivePod, Runtime, container_key
from vmrt.runtime.records import PodRecord
from vmrt.safefs import remove_tree_async
from vmrt.sandbox.persist import write_json
from vmrt.sandbox.vm import SandboxVM, VMConfig, remove_sandbox_dir, sandbox_dir

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class PodFilter:
    id: str = ""
    state: str | None = None  # "ready" | "notready"
    labels: tuple[tuple[str, str], ...] = ()


class PodService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # -- run ----------------------------------------------------------------

    async def run(self, config: api.PodSandboxConfig, handler: str) -> str:
        """``config`` has passed ``vmrt.cri.validate.pod_config``."""
        meta = config.metadata
        pod_id = secrets.token_hex(32)
        vm_config = self.rt.vm_config(handler, config, pod_id)
        image = self.rt.guest_image_for(handler)
        record = PodRecord.new(pod_id, config, handler, time.time_ns())
        self.rt.reserve_pod_name(record.key, pod_id)
        try:
            record.vm = {"memory_mib": vm_config.memory_mib, "vcpus": vm_config.vcpus,
                         "machine": vm_config.machine, "accel": vm_config.accel,
                         "transport": vm_config.transport, "tb_size_mib": vm_config.tb_size_mib,
                         "image": str(image.directory),
                         "cgroup": vm_config.cgroup.relative if vm_config.cgroup else ""}
            vm = await self._start(record, config, vm_config, image)
        except BaseException:
            self.rt.release_pod_name(record.key, pod_id)
            raise
        live = LivePod(record, vm)
        self.rt.live[pod_id] = live
        self.rt.watch(live)
        log.info("pod %s (%s/%s) is ready", pod_id[:12], meta.namespace, meta.name)
        return pod_id

    async def _start(self, record: PodRecord, config: api.PodSandboxConfig,
                     vm_config: VMConfig, image: GuestImage) -> SandboxVM:
        """Network, VM, guest set-up; every step undone if a later one fails."""
        async with contextlib.AsyncExitStack() as undo:
            self.rt.store.add_pod(record)
            undo.callback(self.rt.store.remove_pod, record.id)
            def remember(state: PodNetworkState) -> None:
                record.network = asdict(state)
                self.rt.store.update_pod(record, network=record.network)

            network = await self.rt.networking.setup(record.id, config, undo, remember)
            remember(network.state)
            vm = SandboxVM(record.id, self.rt.state, image, vm_config, net=network.nic)
            await vm.start(
                hostname=ocispec.pod_hostname(config),
                dns=pb.DnsConfig(servers=config.dns_config.servers,
                                 searches=config.dns_config.searches,
                                 options=config.dns_config.options),
                sysctls=sorted(config.linux.sysctls.items()),
            )
            push_cleanup(undo, vm.destroy)
            iface = network.interface
            assert vm.agent is not None
            await vm.agent.configure_network(pb.ConfigureNetworkRequest(
                interfaces=[pb.Interface(mac=iface.mac, name=iface.name, mtu=iface.mtu,
                                         addresses=iface.addresses)],
                routes=[pb.Route(destination=r.destination, gateway=r.gateway,
                                 interface=r.interface) for r in network.routes],
                pod_ips=network.state.ips))
            record.vm.update(pid=vm.qemu.pid, start_time=vm.qemu.start_time,
                             boot_seconds=round(vm.timings.get("setup", 0.0), 3))
            self._write_runtime_state(record)
            self.rt.store.update_pod(record, state="ready", vm=record.vm)
            undo.pop_all()
        if network.nic.tap_fd >= 0:
            os.close(network.nic.tap_fd)  # QEMU has its own copy
        return vm

    def _write_runtime_state(self, record: PodRecord) -> None:
        """state.json in the sandbox's runtime dir: what recovery needs to find the VM."""
        write_json(sandbox_dir(self.rt.state, record.id) / "state.json",
                   {"pod_id": record.id, "qemu_pid": record.vm["pid"],
                    "qemu_start_time": record.vm["start_time"]})

    # -- stop and remove ----------------------------------------------------

    async def stop(self, pod_id: str) -> None:
        pod = self.rt.pod(pod_id)
        live = self.rt.live.get(pod.id)
        if live is None:
            # Already stopped, or its VM died: make sure nothing is left.
            await remove_sandbox_dir(sandbox_dir(self.rt.state, pod.id))
            await self.rt.remove_pod_cgroup(pod)
            await self._teardown_network(pod)
            return
        async with live.lock:
            if live.stopping:
                return
            live.stopping = True
            with contextlib.suppress(Exception):
                await self._stop_containers(live)
            await self.rt.vm_gone(pod, "the pod sandbox was stopped")
            await self._teardown_network(pod)

    async def _teardown_network(self, pod: PodRecord) -> None:
        state = PodNetworkState.of(pod.network)
        if state.mode == "none":
            return
        await self.rt.networking.teardown(state)
        self.rt.store.update_pod(pod, network=asdict(PodNetworkState(ips=state.ips)))

    async def _stop_containers(self, live: LivePod) -> None:
        running = [c for c in self.rt.store.pod_containers(live.record.id)
                   if c.state in ("created", "running")]
        for container in running:
            with contextlib.suppress(Exception):
                await live.agent.signal_process(container.id, 9, all_processes=True,
                                                timeout=STOP_TIMEOUT)
        for container in running:
            with contextlib.suppress(Exception):
                status = await live.agent.wait_process(container.id, timeout=STOP_TIMEOUT)
                self.rt.container_exited(container, status.exit_code, status.finished_at_ns,
                                         status.oom_killed)
        for container in running:
            pump = live.pumps.get(container.id)
            if pump is not None:
                with contextlib.suppress(Exception):
                    await pump.wait()

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
            self.rt.release_container_name(container_key(container, pod), container.id)
        self.rt.store.remove_pod(pod.id)
        self.rt.release_pod_name(pod.key, pod.id)

    # -- queries ------------------------------------------------------------

    def list(self, flt: PodFilter) -> list[PodRecord]:
        pods = []
        for pod in self.rt.store.pods.values():
            if pod.state == "starting":
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
    return "ready" if pod.state == "ready" else "notready"
