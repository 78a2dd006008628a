"""A VM's description, and the one place that turns it into a QEMU argv."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vmrt.agent.modules import MODULE_GROUPS
from vmrt.errors import VmrtError

MACHINES = ("microvm", "pc", "q35")
TRANSPORTS = ("serial", "vsock")
AGENT_PORT_NAME = "vmrt.agent"
MIN_MEMORY_MIB = 64

# Settled by measurement (docs/design-notes.md): quiet console, no legacy
# keyboard probing, one UART, trust the TSC and the CPU's RNG.
BASE_CMDLINE = (
    "console=ttyS0 quiet tsc=reliable no_timer_check i8042.noaux i8042.nokbd "
    "i8042.nopnp 8250.nr_uarts=1 random.trust_cpu=on cryptomgr.notests panic=-1"
)


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,31}")


class SpecError(VmrtError):
    pass


def vm_settings_problem(memory_mib: int, vcpus: int, machine: str, transport: str) -> str:
    """What is wrong with these VM settings, or "" (shared with config validation)."""
    if machine not in MACHINES:
        return f"machine: {machine!r} is not one of {', '.join(MACHINES)}"
    if transport not in TRANSPORTS:
        return f"transport: {transport!r} is not one of {', '.join(TRANSPORTS)}"
    if memory_mib < MIN_MEMORY_MIB:
        return f"memory_mib: {memory_mib} is below the minimum of {MIN_MEMORY_MIB}"
    if not 1 <= vcpus <= 255:
        return f"vcpus: {vcpus} is not between 1 and 255"
    return ""


@dataclass(frozen=True)
class Share:
    tag: str
    path: Path
    readonly: bool = False


@dataclass(frozen=True)
class NetSpec:
    """The VM's one NIC: a tap, by fd, in the pod's netns; or, for a template
    VM, a hub port that leads nowhere (the backend is not part of a VM's
    saved state: its clones get their taps)."""

    mode: str  # tap or hub
    mac: str
    tap_fd: int = -1


@dataclass(frozen=True)
class GuestMemory:
    """Guest RAM in a file that QEMU inherits as ``fd``: ``shared`` (a template
    VM, whose RAM must land in the file) or private copy-on-write (a clone)."""

    fd: int
    shared: bool


@dataclass(frozen=True)
class VMSpec:
    kernel: Path
    initrd: Path
    memory_mib: int = 256
    vcpus: int = 1
    machine: str = "microvm"
    accel: str = "tcg"  # resolved already: "kvm" or "tcg"
    # TCG translation cache. 64 MiB thrashes while the agent imports gRPC
    # (+0.45 s per boot); QEMU's default of 1 GiB costs memory per VM.
    tb_size_mib: int = 128
    agent_transport: str = "serial"
    vsock_cid: int = 0
    vsock_port: int = 1024
    shares: tuple[Share, ...] = ()
    net: NetSpec | None = None
    tsc_khz: int | None = None
    debug: bool = False
    extra_cmdline: tuple[str, ...] = field(default_factory=tuple)
    memory: GuestMemory | None = None
    # Start paused, waiting for a saved state (migrate-incoming).
    incoming: bool = False
    # A virtio-balloon whose only job is free-page reporting: memory the
    # guest frees goes back to the host. Only for RAM QEMU owns alone: on
    # a file (a template's memfd) QEMU 7.2 would punch holes in the file.
    free_page_reporting: bool = False

    def validate(self) -> None:
        problem = vm_settings_problem(self.memory_mib, self.vcpus, self.machine,
                                      self.agent_transport)
        if problem:
            raise SpecError(problem)
        if self.accel not in ("kvm", "tcg"):
            raise SpecError(f"accel {self.accel!r} must be resolved to kvm or tcg")
        if self.agent_transport == "vsock" and self.vsock_cid < 3:
            raise SpecError("vsock transport needs a guest CID of 3 or more")


@dataclass(frozen=True)
class VMEndpoints:
    """Host-side files and pre-opened listening sockets handed to QEMU."""

    console_fd: int  # a listening unix socket; the serial console is written to it
    qmp_fd: int
    agent_fd: int | None  # virtio-serial chardev; None with vsock


def _bus(machine: str) -> str:
    return "device" if machine == "microvm" else "pci"


def boot_modules(spec: VMSpec) -> list[str]:
    """Guest kernel modules the VM's devices need at boot, dependencies first."""
    modules = ["virtio_ring", "virtio"]
    if spec.machine == "microvm":
        modules.append("virtio_mmio")
    else:
        modules += ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci"]
    if spec.agent_transport == "serial":
        modules.append("virtio_console")
    else:
        modules += ["vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"]
    if spec.net is not None:
        modules += MODULE_GROUPS["net"]
    if spec.free_page_reporting:
        modules.append("virtio_balloon")
    if spec.shares:
        # What the agent's SetupSandbox would otherwise insmod, one process
        # each: loaded by init, it is already in a template's saved memory,
        # so a clone starts without it (about 0.4 s under TCG).
        modules += MODULE_GROUPS["9p"] + MODULE_GROUPS["overlay"]
    # The ISA pvpanic device (ACPI QEMU0001): a guest panic is QEMU's
    # GUEST_PANICKED event, not only a reboot that -no-reboot turns into an exit.
    modules += ["pvpanic", "pvpanic-mmio"]
    return modules


