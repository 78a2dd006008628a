"""Start QEMU inside its jail: ``python -I -S jail.py SPEC_JSON QEMU ARGV...``.

Run by vmrtd as the process that becomes QEMU (it ends in execv, so the pid
vmrtd records is QEMU's). In order, as Firecracker's jailer does:

1. join the pod's cgroups, so QEMU's memory and CPU count against the pod
   from its first page;
2. a mount namespace of its own, slave to the host's (the mounts vmrtd
   makes later under the sandbox share still reach it, none of QEMU's go
   back), whose root is a fresh tmpfs holding only what this VM needs:
   ``/usr`` read-only (the binary, its libraries, firmware and modules),
   ``/etc/ld.so.cache``, the guest image read-only, the sandbox's share, a
   few device nodes and QEMU's own ``/proc/self``. No other process, no
   /sys, no /etc, no other sandbox, no host file the guest could reach
   through a bug in QEMU's 9p server;
3. ``no_new_privs`` and the capabilities cut to the ones 9p needs to act as
   the container's root on its own files (see docs/design-notes.md),
   bounding set included, so nothing exec'd later can regain the rest;
4. execv QEMU, which then applies its own seccomp filter (``-sandbox``).

Standard library only, no vmrt imports: it runs with ``-I -S`` and must
start fast. A failure is printed on stderr (QEMU's log, which vmrtd reports)
and the exit code is 127.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC = 0x20, 0x1000, 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SYS_PIVOT_ROOT = 155
SYS_CAPSET = 126
CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


class JailError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_libc.mount(source and source.encode(), target.encode(),
                       fstype and fstype.encode(), flags, data and data.encode()),
           f"mount {source or fstype or ''} on {target}")


def _bind(root: str, path: str, readonly: bool, is_dir: bool) -> None:
    target = root + path
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
    _mount(path, target, None, MS_BIND | MS_REC)
    if readonly:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _join_cgroups(procs_files: list[str]) -> None:
    pid = str(os.getpid())
    for path in procs_files:
        try:
            with open(path, "w") as f:
                f.write(pid)
        except OSError as exc:
            raise JailError(f"cannot join cgroup {os.path.dirname(path)}: {exc.strerror}"
                            ) from None


def _build_root(spec: dict[str, object]) -> None:
    root = str(spec["root"])
    _check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    _mount(None, "/", None, MS_REC | MS_SLAVE)
    _mount("vmrt-jail", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for entry in spec["binds"]:  # type: ignore[attr-defined]
        _bind(root, entry["path"], bool(entry.get("readonly", True)),
              os.path.isdir(entry["path"]))
    for name, target in dict(spec["symlinks"]).items():  # type: ignore[call-overload]
        os.symlink(target, os.path.join(root, name))
    # QEMU's 9p server reaches xattrs through /proc/self/fd/N. This process's
    # own /proc entry (QEMU's, once it has exec'd: the pid stays) at
    # /proc/self, and no other process of the host.
    own = os.path.join(root, "proc", "self")
    os.makedirs(own)
    _mount(f"/proc/{os.getpid()}", own, None, MS_BIND)
    _mount(None, own, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
           | MS_NOEXEC)
    os.makedirs(os.path.join(root, "tmp"), mode=0o1777, exist_ok=True)
    old = os.path.join(root, ".old-root")
    os.mkdir(old)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b".old-root"), "pivot_root")
    _check(_libc.umount2(b"/.old-root", MNT_DETACH), "detach the old root")
    os.rmdir("/.old-root")
    os.chdir("/")
    # Nothing more is added: the root itself becomes read-only.
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities(keep: list[int], last_cap: int) -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for cap in range(last_cap + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                          _CapData(mask >> 32, mask >> 32, 0))
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), data), "capset")


def main(argv: list[str]) -> int:
    try:
        spec = json.loads(argv[1])
        qemu = argv[2]
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
        _join_cgroups(list(spec["cgroups"]))
        _build_root(spec)
        _drop_capabilities([int(c) for c in spec["capabilities"]], last_cap)
        os.execv(qemu, argv[2:])
    except (JailError, OSError, ValueError, KeyError, IndexError) as exc:
        print(f"vmrt jail: {exc}", file=sys.stderr, flush=True)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
