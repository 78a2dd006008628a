"""Building OCI runtime specs (config.json) for containers in the guest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The capability set containerd and Docker give an unprivileged container.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]

READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]


def default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


def process(args: Sequence[str], env: Sequence[str] = (), cwd: str = "/",
            terminal: bool = False, uid: int = 0, gid: int = 0) -> dict[str, Any]:
    environment = list(env)
    if not any(e.startswith("PATH=") for e in environment):
        environment.insert(0, f"PATH={DEFAULT_PATH}")
    if terminal and not any(e.startswith("TERM=") for e in environment):
        environment.append("TERM=xterm")
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "terminal": terminal,
        "user": {"uid": uid, "gid": gid},
        "args": list(args),
        "env": environment,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
        "noNewPrivileges": True,
    }


def container_spec(args: Sequence[str], env: Sequence[str] = (), cwd: str = "/",
                   hostname: str = "", terminal: bool = False) -> dict[str, Any]:
    """A default spec: own pid/ipc/uts/mount/cgroup namespaces, the VM's network."""
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": process(args, env, cwd, terminal),
        "root": {"path": "rootfs", "readonly": False},
        "mounts": default_mounts(),
        "linux": {
            # No network namespace: the VM is the pod, and all its
            # containers share the guest's network.
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if hostname:
        spec["hostname"] = hostname
    return spec
