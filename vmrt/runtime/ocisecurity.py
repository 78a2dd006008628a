"""Capabilities and seccomp for a container's OCI spec, from its CRI security context.

The capability set follows containerd's rules (defaults, add/drop, "ALL",
privileged); the RuntimeDefault seccomp profile is vmrt's own (see
docs/design-notes.md); Localhost profiles are read from the host and
converted from Docker's form.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt import oci
from vmrt.errors import InvalidArgumentError

ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]

# RuntimeDefault seccomp: allow by default, refuse (EPERM) the syscalls that
# only a capability the container lacks would let through, plus a few that
# no container needs. The VM is the security boundary; this keeps the
# guest kernel's surface small for unprivileged workloads.
_DENIED_UNLESS: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": ["mount", "umount2", "pivot_root", "setns", "unshare", "fsopen",
                      "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
                      "name_to_handle_at", "quotactl", "lookup_dcookie", "syslog",
                      "swapon", "swapoff", "sethostname", "setdomainname", "bpf",
                      "perf_event_open", "fanotify_init", "mount_setattr"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_BOOT": ["reboot", "kexec_load", "kexec_file_load"],
    "CAP_SYS_TIME": ["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
    "CAP_SYS_PTRACE": ["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}
_ALWAYS_DENIED = ["add_key", "request_key", "keyctl", "userfaultfd", "uselib", "vhangup",
                  "get_mempolicy", "set_mempolicy", "mbind", "move_pages"]
_ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
MAX_SECCOMP_PROFILE = 1024 * 1024


def cap_name(name: str) -> str:
    """A CRI capability name ("net_admin", "CAP_NET_ADMIN") in the OCI form."""
    name = name.upper()
    return name if name.startswith("CAP_") or name == "ALL" else f"CAP_{name}"


def capabilities(sc: api.LinuxContainerSecurityContext) -> list[str]:
    if sc.privileged:
        return list(ALL_CAPABILITIES)
    add = [cap_name(c) for c in sc.capabilities.add_capabilities]
    drop = [cap_name(c) for c in sc.capabilities.drop_capabilities]
    for cap in add + drop:
        if cap != "ALL" and cap not in ALL_CAPABILITIES:
            raise InvalidArgumentError(
                f"linux.security_context.capabilities: unknown capability {cap}")
    # As containerd and CRI-O: add ALL, then drop ALL, then the single names
    # (add ALL + drop ALL + add CHOWN is CHOWN alone).
    caps = list(oci.DEFAULT_CAPABILITIES)
    if "ALL" in add:
        caps = list(ALL_CAPABILITIES)
    if "ALL" in drop:
        caps = []
    caps += [c for c in add if c != "ALL" and c not in caps]
    return [c for c in caps if c not in drop]


def default_seccomp(caps: Sequence[str]) -> dict[str, Any]:
    denied = list(_ALWAYS_DENIED)
    for cap, syscalls in _DENIED_UNLESS.items():
        if cap not in caps:
            denied += syscalls
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": _ARCHITECTURES,
        "syscalls": [{"names": sorted(set(denied)), "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}],
    }


def _bad_profile(path: str, problem: str | None) -> InvalidArgumentError:
    return InvalidArgumentError(f"linux.security_context.seccomp.localhost_ref: profile "
                                f"{path!r} {problem}")


def _localhost_seccomp(path: str) -> dict[str, Any]:
    if not os.path.isabs(path):
        raise _bad_profile(path, "must be an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _bad_profile(path, "does not exist") from None
    except OSError as exc:
        raise _bad_profile(path, exc.strerror) from None
    try:
        # Not a FIFO that never answers, not /dev/zero that never ends.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _bad_profile(path, "is not a regular file")
        data = os.read(fd, MAX_SECCOMP_PROFILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECCOMP_PROFILE:
        raise _bad_profile(path, f"is larger than {MAX_SECCOMP_PROFILE} bytes")
    try:
        profile = json.loads(data)
    except ValueError as exc:
        raise _bad_profile(path, f"is not JSON: {exc}") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise _bad_profile(path, "has no defaultAction")
    try:
        return _oci_seccomp(profile)
    except (KeyError, TypeError, AttributeError) as exc:
        raise _bad_profile(path, f"is malformed: {type(exc).__name__} {exc}") from None


def _oci_seccomp(profile: dict[str, Any]) -> dict[str, Any]:
    """A Docker or OCI seccomp profile in the OCI spec's form."""
    arches = profile.get("architectures") or [
        m["architecture"] for m in profile.get("archMap", []) if "architecture" in m]
    result: dict[str, Any] = {"defaultAction": str(profile["defaultAction"]),
                              "architectures": list(arches or _ARCHITECTURES), "syscalls": []}
    for rule in profile.get("syscalls", []):
        names = rule.get("names") or ([rule["name"]] if "name" in rule else [])
        entry = {"names": [str(n) for n in names], "action": str(rule["action"])}
        for key in ("args", "errnoRet"):
            if key in rule:
                entry[key] = rule[key]
        result["syscalls"].append(entry)
    return result


def seccomp(sc: api.LinuxContainerSecurityContext, caps: Sequence[str]) -> dict[str, Any] | None:
    if sc.privileged:
        return None
    if sc.HasField("seccomp"):
        kind = sc.seccomp.profile_type
        if kind == api.SecurityProfile.RuntimeDefault:
            return default_seccomp(caps)
        if kind == api.SecurityProfile.Unconfined:
            return None
        return _localhost_seccomp(sc.seccomp.localhost_ref)
    legacy = sc.seccomp_profile_path
    if legacy in ("runtime/default", "docker/default"):
        return default_seccomp(caps)
    if legacy.startswith("localhost/"):
        return _localhost_seccomp(legacy[len("localhost/"):])
    return None
