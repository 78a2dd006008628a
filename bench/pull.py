#!/usr/bin/env python3
"""Pull throughput: vmrt's image store against ``skopeo copy`` of the same image.

A 50 MB image (one gzip layer of random bytes, so compression cannot flatter
anyone) is pushed to a local docker-registry. Then, side by side, N times:

  vmrt cold   pull into an empty store (download, verify, unpack)
  vmrt warm   pull again into another empty store (registry data in page cache)
  vmrt again  pull into the store that already has it (manifest check only)
  skopeo      ``skopeo copy docker://... dir:...`` into an empty directory
              (download and verify, no unpacking)

Reports MB/s and ratios vmrt/skopeo in JSON.

Usage: bench/pull.py [--runs 3] [--output bench/results/pull.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from tests.helpers.oci import Entry, Image, Layer, Layout, push
from tests.helpers.registry import Registry
from vmrt.images.registry import Credentials, RegistryClient
from vmrt.images.store import ImageStore

SIZE = 50 * 1024 * 1024


async def vmrt_pull(root: Path, registry: str, name: str) -> float:
    store = ImageStore(root, RegistryClient({registry: [f"http://{registry}"]}))
    started = time.monotonic()
    await store.pull(name, Credentials(), progress=lambda message: None)
    elapsed = time.monotonic() - started
    assert store.registry is not None
    await store.registry.close()
    return elapsed


def skopeo_copy(registry: str, name: str, destination: Path) -> float:
    started = time.monotonic()
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{name}",
                    f"dir:{destination}"], check=True, capture_output=True, timeout=300)
    return time.monotonic() - started


def main() -> int:
    parser = common.parser(__doc__, "pull.json", root=False)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vp-", dir="/tmp"))
    registry = Registry(base / "registry")
    samples: dict[str, list[float]] = {"vmrt_cold": [], "vmrt_warm": [], "vmrt_again": [],
                                       "skopeo": []}
    try:
        layout = Layout(base / "layout")
        layout.add("big", Image([Layer([Entry("random.bin", os.urandom(SIZE))], "gzip")]))
        name = f"{registry.address}/bench/big:1"
        push(layout.path, "big", name)
        subprocess.run(["sync"], check=False)
        for run in range(args.runs):
            # Cold: drop the page cache so the registry reads its disk.
            subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
            root = base / f"cold-{run}"
            samples["vmrt_cold"].append(asyncio.run(vmrt_pull(root, registry.address, name)))
            samples["vmrt_warm"].append(asyncio.run(
                vmrt_pull(base / f"warm-{run}", registry.address, name)))
            samples["vmrt_again"].append(asyncio.run(vmrt_pull(root, registry.address, name)))
            samples["skopeo"].append(skopeo_copy(registry.address, name, base / f"sk-{run}"))
            for path in (root, base / f"warm-{run}", base / f"sk-{run}"):
                shutil.rmtree(path, ignore_errors=True)
            print(f"run {run + 1}/{args.runs}: " + "  ".join(
                f"{k} {v[-1]:.2f}s" for k, v in samples.items()), file=sys.stderr)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in samples.items()}
    mb = SIZE / 1e6
    result = {
        "benchmark": "pull", "image_bytes": SIZE, "runs": args.runs,
        "samples_s": samples, "median_s": median,
        "throughput_MBps": {k: mb / v for k, v in median.items() if k != "vmrt_again"},
        "ratio_time": {"vmrt_cold/skopeo": median["vmrt_cold"] / median["skopeo"],
                       "vmrt_warm/skopeo": median["vmrt_warm"] / median["skopeo"]},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for key, value in median.items():
        rate = f"{mb / value:8.1f} MB/s" if key != "vmrt_again" else ""
        print(f"{key:12}{value:8.2f}s {rate}")
    print(f"vmrt cold / skopeo: {result['ratio_time']['vmrt_cold/skopeo']:.2f}x the time")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
