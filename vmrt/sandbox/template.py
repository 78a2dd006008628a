"""VM templates: a guest booted once to agent-ready, saved, and restored by
every pod VM of the same settings.

A template is built per *key*: the hash of everything a restore depends on
(the guest image, QEMU's binary and version, and the argv a clone would get,
with its per-VM paths and fds fixed to placeholders: machine, CPU, memory
size, devices and their properties, kernel command line). The template VM
runs with its RAM in a memfd (``share=on``) and its NIC on a hub port; once
its agent answered, it is paused and its device state written to a file
with QMP ``migrate`` (``x-ignore-shared``: the RAM is the memfd). Then the
memfd is sealed against writes for good (F_SEAL_WRITE: no clone, and no
QEMU a guest took over, can change the pages the clones share) and copied
to disk, so a restarted vmrtd loads it instead of booting again.

A clone maps the sealed memfd ``share=off`` (copy-on-write: untouched pages
stay shared by all clones), starts with ``-incoming defer`` and loads the
state. It begins life with the template's clock, CRNG state, MAC and
machine id; SetupSandbox gives it its own (vmrt.sandbox.vm).

Builds run in the background, at most one per key at a time; a pod whose
template is not ready boots cold (never an error). A build that failed is
tried again after BUILD_RETRY seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmrt.agentclient import AgentClient
from vmrt.fsutil import private_dir
from vmrt.guest.image import GuestImage
from vmrt.hypervisor.qemu import QemuVM
from vmrt.hypervisor.spec import GuestMemory, NetSpec, VMEndpoints, build_argv
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.vmspec import vm_jail, vm_spec

log = logging.getLogger(__name__)

TEMPLATE_FORMAT = 1
# The NIC's MAC in a template and so, at first, in each clone; SetupSandbox
# gives the clone its pod's MAC.
TEMPLATE_MAC = "52:54:00:76:6d:01"
BUILD_RETRY = 300.0
# Templates kept at once (one per distinct VM size and handler setting).
MAX_TEMPLATES = 4

F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL

_versions: dict[tuple[str, float], str] = {}


def qemu_version(binary: str) -> str:
    path = shutil.which(binary) or binary
    try:
        stamp = (path, os.stat(path).st_mtime)
    except OSError:
        return "unknown"
    if stamp not in _versions:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        _versions[stamp] = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return _versions[stamp]


def image_id(image: GuestImage) -> str:
    """The guest image's real directory (a configured path may be a symlink,
    such as guest-images/default, that a rebuild moves)."""
    return str(image.directory.resolve())


def template_key(image: GuestImage, config: VMConfig, with_net: bool) -> str:
    placeholder = Path("/template")
    net = NetSpec("tap", TEMPLATE_MAC, tap_fd=9) if with_net else None
    spec = vm_spec(image, config, placeholder, net, GuestMemory(8, shared=False), incoming=True)
    # The TSC's frequency is read from the host's "cpu MHz", which moves
    # with cpufreq on bare metal; a restored guest calibrated long ago and
    # never reads its command line again, so it is no part of the key.
    spec = dataclasses.replace(spec, tsc_khz=0)
    argv = build_argv(spec, VMEndpoints(console_fd=5, qmp_fd=6, agent_fd=7), "template",
                      config.qemu_binary)
    h = hashlib.sha256()
    for part in (f"format={TEMPLATE_FORMAT}", image_id(image),
                 qemu_version(config.qemu_binary), *argv):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


def _seal(memfd: int) -> None:
    fcntl.fcntl(memfd, F_ADD_SEALS, SEALS)
    if fcntl.fcntl(memfd, F_GET_SEALS) & SEALS != SEALS:
        raise OSError("the template's memory could not be sealed")


def _new_memfd(size: int) -> int:
    memfd = os.memfd_create("vmrt-template", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(memfd, size)
    except BaseException:
        os.close(memfd)
        raise
    return memfd


def _save_sparse(memfd: int, size: int, path: Path) -> None:
    """The RAM to disk, zero pages as holes (most of a fresh guest is zeros)."""
    chunk = 1 << 20
    zero = bytes(chunk)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.truncate(size)
        for offset in range(0, size, chunk):
            data = os.pread(memfd, chunk, offset)
            if data != zero[:len(data)]:
                out.seek(offset)
                out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _load_memfd(path: Path, size: int) -> int:
    memfd = _new_memfd(size)
    try:
        with open(path, "rb") as source:
            offset = 0
            while data := source.read(1 << 20):
                if data.count(0) != len(data):
                    os.pwrite(memfd, data, offset)
                offset += len(data)
        _seal(memfd)
    except BaseException:
        os.close(memfd)
        raise
    return memfd


@dataclass
class Claim:
    """What one clone holds of its template while it starts: its own
    descriptors of the sealed memory and of the saved state. The template
    may be evicted or pruned meanwhile; the clone's fds stay open (had it
    used the template's, their numbers could be reused for another file
    before QEMU inherited them, and QEMU would map that file as guest RAM)."""

    key: str
    memfd: int
    state: int

    def memory(self) -> GuestMemory:
        return GuestMemory(self.memfd, shared=False)

    def release(self) -> None:
        """Once QEMU has its own copies (after the restore, or a failure)."""
        for fd in (self.memfd, self.state):
            if fd >= 0:
                os.close(fd)
        self.memfd = self.state = -1


@dataclass
class Template:
    key: str
    directory: Path
    memfd: int  # sealed
    memory_mib: int
    with_net: bool
    image: str = ""  # the guest image's directory
    used: float = 0.0

    def claim(self) -> Claim:
        """OSError when the template went meanwhile (the caller boots cold)."""
        if self.memfd < 0:
            raise OSError(f"template {self.key} was let go of")
        memfd = os.dup(self.memfd)
        try:
            state = os.open(self.directory / "state", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(memfd)
            raise
        return Claim(self.key, memfd, state)

    def close(self) -> None:
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1


class Templates:
    """The templates of one vmrtd, under ``root`` (``<state>/templates``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ready: dict[str, Template] = {}
        self._building: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        # One build at a time: each is a VM's boot, outside any pod's cgroup.
        self._builder = asyncio.Semaphore(1)

    def load(self) -> None:
        """Templates an earlier vmrtd saved; anything half-written is removed."""
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            try:
                meta = json.loads((directory / "ready.json").read_text())
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
                if meta.get("format") != TEMPLATE_FORMAT or meta.get("key") != directory.name:
                    raise ValueError("an old format")
                image = meta.get("image")
                if not isinstance(image, str) or not os.path.isabs(image):
                    raise ValueError("it names no guest image")
                if not Path(image).is_dir():
                    raise ValueError("its guest image is gone")
                memory_mib = int(meta["memory_mib"])
                with_net = meta["with_net"]
                if not isinstance(with_net, bool):
                    raise ValueError("with_net is not true or false")
                memfd = _load_memfd(directory / "ram", memory_mib << 20)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.info("template %s is not usable (%s); removed", directory.name, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self.ready[directory.name] = Template(directory.name, directory, memfd, memory_mib,
                                                  with_net, image)
        if self.ready:
            log.info("loaded %d VM template(s)", len(self.ready))

    def lookup(self, image: GuestImage, config: VMConfig, with_net: bool) -> Template | None:
        """The ready template for these settings, or None (and a build is started)."""
        if not config.template:
            return None
        key = template_key(image, config, with_net)
        template = self.ready.get(key)
        if template is not None:
            template.used = time.monotonic()
            return template
        failed = self._failed.get(key)
        if key not in self._building and (failed is None
                                          or time.monotonic() - failed[0] > BUILD_RETRY):
            self._building[key] = asyncio.create_task(self._build(key, image, config, with_net),
                                                      name=f"template {key}")
        return None

    def failure(self, key: str) -> str:
        return self._failed.get(key, (0.0, ""))[1]

    async def _build(self, key: str, image: GuestImage, config: VMConfig,
                     with_net: bool) -> None:
        try:
            async with self._builder:
                began = time.monotonic()
                template = await build(self.root / key, key, image, config, with_net)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("template %s could not be built (pods boot cold): %s", key, exc)
            self._failed[key] = (time.monotonic(), str(exc))
            return
        finally:
            self._building.pop(key, None)
        self.ready[key] = template
        self._failed.pop(key, None)
        log.info("template %s ready in %.1f s (%d MiB)", key, time.monotonic() - began,
                 template.memory_mib)
        self._evict()

    def prune(self, images: set[str]) -> None:
        """Remove the templates of guest images no handler uses any more (an
        upgrade or a config change brought new ones); what depends on the
        rest of the settings is in the key, and the least used go by _evict."""
        for template in list(self.ready.values()):
            if template.image not in images:
                log.info("template %s is stale (its guest image %s is no handler's now); "
                         "removed", template.key, template.image)
                self._remove(template)

    def _remove(self, template: Template) -> None:
        del self.ready[template.key]
        template.close()  # running clones keep their own mapping
        shutil.rmtree(template.directory, ignore_errors=True)

    def _evict(self) -> None:
        while len(self.ready) > MAX_TEMPLATES:
            self._remove(min(self.ready.values(), key=lambda t: t.used))

    async def close(self) -> None:
        for task in list(self._building.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for template in self.ready.values():
            template.close()
        self.ready.clear()


async def build(directory: Path, key: str, image: GuestImage, config: VMConfig,
                with_net: bool) -> Template:
    """Boot a template VM to agent-ready, save it, seal its RAM, keep it on disk."""
    private_dir(directory.parent)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    size = config.memory_mib << 20
    memfd = _new_memfd(size)
    ok = False
    try:
        vm_dir = directory / "vm"
        vm_dir.mkdir()
        (vm_dir / "root").mkdir(mode=0o700)
        share = vm_dir / "share"
        share.mkdir()
        config = dataclasses.replace(config, cgroup=None)  # node-level, not a pod's
        net = NetSpec("hub", TEMPLATE_MAC) if with_net else None
        spec = vm_spec(image, config, share, net, GuestMemory(memfd, shared=True))
        qemu = QemuVM(spec, vm_dir, f"vmrt-template-{key[:12]}", config.qemu_binary,
                      vm_jail(vm_dir, image, share, config))
        try:
            await qemu.launch()
            agent = AgentClient.for_vm(config.transport, str(qemu.agent_path),
                                       keepalive_s=0)
            try:
                await agent.wait_ready(config.boot_timeout, qemu.wait_exit())
            finally:
                await agent.close()
            state = os.open(directory / "state", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                            | os.O_CLOEXEC, 0o600)
            try:
                await qemu.save_state(state)
                os.fsync(state)
            finally:
                os.close(state)
        finally:
            await qemu.shutdown()
        shutil.rmtree(vm_dir, ignore_errors=True)
        _seal(memfd)
        await asyncio.to_thread(_save_sparse, memfd, size, directory / "ram")
        (directory / "ready.json").write_text(json.dumps({
            "format": TEMPLATE_FORMAT, "key": key, "memory_mib": config.memory_mib,
            "with_net": with_net, "image": image_id(image)}))
        ok = True
        return Template(key, directory, memfd, config.memory_mib, with_net,
                        image_id(image), time.monotonic())
    finally:
        if not ok:
            os.close(memfd)
            shutil.rmtree(directory, ignore_errors=True)
