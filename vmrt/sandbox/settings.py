"""A sandbox VM's settings: the one description of the VM a pod runs in.

``Runtime.vm_config`` computes it from the handler's settings and the pod's
resources; the pod record keeps it whole, so a restarted vmrtd adopts the VM
with exactly what it was started with. ``SandboxVM`` turns it into the
hypervisor's ``VMSpec`` in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vmrt.hypervisor.confine import DEFAULT_CAPABILITIES
from vmrt.sandbox.cgroups import PodCgroup

DEFAULT_BOOT_TIMEOUT = 120.0


@dataclass(frozen=True)
class VMConfig:
    memory_mib: int = 256
    vcpus: int = 1
    machine: str = "microvm"
    accel: str = "tcg"
    transport: str = "serial"
    tb_size_mib: int = 128
    debug: bool = False
    extra_cmdline: tuple[str, ...] = ()
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    qemu_binary: str = "qemu-system-x86_64"
    # The pod's cgroup, which QEMU joins; None: QEMU stays in vmrtd's.
    cgroup: PodCgroup | None = None
    qemu_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    # The guest image directory; "" for a VM built from an image in hand.
    image: str = ""
    # vmrt.agentclient's keepalive PINGs; 0: none.
    agent_keepalive_s: float = 10.0
    # The hang watchdog (vmrt.runtime.sandbox): a keepalive PING unanswered
    # this long ends the agent connection; then Health probes of
    # watchdog_probe_timeout_s, and watchdog_probes missed in a row while
    # QEMU runs make the guest dead.
    agent_ping_timeout_s: float = 20.0
    watchdog_probe_timeout_s: float = 10.0
    watchdog_probes: int = 3
    # Start from a template when one is ready (vmrt.sandbox.template).
    template: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown VM settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        for name in ("extra_cmdline", "qemu_capabilities"):
            if name in values:
                values[name] = tuple(values[name])
        if values.get("cgroup") is not None:
            values["cgroup"] = PodCgroup(**values["cgroup"])
        return cls(**values)
