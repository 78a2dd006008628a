#!/usr/bin/env python3
"""VM templates, probed with vmrt's own device set: is a restore from a saved
template faster and smaller than a cold boot, side by side in one run?

The research step of the templates issue, before the driver has a restore
path. It builds vmrt's argv (`vmrt.hypervisor.spec.build_argv`: microvm,
virtio-serial agent, pvpanic, virtio-net, a 9p device that the template's
guest never mounts) and changes only what a template needs:

- template: guest RAM in a `memory-backend-file` on /dev/shm with
  `share=on`, the NIC on a `hubport` (the netdev backend is not part of the
  migrated state), booted to agent Health; the host closes the agent
  connection and waits for the guest to see it go (else the saved guest
  still holds the old session and a clone's first connection hangs), then
  `stop`, `x-ignore-shared`, `migrate` to an `fd:` handed over with getfd
  (so `-sandbox spawn=deny` stays).
- clones: the template's RAM copied once into a memfd sealed against
  writes (F_SEAL_WRITE: a compromised QEMU cannot change the pages its
  siblings share; `readonly=on` is no way out in QEMU 7.2, it maps guest
  RAM read-only and the guest hangs), mapped `share=off` (copy on write),
  `-incoming defer`, `x-ignore-shared`, `migrate-incoming fd:`, `cont`,
  agent Health.

Cold boots (the same argv, own RAM, no template) and restores alternate,
--runs of each. The JSON gives medians, the restore/cold ratio, each VM's
PSS and the template's save time and state size.

Usage: bench/template_probe.py [--runs 5]
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qemu.qmp import QMPClient

from bench import common
from vmrt.agentclient import AgentClient
from vmrt.hypervisor.accel import host_tsc_khz
from vmrt.hypervisor.spec import NetSpec, Share, VMEndpoints, VMSpec, build_argv

F_ADD_SEALS = 1033
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8


class VM:
    """One QEMU with its QMP and agent sockets in ``directory``."""

    made: list[VM] = []  # every VM of the run, killed at the end whatever happens

    def __init__(self, directory: Path, name: str) -> None:
        VM.made.append(self)
        self.directory = directory / name
        self.directory.mkdir()
        (self.directory / "share").mkdir()
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp = QMPClient(name)

    def listener(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.directory / name))
        sock.listen(1)
        return sock

    def argv(self, spec: VMSpec, memory: str | None, netdev: str, incoming: bool) -> tuple[
            list[str], list[socket.socket]]:
        """vmrt's argv; ``memory``: the memory-backend-file options (None: plain RAM)."""
        qmp, console, agent = (self.listener(n) for n in ("qmp", "console", "agent"))
        argv = build_argv(spec, VMEndpoints(console_fd=console.fileno(), qmp_fd=qmp.fileno(),
                                            agent_fd=agent.fileno()), self.name)
        if memory is not None:
            argv[argv.index("-machine") + 1] += ",memory-backend=mem"
            argv[1:1] = ["-object",
                         f"memory-backend-file,id=mem,size={spec.memory_mib}M,{memory}"]
        # The console to a file: nobody reads it here (wait=on would block the boot).
        serial = argv.index(f"socket,id=console,fd={console.fileno()},server=on,wait=on")
        argv[serial] = f"file,id=console,path={self.directory / 'console.log'}"
        argv[argv.index("-netdev") + 1] = netdev
        if incoming:
            argv += ["-incoming", "defer"]
        return argv, [qmp, console, agent]

    async def start(self, spec: VMSpec, memory: str | None, netdev: str,
                    incoming: bool) -> None:
        argv, socks = self.argv(spec, memory, netdev, incoming)
        self.proc = subprocess.Popen(argv, pass_fds=[s.fileno() for s in socks],
                                     stderr=(self.directory / "qemu.log").open("wb"))
        for sock in socks:
            sock.close()
        await self.qmp.connect(str(self.directory / "qmp"))

    async def agent_ready(self, timeout: float = 120) -> None:
        agent = AgentClient.for_vm("serial", str(self.directory / "agent"))
        try:
            await agent.wait_ready(timeout, asyncio.get_running_loop().create_future())
        finally:
            await agent.close()

    def pss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
        return 0

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.qmp.execute("quit")
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_migration(qmp: QMPClient, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await qmp.execute("query-migrate")
        assert isinstance(info, dict)
        if info.get("status") in ("completed", "failed", "cancelled"):
            if info["status"] != "completed":
                raise RuntimeError(f"migration {info['status']}: {info.get('error-desc', '')}")
            return info
        await asyncio.sleep(0.005)
    raise TimeoutError("migration did not finish")


async def make_template(work: Path, spec: VMSpec, ram: Path) -> dict[str, float]:
    vm = VM(work, "template")
    began = time.monotonic()
    await vm.start(spec, f"mem-path={ram},share=on", "hubport,id=net0,hubid=0", False)
    await vm.agent_ready()
    booted = time.monotonic() - began
    await asyncio.sleep(1.0)  # the guest's transport sees the host connection end
    await vm.qmp.execute("stop")
    await vm.qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": True}]})
    await vm.qmp.execute("migrate-set-parameters", {"max-bandwidth": 8 << 30})
    out = os.open(work / "template.state", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    vm.qmp.send_fd_scm(out)
    await vm.qmp.execute("getfd", {"fdname": "state"})
    os.close(out)
    saving = time.monotonic()
    await vm.qmp.execute("migrate", {"uri": "fd:state"})
    await wait_migration(vm.qmp)
    saved = time.monotonic() - saving
    await vm.stop()
    return {"template_boot_s": round(booted, 3), "save_s": round(saved, 3),
            "state_bytes": (work / "template.state").stat().st_size}


def sealed_copy(ram: Path) -> int:
    """The template's RAM in a memfd that nobody can write any more."""
    memfd = os.memfd_create("vmrt-template", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    with ram.open("rb") as source:
        while chunk := source.read(1 << 20):
            os.write(memfd, chunk)
    fcntl.fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)
    probe = os.open(f"/proc/self/fd/{memfd}", os.O_RDWR)
    try:
        os.pwrite(probe, b"x", 0)
        raise RuntimeError("the sealed template took a write")
    except PermissionError:
        pass
    finally:
        os.close(probe)
    return memfd


async def restore(work: Path, name: str, spec: VMSpec, memfd: int) -> tuple[VM, float]:
    vm = VM(work, name)
    began = time.monotonic()
    await vm.start(spec, f"mem-path=/proc/{os.getpid()}/fd/{memfd},share=off",
                   "hubport,id=net0,hubid=0", True)
    await vm.qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": True}]})
    state = os.open(work / "template.state", os.O_RDONLY)
    vm.qmp.send_fd_scm(state)
    await vm.qmp.execute("getfd", {"fdname": "state"})
    os.close(state)
    await vm.qmp.execute("migrate-incoming", {"uri": "fd:state"})
    await wait_migration(vm.qmp)
    await vm.qmp.execute("cont")  # the template was saved stopped
    await vm.agent_ready(30)
    return vm, time.monotonic() - began


async def cold(work: Path, name: str, spec: VMSpec) -> tuple[VM, float]:
    vm = VM(work, name)
    began = time.monotonic()
    await vm.start(spec, None, "hubport,id=net0,hubid=0", False)
    await vm.agent_ready()
    return vm, time.monotonic() - began


async def probe(runs: int, image_root: str) -> dict[str, object]:
    image = common.guest_image(image_root)
    work = Path(tempfile.mkdtemp(prefix="vt-", dir="/tmp"))
    ram = Path(tempfile.mktemp(prefix="vmrt-template-", dir="/dev/shm"))
    try:
        spec = VMSpec(kernel=image.kernel, initrd=image.initrd, tsc_khz=host_tsc_khz(),
                      net=NetSpec("tap", "52:54:00:12:34:56", tap_fd=0),
                      shares=(Share("vmrt-share", work),))
        result: dict[str, object] = await make_template(work, spec, ram)
        memfd = sealed_copy(ram)
        ram.unlink()  # the sealed copy is all the clones need
        restores, colds, restore_pss, cold_pss = [], [], [], []
        for run in range(runs):
            vm, seconds = await restore(work, f"clone{run}", spec, memfd)
            restores.append(seconds)
            await asyncio.sleep(2)
            restore_pss.append(vm.pss_kib())
            await vm.stop()
            vm, seconds = await cold(work, f"cold{run}", spec)
            colds.append(seconds)
            await asyncio.sleep(2)
            cold_pss.append(vm.pss_kib())
            await vm.stop()
            print(f"run {run + 1}/{runs}: restore {restores[-1]:.2f} s, cold {colds[-1]:.2f} s",
                  file=sys.stderr)
        os.close(memfd)
        result.update({
            "runs": runs,
            "restore_to_agent_s": round(statistics.median(restores), 3),
            "cold_boot_to_agent_s": round(statistics.median(colds), 3),
            "restore_over_cold": round(statistics.median(restores) / statistics.median(colds), 3),
            "pss_kib_restored": statistics.median(restore_pss),
            "pss_kib_cold": statistics.median(cold_pss),
            "note": "one clone at a time, so its PSS counts the shared template pages whole; "
                    "N clones share them N ways",
        })
        return result
    finally:
        for vm in VM.made:
            if vm.proc is not None and vm.proc.poll() is None:
                vm.proc.kill()
                vm.proc.wait()
        ram.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = common.parser(__doc__, "template_probe.json")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    return common.write_result(args.output, asyncio.run(probe(args.runs, args.root)))


if __name__ == "__main__":
    sys.exit(main())
