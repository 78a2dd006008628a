"""Picking up after a restart: pods, their VMs, containers, logs, and leftovers.

QEMU processes outlive vmrtd. A restarted vmrtd reads the records, reattaches
to every VM that is still the one it started (pid and start time match),
asks each agent what happened to its containers meanwhile, and resumes their
logs where they stopped. A pod whose VM is gone becomes NOTREADY with its
containers EXITED. Any QEMU running for a sandbox directory that no record
claims is a leak from a crash, and is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from vmrt.guest.image import GuestImage
from vmrt.network.pod import PodNetworkState
from vmrt.runtime.core import LivePod, Runtime
from vmrt.runtime.records import PodRecord
from vmrt.sandbox import cgroups
from vmrt.sandbox.vm import SandboxVM, VMConfig, remove_sandbox_dir, sandbox_dir

log = logging.getLogger(__name__)


def qemu_processes_under(directory: Path) -> dict[int, str]:
    """pid -> sandbox id of every QEMU whose command line names a sandbox under ``directory``."""
    marker = f"{directory}/"
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in argv[0]:
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            index = text.find(marker)
            if index >= 0:
                found[int(entry)] = text[index + len(marker):].split("/")[0]
                break
    return found


async def recover(rt: Runtime) -> None:
    rt.store.load()
    rt.rebuild_reservations()
    for pod in list(rt.store.pods.values()):
        if pod.state == "starting":
            log.warning("pod %s was half-started when vmrtd stopped; removing it", pod.id[:12])
            await _discard(rt, pod)
        elif pod.state == "ready":
            await _reattach(rt, pod)
        else:
            await remove_sandbox_dir(sandbox_dir(rt.state, pod.id))
    await _kill_leaked_vms(rt)


async def _discard(rt: Runtime, pod: PodRecord) -> None:
    for pid, dir_name in qemu_processes_under(rt.state / "sandboxes").items():
        if pod.id.startswith(dir_name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    await remove_sandbox_dir(sandbox_dir(rt.state, pod.id))
    await rt.remove_pod_cgroup(pod)
    try:
        await rt.networking.discard(pod.id, PodNetworkState.of(pod.network))
    except Exception as exc:
        # The record goes anyway: a pod nobody can see would block its name.
        log.warning("pod %s: cannot undo its network set-up: %s", pod.id[:12], exc)
    rt.store.remove_pod(pod.id)
    rt.release_pod_name(pod.key, pod.id)


async def _reattach(rt: Runtime, pod: PodRecord) -> None:
    vm_info = pod.vm
    cgroup = rt.pod_cgroup(pod)
    config = VMConfig(memory_mib=vm_info["memory_mib"], vcpus=vm_info["vcpus"],
                      machine=vm_info["machine"], accel=vm_info["accel"],
                      transport=vm_info["transport"], tb_size_mib=vm_info["tb_size_mib"],
                      cgroup=cgroup)
    try:
        image = rt.guest_image_for(pod.runtime_handler)
        if str(image.directory) != vm_info.get("image"):
            image = GuestImage.load(vm_info["image"])
        vm = await SandboxVM.adopt(pod.id, rt.state, image, config, vm_info["pid"],
                                   vm_info["start_time"])
    except Exception as exc:
        log.warning("pod %s: its VM is gone (%s)", pod.id[:12], exc)
        await rt.vm_gone(pod, "the pod's VM exited while vmrtd was not running")
        await remove_sandbox_dir(sandbox_dir(rt.state, pod.id))
        await rt.remove_pod_cgroup(pod)
        return
    live = LivePod(pod, vm)
    rt.live[pod.id] = live
    try:
        await rt.reconcile(live)
    except Exception as exc:
        # The event stream's own reconcile will try again.
        log.warning("pod %s: cannot reconcile its containers yet: %s", pod.id[:12], exc)
    for container in rt.store.pod_containers(pod.id):
        if container.state != "created":
            rt.start_log_pump(live, container)
    rt.watch(live)
    log.info("pod %s reattached to its VM (pid %s)", pod.id[:12], vm_info["pid"])


async def _kill_leaked_vms(rt: Runtime) -> None:
    for pid, dir_name in qemu_processes_under(rt.state / "sandboxes").items():
        if any(pod_id.startswith(dir_name) for pod_id in rt.live):
            continue
        log.warning("killing leaked QEMU %d of sandbox %s, which no pod record claims",
                    pid, dir_name[:12])
        cgroup = cgroups.of_process(pid, rt.config.cgroups.root)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if cgroup is not None:
            await cgroup.remove()


async def detach_all(rt: Runtime) -> None:
    """vmrtd is stopping: save log offsets and let go of every VM, leaving them running."""
    for live in list(rt.live.values()):
        live.stopping = True
        for pump in live.pumps.values():
            await pump.stop()
        await live.cancel_tasks()
        await live.vm.detach()
    rt.live.clear()

