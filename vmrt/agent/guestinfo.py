"""The guest's own view of itself for the pod's stats: its network
interfaces' counters (/proc/net/dev) and its memory (/proc/meminfo)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_INTERFACES = 32


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse(text: str) -> list[InterfaceCounters]:
    """Every interface but the loopback. The format: two header lines, then
    ``name: rx_bytes packets errs drop fifo frame compressed multicast
    tx_bytes packets errs drop ...``."""
    found = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        name = name.strip()
        if not sep or name == "lo" or len(fields) < 12 or not all(f.isdigit() for f in fields):
            continue
        rx, tx = [int(f) for f in fields[0:4]], [int(f) for f in fields[8:12]]
        found.append(InterfaceCounters(name, *rx, *tx))
    return found[:MAX_INTERFACES]


def interfaces(path: str = "/proc/net/dev") -> list[InterfaceCounters]:
    try:
        with open(path) as f:
            return parse(f.read())
    except OSError:
        return []


def meminfo(path: str = "/proc/meminfo") -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes; zeros when unreadable."""
    values = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if key in ("MemTotal", "MemAvailable") and fields and fields[0].isdigit():
                    values[key] = int(fields[0]) * 1024
    except OSError:
        pass
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)
