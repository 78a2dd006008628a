"""How big a pod's VM is: the handler's VM grown by the pod's resources and overhead."""

from __future__ import annotations

import math
import os

from cri_api.v1 import api_pb2 as api

from vmrt.config import Config
from vmrt.errors import InvalidArgumentError
from vmrt.hypervisor.accel import choose_accel
from vmrt.sandbox import cgroups
from vmrt.sandbox.settings import VMConfig

MIB = 1024 * 1024


def host_memory_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def vm_config(config: Config, handler: str, pod_config: api.PodSandboxConfig, pod_id: str,
              image_dir: str) -> VMConfig:
    """The handler's VM plus the pod's declared resources and overhead, in the pod's
    cgroup (when ``pod_id`` is given)."""
    hv = config.handler(handler)
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
        cgroup = cgroups.for_pod(config.cgroups.driver, linux.cgroup_parent, pod_id,
                                 config.cgroups.root, config.cgroups.default_parent)
    return VMConfig(
        memory_mib=memory, vcpus=vcpus, machine=hv.machine,
        accel=choose_accel(hv.accel).name, transport=hv.transport,
        tb_size_mib=hv.tb_size_mib, debug=hv.debug, boot_timeout=hv.boot_timeout,
        qemu_binary=hv.qemu_binary, extra_cmdline=tuple(hv.kernel_params),
        cgroup=cgroup, qemu_capabilities=tuple(hv.qemu_capabilities), image=image_dir,
        agent_keepalive_s=hv.agent_keepalive_s,
    )
