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
import contextlib
import logging
import time

from vmrt.guest.image import GuestImage
from vmrt.runtime.core import Runtime
from vmrt.runtime.records import ContainerState, PodRecord, PodState
from vmrt.runtime.sandbox import PodSandbox
from vmrt.safefs import remove_tree_async

log = logging.getLogger(__name__)


async def recover(rt: Runtime) -> None:
    """Everything at once (what tests and tools call); vmrtd serves between the two halves."""
    load(rt)
    await settle(rt)
    await adopt(rt)


def load(rt: Runtime) -> None:
    """Read the records, and mark every READY pod as being adopted: from here
    on CRI can be served, and calls on those pods wait for ``adopt``."""
    rt.store.load()
    rt.rebuild_names()
    rt.drivers.load()
    for pod in rt.store.pods.values():
        if pod.state == PodState.READY:
            rt.adoptions[pod.id] = asyncio.Event()


async def settle(rt: Runtime) -> None:
    """Undo what was half-done: pods that were starting, leftovers of stopped pods."""
    for pod in list(rt.store.pods.values()):
        if pod.state == PodState.STARTING:
            log.warning("pod %s was half-started when vmrtd stopped; removing it", pod.id[:12])
            await _discard(rt, pod)
        elif pod.state != PodState.READY:
            await rt.drivers.clean(pod.id)
            _forget_intents(rt, pod.id)


async def adopt(rt: Runtime) -> None:
    """Reattach to every READY pod's VM, all at once (each waits mostly on its
    own guest's agent), then kill the VMs and sweep the directories no record claims."""
    ready = [rt.store.pods[pod_id] for pod_id in rt.adoptions if pod_id in rt.store.pods]
    started = time.monotonic()
    outcomes = await asyncio.gather(*(_adopt_one(rt, pod) for pod in ready),
                                    return_exceptions=True)
    for pod, outcome in zip(ready, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.error("pod %s: recovery failed: %r", pod.id[:12], outcome)
    if ready:
        log.info("recovered %d pod(s) in %.1f s (%d ready)", len(ready),
                 time.monotonic() - started, len(rt.sandboxes))
    await _kill_leaked_vms(rt)
    await _sweep_container_dirs(rt)


async def _adopt_one(rt: Runtime, pod: PodRecord) -> None:
    try:
        await _reattach(rt, pod)
    finally:
        _forget_intents(rt, pod.id)  # what reattaching did not resolve had no VM to resolve in
        event = rt.adoptions.pop(pod.id, None)
        if event is not None:
            event.set()


def _forget_intents(rt: Runtime, pod_id: str) -> None:
    """Intents of a pod whose VM is gone: nothing of them is left in a guest,
    and ``_sweep_container_dirs`` removes their directories."""
    for container_id in rt.store.pod_intents(pod_id):
        if container_id not in rt.store.containers:
            log.warning("container %s of pod %s was being created when vmrtd stopped; "
                        "removed", container_id[:12], pod_id[:12])
        rt.store.drop_intent(container_id)


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
    await _finish_creates(rt, sandbox)
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


async def _finish_creates(rt: Runtime, sandbox: PodSandbox) -> None:
    """CreateContainers that a crash cut short: a container with a record is
    kept; one without is removed from the guest, the share and the host."""
    for container_id in rt.store.pod_intents(sandbox.id):
        if container_id not in rt.store.containers:
            log.warning("pod %s: container %s was being created when vmrtd stopped; "
                        "removing it", sandbox.id[:12], container_id[:12])
            with contextlib.suppress(Exception):
                await sandbox.agent.remove_container(container_id, force=True)
            sandbox.share.release(container_id)
            await remove_tree_async(rt.container_dir(container_id))
        rt.store.drop_intent(container_id)


async def _kill_leaked_vms(rt: Runtime) -> None:
    # CRI is being served: pods that new RunPodSandbox calls are starting
    # (or have just made ready) have VMs and records of their own.
    claimed = set(rt.sandboxes) | {pod.id for pod in rt.store.pods.values()
                                   if pod.state in (PodState.STARTING, PodState.READY)}
    for pid, dir_name in rt.drivers.running().items():
        if any(pod_id.startswith(dir_name) for pod_id in claimed):
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
        # An intent is a CreateContainer under way (CRI is being served).
        if entry.name not in rt.store.containers and entry.name not in rt.store.intents:
            log.warning("removing %s, which no container record claims", entry)
            await remove_tree_async(entry)


async def detach_all(rt: Runtime) -> None:
    """vmrtd is stopping: save log offsets and let go of every VM, leaving them running."""
    for sandbox in list(rt.sandboxes.values()):
        await sandbox.detach()
    rt.sandboxes.clear()
    await rt.drivers.close()
