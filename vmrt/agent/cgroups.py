"""Reading a container's cgroup v2 files for stats and OOM kills."""

from __future__ import annotations

import os

from vmrt.agent.v1 import agent_pb2 as pb

CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_dir(cgroups_path: str) -> str:
    return os.path.join(CGROUP_ROOT, cgroups_path.lstrip("/"))


def _read_keyed(path: str) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    values[parts[0]] = int(parts[1])
    except OSError:
        pass
    return values


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def oom_kills(directory: str) -> int:
    return _read_keyed(os.path.join(directory, "memory.events")).get("oom_kill", 0)


# Bounds on the walk that counts open files: a container with more
# processes or descriptors than this is reported at the bound.
MAX_PROCESSES = 1024
MAX_DESCRIPTORS = 65536
MAX_DEVICES = 16


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def _open_files(pids: list[str]) -> tuple[int, int]:
    """(descriptors, sockets) open in these processes, up to the bounds."""
    descriptors = sockets = 0
    for pid in pids[:MAX_PROCESSES]:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue  # gone since cgroup.procs was read
        for name in names:
            if descriptors >= MAX_DESCRIPTORS:
                return descriptors, sockets
            descriptors += 1
            try:
                if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                    sockets += 1
            except OSError:
                pass
    return descriptors, sockets


def _devices(directory: str) -> list[pb.DeviceIo]:
    """io.stat: ``MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...`` per device."""
    found = []
    for line in _lines(os.path.join(directory, "io.stat"))[:MAX_DEVICES]:
        device, *pairs = line.split()
        major, sep, minor = device.partition(":")
        if not (sep and major.isdigit() and minor.isdigit()):
            continue
        keyed = dict(p.partition("=")[::2] for p in pairs)
        count = {k: int(v) for k, v in keyed.items() if v.isdigit()}
        found.append(pb.DeviceIo(major=int(major), minor=int(minor),
                                 read_bytes=count.get("rbytes", 0),
                                 write_bytes=count.get("wbytes", 0),
                                 reads=count.get("rios", 0), writes=count.get("wios", 0)))
    return found


def read_stats(directory: str) -> pb.ContainerStatsResponse:
    """What the cgroup accounts, in the agent's reply (its timestamp unset)."""
    cpu = _read_keyed(os.path.join(directory, "cpu.stat"))
    mem = _read_keyed(os.path.join(directory, "memory.stat"))
    events = _read_keyed(os.path.join(directory, "memory.events"))
    usage = _read_int(os.path.join(directory, "memory.current"))
    procs = _lines(os.path.join(directory, "cgroup.procs"))
    descriptors, sockets = _open_files(procs)
    return pb.ContainerStatsResponse(
        cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
        cpu_user_ns=cpu.get("user_usec", 0) * 1000,
        cpu_system_ns=cpu.get("system_usec", 0) * 1000,
        cpu_periods=cpu.get("nr_periods", 0),
        cpu_throttled_periods=cpu.get("nr_throttled", 0),
        cpu_throttled_ns=cpu.get("throttled_usec", 0) * 1000,
        memory_usage_bytes=usage,
        # kubelet's working set: usage minus inactive file pages.
        memory_working_set_bytes=max(0, usage - mem.get("inactive_file", 0)),
        memory_rss_bytes=mem.get("anon", 0),
        memory_cache_bytes=mem.get("file", 0),
        memory_mapped_file_bytes=mem.get("file_mapped", 0),
        memory_kernel_bytes=mem.get("kernel", 0),
        memory_swap_bytes=_read_int(os.path.join(directory, "memory.swap.current")),
        memory_max_usage_bytes=_read_int(os.path.join(directory, "memory.peak")),
        memory_limit_hits=events.get("max", 0),
        page_faults=mem.get("pgfault", 0),
        major_page_faults=mem.get("pgmajfault", 0),
        pids=_read_int(os.path.join(directory, "pids.current")),
        processes=len(procs),
        threads_max=_read_int(os.path.join(directory, "pids.max")),
        file_descriptors=descriptors,
        sockets=sockets,
        oom_kills=events.get("oom_kill", 0),
        devices=_devices(directory),
    )
