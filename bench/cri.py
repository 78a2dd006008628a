#!/usr/bin/env python3
"""CRI latency benchmark: RunPodSandbox and CreateContainer+StartContainer through a
real vmrtd, side by side with a bare boot of the same guest.

Each run, in turn: the bare boot of bench/boot.py, then RunPodSandbox, then
CreateContainer + StartContainer of a busybox container (timed until
StartContainer returns), then teardown (not timed). The JSON has every
sample, the medians and the ratios to the bare boot.

Usage: bench/cri.py [--runs 5] [--output bench/results/cri.json]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.boot import bare_boot
from vmrt.hypervisor.accel import choose_accel
from vmrt.sandbox.settings import VMConfig


def main() -> int:
    parser = common.parser(__doc__, "cri.json")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    config = VMConfig(accel=choose_accel("auto").name)

    base = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))
    socket = base / "vmrt.sock"
    (base / "config.toml").write_text(
        f'[cri]\nsocket = "{socket}"\n[storage]\nroot = "{base}/root"\nstate = "{base}/state"\n'
        f'[hypervisor]\nimage = "{image.directory}"\n')
    with (base / "vmrtd.log").open("wb") as daemon_log:
        daemon = subprocess.Popen([sys.executable, "-m", "vmrt.daemon.main", "--config",
                                   str(base / "config.toml")], stdout=subprocess.DEVNULL,
                                  stderr=daemon_log)
    samples: dict[str, list[float]] = {"bare": [], "run_pod": [], "create_start": []}
    try:
        channel = grpc.insecure_channel(f"unix://{socket}")
        rt = api_grpc.RuntimeServiceStub(channel)
        rt.Version(api.VersionRequest(), timeout=60, wait_for_ready=True)
        for run in range(args.runs):
            samples["bare"].append(bare_boot(image, config))
            pod_config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(
                name=f"bench-{run}", uid=f"uid-{run}", namespace="bench"),
                log_directory=str(base / "logs"))
            start = time.monotonic()
            pod_id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod_config),
                                      timeout=300).pod_sandbox_id
            samples["run_pod"].append(time.monotonic() - start)
            container_config = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="c"), image=api.ImageSpec(image="busybox"),
                command=["sleep", "60"], log_path="c.log")
            start = time.monotonic()
            container = rt.CreateContainer(api.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=container_config, sandbox_config=pod_config),
                timeout=60).container_id
            rt.StartContainer(api.StartContainerRequest(container_id=container), timeout=60)
            samples["create_start"].append(time.monotonic() - start)
            rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
            print(f"run {run + 1}/{args.runs}: " + "  ".join(
                f"{k} {v[-1]:.2f}s" for k, v in samples.items()), file=sys.stderr)
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(base, ignore_errors=True)

    median = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "benchmark": "cri",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "accel": config.accel},
        "runs": args.runs,
        "samples_s": samples,
        "median_s": median,
        "ratio": {"run_pod/bare": median["run_pod"] / median["bare"],
                  "create_start/bare": median["create_start"] / median["bare"]},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'':14}{'median':>9}{'ratio':>8}")
    for key in ("bare", "run_pod", "create_start"):
        ratio = median[key] / median["bare"]
        print(f"{key:14}{median[key]:8.2f}s{ratio:8.2f}")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
