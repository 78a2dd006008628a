#!/usr/bin/env python3
"""The long run of the CRI fuzzer (tests/fuzz/cri.py): N generated requests
(10,000 by default) across every RPC against a real vmrtd, then a check that
nothing outside vmrt's directories and the requested log directories
changed. Writes the counts per status code and per RPC, and every problem
found, as JSON."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from tests.fuzz.cri import Fuzzer, HostSnapshot, allowed_paths, new_scratch


def main() -> int:
    parser = common.parser(__doc__, "fuzz_cri.json")
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    scratch = new_scratch()
    try:
        with common.vmrtd(image) as daemon:
            before = HostSnapshot.take()
            fuzzer = Fuzzer(daemon, scratch)
            fuzzer.prepare()
            outcome = fuzzer.run(args.requests)
            alive = daemon.proc is not None and daemon.proc.poll() is None
            changes = before.changes(HostSnapshot.take(), allowed_paths(daemon, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {**outcome.summary(), "vmrtd_alive": alive, "host_changes": changes}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_rpc"}, indent=2))
    return 0 if alive and not outcome.problems and not changes else 1


if __name__ == "__main__":
    sys.exit(main())