def base_cmdline(spec: VMSpec) -> str:
    """The kernel's own parameters; shared with the bare-boot benchmark."""
    words = [BASE_CMDLINE]
    if spec.tsc_khz:
        words.append(f"tsc_early_khz={spec.tsc_khz}")
    if spec.accel == "tcg":
        # Under TCG only; why this is safe is argued in docs/design-notes.md
        # ("Threat model: mitigations=off").
        words.append("mitigations=off")
    return " ".join(words)


def kernel_cmdline(spec: VMSpec) -> str:
    words = [base_cmdline(spec)]
    words.append(f"vmrt.transport={spec.agent_transport}")
    if spec.agent_transport == "vsock":
        words.append(f"vmrt.vsock_port={spec.vsock_port}")
    words.append("vmrt.boot_modules=" + ",".join(boot_modules(spec)))
    if spec.debug:
        words.append("vmrt.debug=1")
    words.extend(spec.extra_cmdline)
    return " ".join(words)


def _cpu(spec: VMSpec) -> str:
    if spec.accel == "kvm":
        return "host"
    # TCG runs "rep movsb" a byte at a time; hiding ERMS/FSRM makes the guest
    # kernel and glibc copy with wide moves instead (-0.5 s per boot).
    return "max,-erms,-fsrm"


def opt(value: object) -> str:
    """A value inside a QEMU ``-opt key=value,...`` list: commas doubled, so a
    value can never end one option and start another."""
    return str(value).replace(",", ",,")


def _netdev(net: NetSpec) -> str:
    if not _MAC.fullmatch(net.mac):
        raise SpecError(f"NIC MAC address {net.mac!r} is not of the form xx:xx:xx:xx:xx:xx")
    if net.mode == "hub":
        return "hubport,id=net0,hubid=0"
    if net.mode != "tap":
        raise SpecError(f"network mode {net.mode!r} is not tap or hub")
    if not isinstance(net.tap_fd, int) or net.tap_fd < 0:
        raise SpecError("a tap NIC needs the tap's fd")
    return f"tap,id=net0,fd={net.tap_fd},vhost=off"


def machine_args(spec: VMSpec) -> list[str]:
    """The machine, CPU and memory part of the argv.

    Shared with the bare-boot baseline of bench/boot.py, so the benchmark
    compares like with like.
    """
    spec.validate()
    # pit=off: the guest times with the TSC (tsc_early_khz) and the LAPIC;
    # QEMU's emulated i8254 alone kept an idle TCG guest at 0.70 % of a
    # core, 0.26 % without it (docs/design-notes.md, "Idle CPU per pod").
    machine = "microvm,acpi=on,pit=off" if spec.machine == "microvm" else spec.machine
    accel = "kvm" if spec.accel == "kvm" else f"tcg,tb-size={spec.tb_size_mib}"
    memory: list[str] = []
    if spec.memory is not None:
        if not isinstance(spec.memory.fd, int) or spec.memory.fd < 0:
            raise SpecError("guest memory in a file needs the file's fd")
        machine += ",memory-backend=mem"
        memory = ["-object", f"memory-backend-file,id=mem,size={spec.memory_mib}M,"
                  f"mem-path=/proc/self/fd/{spec.memory.fd},"
                  f"share={'on' if spec.memory.shared else 'off'}"]
    return [
        *memory,
        "-machine", machine,
        "-accel", accel,
        "-cpu", _cpu(spec),
        "-m", f"{spec.memory_mib}M",
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    ]


def build_argv(spec: VMSpec, endpoints: VMEndpoints, name: str,
               qemu: str = "qemu-system-x86_64") -> list[str]:
    bus = _bus(spec.machine)
    argv = [
        qemu,
        "-name", f"{opt(name)},process={opt(name[:15])}",
        *machine_args(spec),
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-chardev", f"socket,id=qmp,fd={endpoints.qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        # wait=on: the guest starts only once vmrtd's reader is connected.
        "-chardev", f"socket,id=console,fd={endpoints.console_fd},server=on,wait=on",
        "-serial", "chardev:console",
        # A panic reported by the guest ends the VM (-action panic=shutdown
        # is QEMU's default) after the GUEST_PANICKED event.
        "-device", "pvpanic",
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", kernel_cmdline(spec),
    ]
    if spec.agent_transport == "serial":
        if endpoints.agent_fd is None:
            raise SpecError("serial transport needs an agent socket")
        argv += [
            "-device", f"virtio-serial-{bus},id=vser0",
            "-chardev", f"socket,id=agent,fd={endpoints.agent_fd},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}",
        ]
    else:
        argv += ["-device", f"vhost-vsock-{bus},guest-cid={spec.vsock_cid}"]
    if spec.net is not None:
        argv += ["-netdev", _netdev(spec.net),
                 "-device", f"virtio-net-{bus},netdev=net0,mac={spec.net.mac}"]
    for index, share in enumerate(spec.shares):
        readonly = ",readonly=on" if share.readonly else ""
        if not _TAG.fullmatch(share.tag):
            raise SpecError(f"9p mount tag {share.tag!r} is not a plain name")
        argv += [
            "-fsdev",
            f"local,id=fs{index},path={opt(share.path)},security_model=none,multidevs=remap"
            f"{readonly}",
            "-device", f"virtio-9p-{bus},fsdev=fs{index},mount_tag={share.tag}",
        ]
    if spec.free_page_reporting:
        if spec.memory is not None:
            raise SpecError("free-page reporting needs guest RAM that is QEMU's own")
        argv += ["-device", f"virtio-balloon-{bus},free-page-reporting=on"]
    if spec.incoming:
        argv += ["-incoming", "defer"]
    return argv
