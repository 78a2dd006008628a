"""How big a pod's VM is (the handler's VM grown by the pod's resources), and
whether the node can hold it."""

from __future__ import annotations

import math
import os

from cri_api.v1 import api_pb2 as api

from vmrt.config import Config
from vmrt.errors import InvalidArgumentError, ResourceExhaustedError
from vmrt.hypervisor.accel import choose_accel
from vmrt.sandbox import cgroups
from vmrt.sandbox.settings import VMConfig

MIB = 1024 * 1024


def meminfo_mib(key: str) -> int:
    """A /proc/meminfo figure ("MemTotal", "MemAvailable") in MiB; 0 if absent."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) // 1024
    return 0


def host_memory_mib() -> int:
    return meminfo_mib("MemTotal")


def size_class(mib: int) -> int:
    """The memory a pod adds to its VM, rounded up to a size class (a power
    of two, 64 MiB at least) when pods start from templates: a template
    serves one VM size, so sizes must repeat for sized pods to start fast.
    Kubernetes' usual limits (128Mi, 512Mi, 1Gi, ...) are classes already
    (a pod of several containers adds their sum, which is one less often).
    The rounding is guest RAM the containers cannot use (each has its own
    limit in the guest); untouched, it costs the host nothing, but
    admission counts it. A rounded VM over the maximum gets the exact size."""
    return max(64, 1 << (max(mib, 1) - 1).bit_length())


def vm_config(config: Config, handler: str, pod_config: api.PodSandboxConfig, pod_id: str,
              image_dir: str) -> VMConfig:
    """The handler's VM plus the pod's declared resources, in the pod's cgroup
    (when ``pod_id`` is given). ``linux.overhead`` is what the pod costs beyond
    its containers (the RuntimeClass overhead: QEMU, the guest kernel, the
    agent), so it is not given to the guest: it is room in the pod's cgroup
    for the VM around the containers."""
    hv = config.handler(handler)
    linux = pod_config.linux
    memory = hv.memory_mib
    cpus = float(hv.vcpus)
    resources = linux.resources
    limit = hv.max_memory_mib or host_memory_mib()
    if resources.memory_limit_in_bytes > 0:
        added = math.ceil(resources.memory_limit_in_bytes / MIB)
        memory += added
        rounded = hv.memory_mib + size_class(added)
        if hv.template and rounded <= limit:
            memory = rounded  # else the exact size: a cold boot, but it fits
    if resources.cpu_quota > 0 and resources.cpu_period > 0:
        cpus += resources.cpu_quota / resources.cpu_period
    if memory > limit:
        raise InvalidArgumentError(
            f"config.linux.resources.memory_limit_in_bytes "
            f"({linux.resources.memory_limit_in_bytes}): the pod needs a VM of {memory} MiB "
            f"({hv.memory_mib} MiB for handler {handler or 'default'!r} plus the pod's), "
            f"more than the maximum of {limit} MiB (hypervisor.max_memory_mib"
            f"{'' if hv.max_memory_mib else ', by default the host memory'})")
    vcpus = max(1, min(math.ceil(cpus), os.cpu_count() or 1, 255))
    cgroup = None
    if pod_id:
        cgroup = cgroups.for_pod(config.cgroups.driver, linux.cgroup_parent, pod_id,
                                 config.cgroups.root, config.cgroups.default_parent)
    return VMConfig(
        memory_mib=memory, vcpus=vcpus, machine=hv.machine,
        accel=choose_accel(hv.accel).name, transport=hv.transport,
        tb_size_mib=hv.tb_size_mib, debug=hv.debug, boot_timeout=hv.boot_timeout,
        qemu_binary=hv.qemu_binary, extra_cmdline=tuple(hv.kernel_params),
        cgroup=cgroup, qemu_capabilities=tuple(hv.qemu_capabilities), image=image_dir,
        agent_keepalive_s=hv.agent_keepalive_s, agent_ping_timeout_s=hv.agent_ping_timeout_s,
        watchdog_probe_timeout_s=hv.watchdog_probe_timeout_s,
        watchdog_probes=hv.watchdog_probes, template=hv.template,
    )


def admit(config: Config, vm: VMConfig, committed_mib: int) -> None:
    """Refuse a VM the node cannot hold at its full size (RESOURCE_EXHAUSTED).

    Guest pages shared copy-on-write (templates) or not yet touched cost
    nothing now, but a guest may write them all later; so the rule counts
    full sizes: this vmrtd's VMs and templates (``committed_mib``) plus the new one must
    fit in MemTotal, and the new one in MemAvailable, each times
    ``hypervisor.memory_overcommit`` (1.0: no overcommit).
    """
    ratio = config.hypervisor.memory_overcommit
    total = meminfo_mib("MemTotal")
    available = meminfo_mib("MemAvailable")
    where = f"(hypervisor.memory_overcommit = {ratio:g})"
    if committed_mib + vm.memory_mib > total * ratio:
        raise ResourceExhaustedError(
            f"the node cannot hold another VM of {vm.memory_mib} MiB: this vmrtd's VMs "
            f"already take {committed_mib} MiB of the node's {total} MiB {where}; "
            "VM templates count at their full size")
    if vm.memory_mib > available * ratio:
        raise ResourceExhaustedError(
            f"the node cannot hold another VM of {vm.memory_mib} MiB: only {available} MiB "
            f"of memory is available {where}")
