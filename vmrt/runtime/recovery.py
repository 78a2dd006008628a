"""Picking up after a restart: pods, their VMs, containers, logs, and leftovers.

QEMU processes outlive vmrtd. A restarted vmrtd reads the records, reattaches
to every VM that is still the one it started (pid and start time match),
asks each agent what happened to its containers meanwhile, and resumes their
logs where they stopped. A pod whose VM is gone becomes NOTREADY with its
containers EXITED. Any sandbox process that no record claims is a leak from
a crash, and is killed.
"""

from __future__ import annotations

import asyncio
import logging

from vmrt.guest.image import GuestImage
from vmrt.runtime.core import Runtime
from vmrt.runtime.records import ContainerState, PodRecord, PodState
from vmrt.runtime.sandbox import PodSandbox
from vmrt.safefs import remove_tree_async

log = logging.getLogger(__name__)


async def recover(rt: Runtime) -> None:
    rt.store.load()
    rt.rebuild_names()
    ready = []
    for pod in list(rt.store.pods.values()):
        if pod.state == PodState.STARTING:
            log.warning("pod %s was half-started when vmrtd stopped; removing it", pod.id[:12])
            await _discard(rt, pod)
        elif pod.state == PodState.READY:
            ready.append(pod)
        else:
            await rt.drivers.clean(pod.id)
    # All at once: each waits mostly on its own guest's agent.
    outcomes = await asyncio.gather(*(_reattach(rt, pod) for pod in ready),
                                    return_exceptions=True)
    for pod, outcome in zip(ready, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.error("pod %s: recovery failed: %r", pod.id[:12], outcome)
    await _kill_leaked_vms(rt)
    await _sweep_container_dirs(rt)


async def _discard(rt: Runtime, pod: PodRecord) -> None:
    for pid, dir_name in rt.drivers.running().items():
        if pod.id.startswith(dir_name):
            await rt.drivers.reclaim(pid)
    await rt.drivers.clean(pod.id)
    await rt.remove_pod_cgroup(pod)
    try:
        await rt.networking.discard(pod.id, pod.network)
    except Exception as exc:
        # The record goes anyway: a pod nobody can see would block its name.
        log.warning("pod %s: cannot undo its network set-up: %s", pod.id[:12], exc)
    rt.store.remove_pod(pod.id)
    rt.pod_names.release(pod.key, pod.id)


async def _reattach(rt: Runtime, pod: PodRecord) -> None:
    vm_state = pod.vm
    try:
        if vm_state is None:
            raise ValueError("the record has no VM")
        settings = vm_state.settings
        image = rt.guest_image_for(pod.runtime_handler)
        if settings.image and str(image.directory) != settings.image:
            image = GuestImage.load(settings.image)
        vm = await rt.drivers.adopt(pod.id, image, settings, vm_state.pid,
                                    vm_state.start_time)
    except Exception as exc:
        log.warning("pod %s: its VM is gone (%s)", pod.id[:12], exc)
        await rt.pod_lost(pod, "the pod's VM exited while vmrtd was not running")
        await rt.drivers.clean(pod.id)
        await rt.remove_pod_cgroup(pod)
        return
    sandbox = PodSandbox(pod, vm, rt)
    rt.sandboxes[pod.id] = sandbox
    try:
        await sandbox.reconcile()
        await sandbox.sweep_unclaimed()
    except Exception as exc:
        # The event stream's own reconcile will try again.
        log.warning("pod %s: cannot reconcile its containers yet: %s", pod.id[:12], exc)
    for container in rt.store.pod_containers(pod.id):
        if container.state != ContainerState.CREATED:
            sandbox.start_log_pump(container)
    sandbox.watch()
    log.info("pod %s reattached to its VM (pid %s)", pod.id[:12], vm_state.pid)


async def _kill_leaked_vms(rt: Runtime) -> None:
    for pid, dir_name in rt.drivers.running().items():
        if any(pod_id.startswith(dir_name) for pod_id in rt.sandboxes):
            continue
        if any(pod_id.startswith(dir_name) for pod_id in rt.store.unreadable):
            log.error("QEMU %d belongs to pod %s, whose record is unreadable; left running",
                      pid, dir_name[:12])
            continue
        log.warning("killing leaked QEMU %d of sandbox %s, which no pod record claims",
                    pid, dir_name[:12])
        await rt.drivers.reclaim(pid)


async def _sweep_container_dirs(rt: Runtime) -> None:
    """Writable layers that no container record claims (a CreateContainer cut
    short by a crash). Left alone while some pod record is unreadable: its
    containers' records were not read either."""
    if rt.store.unreadable:
        log.warning("not sweeping container directories: %d pod record(s) are unreadable",
                    len(rt.store.unreadable))
        return
    directory = rt.root / "containers"
    for entry in sorted(directory.iterdir()) if directory.is_dir() else []:
        if entry.name not in rt.store.containers:
            log.warning("removing %s, which no container record claims", entry)
            await remove_tree_async(entry)


async def detach_all(rt: Runtime) -> None:
    """vmrtd is stopping: save log offsets and let go of every VM, leaving them running."""
    for sandbox in list(rt.sandboxes.values()):
        await sandbox.detach()
    rt.sandboxes.clear()
