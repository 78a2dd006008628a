"""Host mounts, through mount(2) itself: no mount(8), no path canonicalised
by a helper, nothing pasted into a command line.

Targets are given as paths vmrt built from directories it owns; the
guest-facing layout that makes those paths safe is in ``share.py``.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from vmrt.errors import VmrtError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
# mount_setattr(2) (Linux 5.12): per-mount attributes, on a whole tree at once.
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (the generic table)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000
# open_tree(2) and move_mount(2) (Linux 5.2), for an id-mapped copy of a mount.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_OCTAL = re.compile(r"\\([0-7]{3})")


class MountError(VmrtError):
    pass


def _b(value: str | Path | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | Path | None, target: Path, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    if data is not None and len(data) > 4000:
        raise MountError(f"mount options for {target} are too long ({len(data)} bytes)")
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        what = f"mount {fstype or ''} {source or ''} on {target}".replace("  ", " ")
        raise MountError(f"{what}: {os.strerror(err)}")


def set_attributes(target: Path, attributes: int, *, recursive: bool = True) -> None:
    """Set MOUNT_ATTR_* on the mount at ``target`` and, ``recursive``, every mount
    below it, leaving their other flags as they are (a remount would reset them)."""
    attr = _MountAttr(attr_set=attributes)
    flags = AT_SYMLINK_NOFOLLOW | (AT_RECURSIVE if recursive else 0)
    if _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, _b(target), flags, ctypes.byref(attr),
                     ctypes.sizeof(attr)) != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount_setattr {target}: {os.strerror(err)}")


def idmapped_bind(source: Path, target: Path, userns_fd: int) -> None:
    """A bind of the directory ``source`` at ``target`` whose file owners are
    seen through ``userns_fd``'s mapping (on-disk uid 0 as the namespace
    root's host uid, and so on; what is written through it is shifted back):
    open_tree a detached clone, id-map it, move it into place. (overlayfs
    cannot be id-mapped itself; its layers can, since Linux 5.19.)"""
    clone = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, _b(source),
                          OPEN_TREE_CLONE | os.O_CLOEXEC | AT_SYMLINK_NOFOLLOW)
    if clone < 0:
        raise MountError(f"open_tree {source}: {os.strerror(ctypes.get_errno())}")
    try:
        attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        if _libc.syscall(SYS_MOUNT_SETATTR, clone, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                         ctypes.sizeof(attr)) != 0:
            raise MountError(f"id-mapping {source}: {os.strerror(ctypes.get_errno())}")
        if _libc.syscall(SYS_MOVE_MOUNT, clone, b"", AT_FDCWD, _b(target),
                         MOVE_MOUNT_F_EMPTY_PATH) != 0:
            raise MountError(f"move_mount to {target}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(clone)


def unmount(target: Path, lazy: bool = False) -> None:
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if _libc.umount2(_b(target), flags) != 0:
        err = ctypes.get_errno()
        raise MountError(f"unmount {target}: {os.strerror(err)}")


def bind(source: Path, target: Path, *, recursive: bool = True, readonly: bool = False,
         flags: int = 0) -> None:
    """A bind mount; ``readonly`` and ``flags`` (MS_NODEV, MS_NOSUID) are set
    by a remount straight after, before anyone is told about it."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly or flags:
        try:
            mount(None, target, None, MS_REMOUNT | MS_BIND | flags
                  | (MS_RDONLY if readonly else 0))
        except BaseException:
            unmount(target, lazy=True)
            raise


def set_propagation(target: Path, kind: int, recursive: bool = True) -> None:
    mount(None, target, None, kind | (MS_REC if recursive else 0))


def move(source: Path, target: Path) -> None:
    mount(source, target, None, MS_MOVE)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, deepest first."""
    prefix = str(directory.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def has_submounts(directory: Path) -> bool:
    """Whether anything is mounted below ``directory`` (not counting itself)."""
    top = directory.resolve()
    return any(point != top for point in mounts_under(directory))


def unmount_all(directory: Path) -> None:
    """Everything mounted at or below ``directory``; a busy mount is detached
    (the kernel finishes once its last user lets go)."""
    for point in mounts_under(directory):
        try:
            unmount(point)
        except MountError:
            unmount(point, lazy=True)
