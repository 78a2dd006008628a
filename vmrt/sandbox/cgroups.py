"""The pod's cgroup on the host, where its QEMU runs.

kubelet gives each pod a parent cgroup (``cgroup_parent``) and accounts the
pod's memory and CPU there; a VM's containers run inside the guest, so what
kubelet must see is QEMU itself. vmrt makes one cgroup per sandbox below
the parent and QEMU joins it before it starts (``jail.py``):

* ``cgroupfs`` driver: ``<parent>/vmrt-<pod id>``, e.g.
  ``/kubepods/burstable/pod<uid>/vmrt-<id>``;
* ``systemd`` driver: the parent is a slice name, expanded as systemd
  does (``kubepods-burstable-pod<uid>.slice`` lives at
  ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice``),
  and the sandbox is the scope ``vmrt-<pod id>.scope`` in it. The directory
  is made directly: vmrt does not ask systemd over D-Bus to create the
  scope (see docs/design-notes.md).

It is made in every hierarchy the host has mounted: the v1 controllers
that account a VM (memory, cpu, cpuacct, pids, blkio) and the unified v2
hierarchy. Paths are built from checked names only and made without
following symlinks.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from vmrt import safefs
from vmrt.errors import InvalidArgumentError, VmrtError

log = logging.getLogger(__name__)

DRIVERS = ("cgroupfs", "systemd")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")
DEFAULT_PARENT = {"cgroupfs": "/vmrt", "systemd": "vmrt.slice"}
_UNIT_PART = re.compile(r"[A-Za-z0-9_.:@]+")
_PATH_PART = re.compile(r"[A-Za-z0-9_.:@-]+")


class CgroupError(VmrtError):
    pass


def expand_slice(name: str) -> str:
    """systemd's path of a slice: ``a-b-c.slice`` -> ``/a.slice/a-b.slice/a-b-c.slice``."""
    if name == "-.slice":
        return "/"
    if not name.endswith(".slice") or "/" in name:
        raise InvalidArgumentError(f"config.linux.cgroup_parent: {name!r} is not a systemd slice "
                                   "(the systemd cgroup driver is in use)")
    parts = name[:-len(".slice")].split("-")
    if not all(_UNIT_PART.fullmatch(p) for p in parts):
        raise InvalidArgumentError(f"config.linux.cgroup_parent: {name!r} is not a valid slice "
                                   "name")
    return "".join("/" + "-".join(parts[:i + 1]) + ".slice" for i in range(len(parts)))


def relative_path(driver: str, parent: str, pod_id: str, default_parent: str = "") -> str:
    """Where the sandbox's cgroup is, relative to each hierarchy's root."""
    parent = parent or default_parent or DEFAULT_PARENT[driver]
    if driver == "systemd":
        return expand_slice(parent).rstrip("/") + f"/vmrt-{pod_id}.scope"
    if not parent.startswith("/") or not all(
            _PATH_PART.fullmatch(p) for p in parent.strip("/").split("/") if p):
        raise InvalidArgumentError(f"config.linux.cgroup_parent: {parent!r} is not an absolute "
                                   "cgroup path "
                                   "(the cgroupfs cgroup driver is in use)")
    return parent.rstrip("/") + f"/vmrt-{pod_id}"


def hierarchies(root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Mount points under ``root`` of the unified hierarchy and of the v1
    controllers vmrt places QEMU in."""
    found = []
    prefix = str(root)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3].split(",")
            if not (point == prefix or point.startswith(prefix + "/")):
                continue
            if fstype == "cgroup2" or (fstype == "cgroup"
                                       and any(c in options for c in V1_CONTROLLERS)):
                found.append(Path(point))
    return sorted(set(found))


@dataclass(frozen=True)
class PodCgroup:
    driver: str
    relative: str  # e.g. /kubepods/burstable/pod123/vmrt-<id>
    root: str = "/sys/fs/cgroup"

    def directories(self) -> list[Path]:
        return [h / self.relative.lstrip("/") for h in hierarchies(Path(self.root))]

    def create(self) -> None:
        made = []
        try:
            for hierarchy in hierarchies(Path(self.root)):
                safefs.make_dirs(hierarchy, self.relative.lstrip("/"))
                made.append(hierarchy / self.relative.lstrip("/"))
        except OSError as exc:
            self.try_remove()
            raise CgroupError(f"cannot create cgroup {self.relative}: {exc}") from None
        if not made:
            raise CgroupError(f"no cgroup hierarchy is mounted under {self.root}")

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.directories()]

    def try_remove(self) -> list[Path]:
        """rmdir in every hierarchy; returns the ones that still hold processes."""
        busy = []
        for directory in self.directories():
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                busy.append(directory)
        return busy

    async def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup once its last process is gone: a QEMU that was
        just killed leaves it a moment later."""
        deadline = time.monotonic() + timeout
        while True:
            busy = self.try_remove()
            if not busy:
                return
            if time.monotonic() > deadline:
                log.warning("cgroup %s still has processes; left in place", busy[0])
                return
            await asyncio.sleep(0.05)


def of_process(pid: int, root: str = "/sys/fs/cgroup") -> PodCgroup | None:
    """The sandbox cgroup a process is in (a leaked QEMU's), if it is in one."""
    try:
        paths = set(os_pid_cgroups(pid).values())
    except OSError:
        return None
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if re.fullmatch(r"vmrt-[0-9a-f]{64}(\.scope)?", name):
            driver = "systemd" if name.endswith(".scope") else "cgroupfs"
            return PodCgroup(driver, path, root)
    return None


def for_pod(driver: str, parent: str, pod_id: str, root: str = "/sys/fs/cgroup",
            default_parent: str = "") -> PodCgroup:
    if driver not in DRIVERS:
        raise CgroupError(f"unknown cgroup driver {driver!r}")
    return PodCgroup(driver, relative_path(driver, parent, pod_id, default_parent), root)


def os_pid_cgroups(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy controllers: path}."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            out[controllers or "unified"] = path
    return out
