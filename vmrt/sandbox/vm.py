"""One pod sandbox VM: its directory, QEMU, the agent connection and the share.

``SandboxVM`` is the QEMU implementation of ``vmrt.sandbox.driver.Sandbox``
and ``QemuDrivers`` of ``Drivers``. ``start`` registers an undo step for
everything it does, so a failure at any point leaves nothing behind: no
QEMU, no socket, no mount, no directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path

from vmrt import safefs
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError, AgentUnreachable
from vmrt.agentclient import AgentClient
from vmrt.aio import push_cleanup
from vmrt.errors import FailedPreconditionError, InvalidArgumentError
from vmrt.fsutil import private_dir
from vmrt.guest.image import GuestImage
from vmrt.hypervisor.confine import Jail
from vmrt.hypervisor.qemu import QemuVM, VMDied, VMError
from vmrt.hypervisor.spec import NetSpec
from vmrt.sandbox import cgroups, mounts
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.share import SandboxShare
from vmrt.sandbox.template import MAX_TEMPLATES, TEMPLATE_MAC, Claim, Templates, image_id
from vmrt.sandbox.vmspec import SHARE_TAG, vm_jail, vm_spec

log = logging.getLogger(__name__)

# What a VM's NIC boots with (a clone: what its template booted with).
BOOT_MAC = TEMPLATE_MAC

_MEMORY_TROUBLE = re.compile(
    r"Initramfs unpacking failed|Out of memory|out of memory|oom-kill|"
    r"System is deadlocked on memory|Cannot allocate memory"
)


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# Sandbox directories hold unix sockets, whose paths may not exceed 107
# bytes; a 64-character CRI pod id would leave too little room for the state
# directory, so directories use the first 32 characters (128 random bits).
DIR_NAME_LENGTH = 32


def sandbox_dir(state_root: Path, sandbox_id: str) -> Path:
    return state_root / "sandboxes" / sandbox_id[:DIR_NAME_LENGTH]


def _checked_id(value: str) -> str:
    """Ids become path components under the sandbox directory: no '/', no '..'."""
    if not _ID.match(value):
        raise InvalidArgumentError(f"invalid id {value!r}")
    return value


class SandboxVM:
    def __init__(self, sandbox_id: str, state_root: Path, image: GuestImage,
                 config: VMConfig, net: NetSpec | None = None,
                 template: Claim | None = None) -> None:
        self.id = _checked_id(sandbox_id)
        self.directory = sandbox_dir(state_root, sandbox_id)
        self.share = SandboxShare(self.directory)
        self.shared = self.share.view
        self.image = image
        self.config = config
        self.template = template
        if net is not None:
            # Every NIC starts with the templates' MAC and SetupSandbox gives
            # the guest its pod's (the veth's, which CNI ADD makes while the
            # VM starts; ``net.mac`` is not used): a clone has its
            # template's NIC, and a cold boot does as a clone does.
            net = NetSpec(net.mode, BOOT_MAC, net.tap_fd)
        if template is not None:
            # A clone: the template's devices, its RAM copy-on-write, its state.
            self.spec = vm_spec(image, config, self.shared, net, template.memory(),
                                incoming=True)
        else:
            self.spec = vm_spec(image, config, self.shared, net)
        self.qemu = QemuVM(self.spec, self.directory, f"vmrt-{sandbox_id}",
                           config.qemu_binary, self._jail())
        self.agent: AgentClient | None = None
        self.timings: dict[str, float] = {}

    # -- what callers may know of QEMU -----------------------------------

    @property
    def alive(self) -> bool:
        return self.qemu.alive

    @property
    def from_template(self) -> str:
        return self.template.key if self.template is not None else ""

    @property
    def pid(self) -> int:
        return self.qemu.pid or 0

    @property
    def start_time(self) -> int:
        return self.qemu.start_time

    @property
    def console_path(self) -> Path:
        return self.qemu.console_path

    async def wait_gone(self) -> None:
        await self.qemu.wait_exit()
        await self.qemu.console_drained()

    def death_message(self) -> str:
        return self.qemu.death_message()

    async def resize(self, memory_mib: int, vcpus: int) -> tuple[int, int]:
        # Within what it booted with: the balloon gives RAM back and takes it
        # again, vCPUs go offline and online (microvm has no hot-plug).
        if not (0 < memory_mib <= self.config.memory_mib and 0 < vcpus <= self.config.vcpus):
            raise InvalidArgumentError(
                f"{memory_mib} MiB and {vcpus} vCPU(s) are outside the VM's "
                f"{self.config.memory_mib} MiB and {self.config.vcpus} vCPU(s)")
        if self.agent is None:
            raise VMError(f"{self.id[:13]}: no agent connection")
        if not self.spec.free_page_reporting:
            # No balloon: RAM on a file (a template clone's) must not be given
            # back through one (QEMU would punch holes in the shared file).
            if memory_mib != self.config.memory_mib:
                raise FailedPreconditionError(
                    f"pod {self.id[:13]}'s VM shares its RAM with a template and has no "
                    f"balloon: its memory stays {self.config.memory_mib} MiB (a pod of "
                    "handler with template = false can be resized)")
            held_mib = memory_mib
        else:
            held_mib = await self.qemu.balloon(memory_mib << 20) >> 20
        online = await self.agent.set_online_cpus(vcpus)
        return held_mib, online

    def _jail(self) -> Jail:
        return vm_jail(self.directory, self.image, self.shared, self.config)

    # -- start ----------------------------------------------------------

    async def start(self, *, hostname: str = "", dns: pb.DnsConfig | None = None,
                    sysctls: Iterable[tuple[str, str]] = (),
                    network: Awaitable[pb.ConfigureNetworkRequest] | None = None,
                    die_with_parent: bool = False) -> None:
        try:
            await self._start(hostname, dns, sysctls, network, die_with_parent)
        finally:
            if self.template is not None:
                self.template.release()  # QEMU has its own copies, or is gone

    async def _start(self, hostname: str, dns: pb.DnsConfig | None,
                     sysctls: Iterable[tuple[str, str]],
                     network: Awaitable[pb.ConfigureNetworkRequest] | None,
                     die_with_parent: bool) -> None:
        t0 = time.monotonic()
        async with contextlib.AsyncExitStack() as undo:
            private_dir(self.directory.parent)
            self.directory.mkdir(exist_ok=False)
            push_cleanup(undo, remove_sandbox_dir, self.directory)
            (self.directory / "root").mkdir(mode=0o700)
            self.share.create()
            if self.config.cgroup is not None:
                self.config.cgroup.create()
                push_cleanup(undo, self.config.cgroup.remove)
            await self.qemu.launch(die_with_parent=die_with_parent)
            push_cleanup(undo, self.qemu.kill)
            self.timings["launched"] = time.monotonic() - t0
            if self.template is not None:
                await self._restore(self.template)
                self.timings["restored"] = time.monotonic() - t0
            self.agent = AgentClient.for_vm(self.config.transport, str(self.qemu.agent_path),
                                            keepalive_s=self.config.agent_keepalive_s,
                                            ping_timeout_s=self.config.agent_ping_timeout_s)
            push_cleanup(undo, self._close_agent)
            await self._wait_ready()
            self.timings["agent_ready"] = time.monotonic() - t0
            configure = await network if network is not None else None
            # The NIC has BOOT_MAC until the agent sets its pod's.
            nic_mac = (configure.interfaces[0].mac
                       if self.spec.net is not None and configure and configure.interfaces
                       else "")
            request = pb.SetupSandboxRequest(
                sandbox_id=self.id,
                hostname=hostname,
                dns=dns,
                sysctls=[pb.SysctlEntry(key=k, value=v) for k, v in sysctls],
                # The clock and the CRNG: a clone has its template's.
                host_time_ns=time.time_ns(),
                entropy=os.urandom(64),
                share_tag=SHARE_TAG,
                nic_mac_was=BOOT_MAC if nic_mac else "",
                nic_mac=nic_mac,
                network=configure,
            )
            reply = await self.agent.setup_sandbox(request)
            if configure is not None and not reply.network_configured:
                await self.agent.configure_network(configure)  # an agent older than the field
            self.timings["setup"] = time.monotonic() - t0
            undo.pop_all()

    async def _restore(self, template: Claim) -> None:
        try:
            await self.qemu.restore_state(template.state)
        except Exception as exc:
            if not self.qemu.alive:
                await self.qemu.console_drained()
                raise self.died(f"the VM exited while restoring template {template.key}"
                                ) from None
            raise VMDied(f"restoring template {template.key} failed: {exc}",
                         self.qemu.console_tail()) from None

    @classmethod
    async def adopt(cls, sandbox_id: str, state_root: Path, image: GuestImage,
                    config: VMConfig, pid: int, start_time: int,
                    connect_timeout: float = 10.0) -> SandboxVM:
        """Reattach to a sandbox VM that an earlier vmrtd started."""
        vm = cls(sandbox_id, state_root, image, config)
        vm.qemu = await QemuVM.adopt(vm.spec, vm.directory, vm.qemu.name, pid, start_time)
        vm.agent = AgentClient.for_vm(config.transport, str(vm.qemu.agent_path),
                                      keepalive_s=config.agent_keepalive_s,
                                      connect_timeout=connect_timeout, adopted=True,
                                      ping_timeout_s=config.agent_ping_timeout_s)
        try:
            await asyncio.wait_for(
                vm.agent.wait_ready(connect_timeout, vm.qemu.wait_exit()), connect_timeout * 2)
        except (TimeoutError, AgentError) as exc:
            if not vm.qemu.alive:
                await vm.agent.close()
                await vm.qemu.detach()
                raise
            # A slow agent (a loaded host, a busy guest) is given its time:
            # the pod's watchdog decides whether the guest is really gone.
            log.warning("sandbox %s: its agent did not answer within %.0f s (%s); adopted "
                        "anyway, the watchdog will judge it", sandbox_id[:12],
                        connect_timeout, exc)
        except BaseException:
            await vm.agent.close()
            await vm.qemu.detach()
            raise
        return vm

    async def detach(self) -> None:
        """Let go of the VM without stopping it: vmrtd is going away, the pod is not."""
        await self._close_agent()
        await self.qemu.detach()

    async def _wait_ready(self) -> None:
        assert self.agent is not None
        began = time.monotonic()
        try:
            if self.template is not None:
                # A clone's agent was answering when its template was saved:
                # a connection is enough, SetupSandbox is its first call.
                await self.agent.wait_connected(self.config.boot_timeout,
                                                self.qemu.wait_exit())
            else:
                await self.agent.wait_ready(self.config.boot_timeout, self.qemu.wait_exit())
        except AgentUnreachable:
            await self.qemu.console_drained()
            raise self.died("the VM exited while booting") from None
        except Exception as exc:
            if not self.qemu.alive:
                await self.qemu.console_drained()
                raise self.died("the VM exited while booting") from None
            raise VMDied(f"the guest agent did not answer in "
                         f"{time.monotonic() - began:.0f} s (boot_timeout "
                         f"{self.config.boot_timeout:.0f} s): {exc}",
                         self.qemu.console_tail()) from None

    def died(self, what: str) -> VMDied:
        tail = self.qemu.console_tail()
        message = f"{what}: {self.qemu.death_message()}"
        if _MEMORY_TROUBLE.search(self.qemu.console_tail(80)):
            message += (f"; the guest ran out of memory with {self.config.memory_mib} MiB "
                        "(raise --memory)")
        elif not tail.strip():
            size_mib = (self.image.kernel.stat().st_size + self.image.initrd.stat().st_size) >> 20
            message += (f"; the guest printed nothing: {self.config.memory_mib} MiB of memory "
                        f"may not even hold the {size_mib} MiB kernel and initrd (raise --memory)")
        return VMDied(message, tail)

    async def _close_agent(self) -> None:
        if self.agent is not None:
            await self.agent.close()
            self.agent = None

    # -- rootfs sharing -------------------------------------------------

    async def bind_rootfs(self, container_id: str, source: Path, readonly: bool) -> str:
        """Expose a host directory to the guest; returns its path inside the share."""
        return self.share.bind(f"{_checked_id(container_id)}/rootfs", source, readonly)

    # -- stop -----------------------------------------------------------

    async def destroy(self) -> None:
        """Stop the VM and delete everything of the sandbox on the host."""
        try:
            await self._close_agent()
            await self.qemu.shutdown()
        finally:
            try:
                await remove_sandbox_dir(self.directory)
            finally:
                if self.config.cgroup is not None and not self.qemu.alive:
                    await self.config.cgroup.remove()


async def remove_sandbox_dir(directory: Path) -> None:
    """Delete a sandbox directory and its share, also one a crash left half-made.

    Refuses (MountError) while anything is still mounted inside, rather than
    delete through a mount.
    """
    if not directory.exists():
        return
    SandboxShare(directory).destroy()
    left = mounts.mounts_under(directory)
    if left:
        raise mounts.MountError(f"refusing to delete {directory}: still mounted: "
                                + ", ".join(map(str, left)))
    safefs.remove_tree(directory)


class QemuDrivers:
    """Sandboxes as QEMU VMs, in directories under ``<state>/sandboxes``."""

    def __init__(self, state_root: Path, cgroup_root: str = "/sys/fs/cgroup",
                 templates_root: Path | None = None) -> None:
        self.state_root = state_root
        self.cgroup_root = cgroup_root
        self.templates = Templates(templates_root or state_root / "templates")

    def load(self) -> None:
        self.templates.load()

    async def close(self) -> None:
        await self.templates.close()

    def warm(self, wanted: list[tuple[GuestImage, VMConfig, bool]]) -> None:
        self.templates.prune({image_id(image) for image, _, _ in wanted})
        # No more than are kept: more would evict each other.
        for image, config, with_net in wanted[:MAX_TEMPLATES]:
            try:
                self.templates.lookup(image, config, with_net)
            except Exception as exc:  # its first pod will report it
                log.warning("no VM template for %d MiB pods of %s: %s", config.memory_mib,
                            image.directory, exc)

    def reserved_memory_mib(self) -> int:
        # A template's memfd fills towards its full size as clones touch
        # pages it never wrote (docs/design-notes.md, "What shared costs").
        return sum(t.memory_mib for t in self.templates.ready.values())

    def create(self, sandbox_id: str, image: GuestImage, config: VMConfig,
               net: NetSpec | None) -> SandboxVM:
        """A clone of the template for these settings when one is ready, else
        a VM that boots (and, with ``template`` on, a template built meanwhile)."""
        template = self.templates.lookup(image, config, net is not None)
        claim = None
        if template is not None:
            try:
                claim = template.claim()
            except OSError as exc:
                log.warning("template %s cannot be used now (%s); the pod boots cold",
                            template.key, exc)
        return SandboxVM(sandbox_id, self.state_root, image, config, net=net, template=claim)

    async def adopt(self, sandbox_id: str, image: GuestImage, config: VMConfig, pid: int,
                    start_time: int) -> SandboxVM:
        return await SandboxVM.adopt(sandbox_id, self.state_root, image, config, pid,
                                     start_time)

    async def clean(self, sandbox_id: str) -> None:
        await remove_sandbox_dir(sandbox_dir(self.state_root, sandbox_id))

    def running(self) -> dict[int, str]:
        return qemu_processes_under(self.state_root / "sandboxes")

    async def reclaim(self, pid: int) -> None:
        cgroup = cgroups.of_process(pid, self.cgroup_root)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if cgroup is not None:
            await cgroup.remove()


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
