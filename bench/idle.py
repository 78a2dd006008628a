#!/usr/bin/env python3
"""Idle cost per pod: CPU of each idle pod's QEMU and of vmrtd, and PSS, with the
agent keepalive (the hang watchdog's probe) on and off, side by side in one run.

Two vmrtd daemons run at once, one whose pods use a handler with
`agent_keepalive_s = --keepalive` and one whose pods use one with it off;
each runs --pods pods with one sleeping container.
After --settle seconds, CPU ticks (/proc/PID/stat utime+stime) are counted
over --seconds for every QEMU and for each vmrtd. The JSON gives % of one
core per pod and the keepalive's share.

Usage: bench/idle.py [--pods 2] [--settle 20] [--seconds 60] [--keepalive 10]
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def pss_breakdown_kib(pid: int, guest_mib: int) -> dict[str, int]:
    """A QEMU's PSS by what the memory is: the guest's RAM (a template's
    memfd, or the anonymous mapping of the guest's size), TCG's translation
    cache (anonymous executable mappings: one per vCPU thread under MTTCG),
    and the rest (QEMU's heap, stacks, libraries)."""
    parts = {"guest_ram": 0, "translation_cache": 0, "qemu": 0}
    kind = "qemu"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if words and "-" in words[0] and len(words) >= 5:  # a mapping's header
            start, end = (int(x, 16) for x in words[0].split("-"))
            name = words[5] if len(words) > 5 else ""
            if name.startswith("/memfd:vmrt-template") or (
                    not name and (end - start) >> 20 == guest_mib):
                kind = "guest_ram"
            elif not name and "x" in words[1]:
                kind = "translation_cache"
            else:
                kind = "qemu"
        elif words and words[0] == "Pss:":
            parts[kind] += int(words[1])
    return parts


def main() -> int:
    parser = common.parser(__doc__, "idle.json")
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keepalive", type=float, default=10.0,
                        help="agent_keepalive_s of the watched variant (default %(default)s)")
    args = parser.parse_args()
    image = common.guest_image(args.root)
    # name -> (extra daemon config, runtime handler of its pods)
    watched = f"[runtime_handlers.watched]\nagent_keepalive_s = {args.keepalive}\n"
    variants = {"keepalive": (watched, "watched"),
                "no_keepalive": ("[runtime_handlers.quiet]\nagent_keepalive_s = 0\n", "quiet")}
    result: dict[str, object] = {"pods_per_variant": args.pods, "seconds": args.seconds,
                                 "keepalive_s": args.keepalive}
    with contextlib.ExitStack() as stack:
        daemons = {name: stack.enter_context(common.vmrtd(image, extra))
                   for name, (extra, _) in variants.items()}
        pids: dict[str, list[int]] = {}
        for name, daemon in daemons.items():
            pids[name] = []
            for _ in range(args.pods):
                config = daemon.pod_config()
                pod_id = daemon.run_pod(config, handler=variants[name][1])
                daemon.run_container(pod_id, config, ["sleep", "100000"])
                pids[name].append(daemon.qemu_pid(pod_id))
        vmrtd_pid = {name: d.proc.pid for name, d in daemons.items() if d.proc is not None}
        time.sleep(args.settle)
        start = {name: ([ticks(p) for p in pids[name]], ticks(vmrtd_pid[name]))
                 for name in daemons}
        began = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - began
        for name in daemons:
            qemu_now = [ticks(p) for p in pids[name]]
            vmrtd_now = ticks(vmrtd_pid[name])
            per_pod = [(b - a) / TICK / elapsed * 100 for a, b in zip(start[name][0], qemu_now,
                                                                         strict=True)]
            result[name] = {
                "qemu_cpu_percent_per_pod": per_pod,
                "qemu_cpu_percent_mean": sum(per_pod) / len(per_pod),
                "vmrtd_cpu_percent_per_pod":
                    (vmrtd_now - start[name][1]) / TICK / elapsed * 100 / args.pods,
                "qemu_pss_mib": [round(pss_kib(p) / 1024, 1) for p in pids[name]],
            }
    on, off = result["keepalive"], result["no_keepalive"]
    assert isinstance(on, dict) and isinstance(off, dict)
    result["keepalive_cost_percent_per_pod"] = (
        on["qemu_cpu_percent_mean"] + on["vmrtd_cpu_percent_per_pod"]
        - off["qemu_cpu_percent_mean"] - off["vmrtd_cpu_percent_per_pod"])
    return common.write_result(args.output, result)


if __name__ == "__main__":
    sys.exit(main())
