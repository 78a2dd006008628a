"""What QEMU's jail holds, and the argv that starts QEMU inside it (``jail.py``)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import VmrtError

JAIL_SCRIPT = Path(__file__).with_name("jail.py")

# linux/capability.h
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# What 9p with security_model=none needs to act as the container's root on
# the container's own files, measured by bench/qemu_caps.py (each one taken
# away breaks something): ownership (CHOWN), files and directories of other
# users (DAC_OVERRIDE), their modes and times (FOWNER), set-group-id bits
# (FSETID). DAC_READ_SEARCH and SETFCAP changed nothing (the guest's 9p
# client cannot set security.* xattrs at all). Never MKNOD: a device node
# made on the host for the guest is a host device QEMU could be asked to open.
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID")

# Debian 12 is merged-/usr: these are all links into /usr.
_USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


class JailError(VmrtError):
    pass


def capability_problem(names: list[str] | tuple[str, ...]) -> str:
    unknown = [n for n in names if n not in CAPABILITIES]
    return f"unknown capabilities {', '.join(unknown)}" if unknown else ""


@dataclass(frozen=True)
class Jail:
    root: Path  # an empty directory; the jail's tmpfs root is mounted on it
    readonly: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    cgroup_procs: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    devices: tuple[str, ...] = ()

    def spec(self) -> dict[str, object]:
        binds = [{"path": "/usr", "readonly": True},
                 {"path": "/etc/ld.so.cache", "readonly": True}]
        binds += [{"path": str(p), "readonly": True} for p in self.readonly]
        binds += [{"path": str(p), "readonly": False} for p in self.writable]
        binds += [{"path": d, "readonly": False} for d in (*_DEVICES, *self.devices)]
        return {"root": str(self.root), "binds": binds, "symlinks": _USR_LINKS,
                "cgroups": list(self.cgroup_procs),
                "capabilities": sorted(CAPABILITIES[c] for c in self.capabilities)}

    def wrap(self, argv: list[str]) -> list[str]:
        """The argv that starts ``argv`` (QEMU's) inside the jail."""
        problem = capability_problem(self.capabilities)
        if problem:
            raise JailError(problem)
        found = shutil.which(argv[0])
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        binary = str(Path(found).resolve())
        spec = self.spec()
        if not binary.startswith("/usr/"):
            spec["binds"].append({"path": binary, "readonly": True})  # type: ignore[attr-defined]
        return [sys.executable, "-I", "-S", str(JAIL_SCRIPT), json.dumps(spec), binary,
                *argv[1:]]
