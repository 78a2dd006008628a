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


def cgroup_leaks(parent: str) -> list[str]:
    """Sandbox cgroups (``vmrt-<pod id>``) left under ``parent`` (a path
    relative to each hierarchy's root)."""
    from vmrt.sandbox import cgroups

    found = []
    for hierarchy in cgroups.hierarchies():
        directory = hierarchy / parent.lstrip("/")
        if directory.is_dir():
            found += [str(p) for p in directory.iterdir()
                      if p.is_dir() and p.name.startswith("vmrt-")]
    return found


def remove_cgroup_parent(parent: str) -> None:
    """Reclaim what is left under ``parent`` and ``parent`` itself."""
    from vmrt.sandbox import cgroups

    for path in cgroup_leaks(parent):
        with contextlib.suppress(OSError):
            Path(path).rmdir()
    for hierarchy in cgroups.hierarchies():
        parts = Path(parent.lstrip("/")).parts
        for depth in range(len(parts), 0, -1):
            with contextlib.suppress(OSError):
                hierarchy.joinpath(*parts[:depth]).rmdir()


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


def network_leaks(pod_ids: list[str], ipam_dir: Path, network: str = "") -> dict[str, object]:
    """netns, taps, IPAM leases and iptables rules left by these pods; with
    ``network`` (a CNI network name whose IPAM directory is ``ipam_dir``),
    also any lease or iptables rule of that network, whichever pod made it."""
    import subprocess

    from pyroute2 import IPRoute, netns

    found: dict[str, object] = {}
    names = {f"vmrt-{pod_id[:32]}" for pod_id in pod_ids}
    left = sorted(names & set(netns.listnetns()))
    if left:
        found["netns"] = left
    with IPRoute() as ipr:
        taps = [link.get("ifname") for link in ipr.get_links()
                if str(link.get("ifname", "")).startswith("vmrtap")]
    if taps:
        found["taps"] = taps
    if ipam_dir.exists():
        # host-local keeps one file per leased IP, holding the container id.
        leases = [p.name for p in ipam_dir.rglob("*")
                  if p.is_file() and p.name != "lock" and not p.name.startswith("last_")
                  and (network or any(pod_id and pod_id in p.read_text()
                                      for pod_id in pod_ids))]
        if leases:
            found["ipam_leases"] = leases
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True,
                           check=False).stdout
    mentioned = [pod_id[:12] for pod_id in pod_ids if pod_id in rules]
    if network and f'name: \\"{network}\\"' in rules:
        mentioned.append(f"rules of network {network}")
    if mentioned:
        found["iptables"] = mentioned
    return found
