"""The one description of a sandbox VM for the hypervisor: its VMSpec and its
jail, for a pod's VM, a template VM and a template's clone alike (a clone's
argv must match its template's but for the backends)."""

from __future__ import annotations

from pathlib import Path

from vmrt.guest.image import GuestImage
from vmrt.hypervisor.accel import host_tsc_khz
from vmrt.hypervisor.confine import Jail
from vmrt.hypervisor.spec import GuestMemory, NetSpec, Share, VMSpec
from vmrt.sandbox.settings import VMConfig

SHARE_TAG = "vmrt-share"


def vm_spec(image: GuestImage, config: VMConfig, share: Path, net: NetSpec | None,
            memory: GuestMemory | None = None, incoming: bool = False) -> VMSpec:
    return VMSpec(
        kernel=image.kernel,
        initrd=image.initrd,
        memory_mib=config.memory_mib,
        vcpus=config.vcpus,
        machine=config.machine,
        accel=config.accel,
        tb_size_mib=config.tb_size_mib,
        agent_transport=config.transport,
        shares=(Share(SHARE_TAG, share),),
        net=net,
        tsc_khz=host_tsc_khz(),
        debug=config.debug,
        extra_cmdline=config.extra_cmdline,
        memory=memory,
        incoming=incoming,
        # Handlers without templates: their pods' guest RAM is each QEMU's
        # own (a template handler's cold fallback keeps the template's argv).
        free_page_reporting=memory is None and not config.template,
    )


def vm_jail(directory: Path, image: GuestImage, share: Path, config: VMConfig) -> Jail:
    """QEMU sees the guest image, this VM's share and nothing else of the host."""
    devices = []
    if config.accel == "kvm":
        devices.append("/dev/kvm")
    if config.transport == "vsock":
        devices.append("/dev/vhost-vsock")
    return Jail(root=directory / "root",
                readonly=(image.kernel, image.initrd),
                writable=(share,),
                cgroup_procs=tuple(config.cgroup.procs_files()) if config.cgroup else (),
                capabilities=config.qemu_capabilities,
                devices=tuple(devices))
