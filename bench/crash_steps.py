#!/usr/bin/env python3
"""vmrtd SIGKILLed at every step of RunPodSandbox, CreateContainer and
StopPodSandbox (vmrt/crashpoint.py), restarted, and judged: what became of
the pod (gone, ready and working, or NOTREADY with a reason), stray container
directories or intents, and leaks (qemu, mounts, netns, taps, leases,
iptables rules, cgroups) once kubelet's stop and remove have run.

Usage: bench/crash_steps.py [--only run:vm-started ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from tests.helpers.crashsteps import crash_and_recover
from vmrt import crashpoint


def main() -> int:
    parser = common.parser(__doc__, "crash_steps.json")
    parser.add_argument("--only", nargs="*", default=[], help="OP:STEP ... (default: all)")
    args = parser.parse_args()
    steps = [(op, step) for op, names in crashpoint.STEPS.items() for step in names
             if not args.only or f"{op}:{step}" in args.only]
    image = common.guest_image(args.root)
    results = []
    began = time.monotonic()
    with common.vmrtd(image) as daemon:
        for op, step in steps:
            try:
                outcome = crash_and_recover(daemon, op, step)
            except Exception as exc:  # recorded, and the next step gets a fresh daemon
                outcome = {"op": op, "step": step, "ok": False, "error": repr(exc)}
                daemon.env = {}
                daemon.cleanup()
                daemon.start()
            print(f"{op}:{step}: {outcome}", file=sys.stderr)
            results.append(outcome)
    return common.write_result(args.output, {
        "steps": len(results), "ok": sum(1 for r in results if r["ok"]),
        "seconds": round(time.monotonic() - began), "results": results})


if __name__ == "__main__":
    sys.exit(main())
