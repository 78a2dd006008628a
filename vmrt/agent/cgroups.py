"""Reading a container's cgroup v2 files for stats and OOM kills."""

from __future__ import annotations

import os
from dataclasses import dataclass

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


@dataclass
class CgroupStats:
    cpu_usage_ns: int
    memory_usage: int
    working_set: int
    rss: int
    page_faults: int
    major_page_faults: int
    pids: int
    oom_kills: int


def read_stats(directory: str) -> CgroupStats:
    cpu = _read_keyed(os.path.join(directory, "cpu.stat"))
    mem = _read_keyed(os.path.join(directory, "memory.stat"))
    usage = _read_int(os.path.join(directory, "memory.current"))
    # kubelet's working set: usage minus inactive file pages.
    working_set = max(0, usage - mem.get("inactive_file", 0))
    return CgroupStats(
        cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
        memory_usage=usage,
        working_set=working_set,
        rss=mem.get("anon", 0),
        page_faults=mem.get("pgfault", 0),
        major_page_faults=mem.get("pgmajfault", 0),
        pids=_read_int(os.path.join(directory, "pids.current")),
        oom_kills=oom_kills(directory),
    )
