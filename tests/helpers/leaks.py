"""Finding what a test left behind: QEMU processes, mounts, sandbox state."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def qemu_processes(marker: str) -> list[int]:
    """PIDs of qemu-system processes whose command line mentions ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"qemu-system" in cmdline[0] and any(marker.encode() in a for a in cmdline):
            found.append(int(entry))
    return found


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def find(state: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    procs = qemu_processes(str(state))
    if procs:
        found["qemu"] = procs
    points = mounts_under(state)
    if points:
        found["mounts"] = points
    sandboxes = state / "sandboxes"
    if sandboxes.exists() and any(sandboxes.iterdir()):
        found["state"] = sorted(p.name for p in sandboxes.iterdir())
    return found


def clean(state: Path) -> None:
    """Reclaim whatever a failed test leaked, so one failure does not cascade."""
    for pid in qemu_processes(str(state)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in sorted(mounts_under(state), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def failed(request) -> bool:  # type: ignore[no-untyped-def]
    """Whether the test that owns ``request`` failed (or never ran its body)."""
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed
