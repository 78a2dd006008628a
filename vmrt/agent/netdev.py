"""The guest's network interfaces' counters, from /proc/net/dev."""

from __future__ import annotations

from dataclasses import dataclass

MAX_INTERFACES = 32


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse(text: str) -> list[InterfaceCounters]:
    """Every interface but the loopback. The format: two header lines, then
    ``name: rx_bytes packets errs drop fifo frame compressed multicast
    tx_bytes packets errs ...``."""
    found = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        name = name.strip()
        if not sep or name == "lo" or len(fields) < 11 or not all(f.isdigit() for f in fields):
            continue
        found.append(InterfaceCounters(name, int(fields[0]), int(fields[2]), int(fields[8]),
                                       int(fields[10])))
    return found[:MAX_INTERFACES]


def read(path: str = "/proc/net/dev") -> list[InterfaceCounters]:
    try:
        with open(path) as f:
            return parse(f.read())
    except OSError:
        return []
