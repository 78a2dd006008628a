#!/usr/bin/env python3
"""What a pod's own user namespace and an in-place resize cost.

Interleaved run by run, in one vmrtd:

  create_plain   CreateContainer + StartContainer in a pod without a user
                 namespace (the root filesystem a plain overlay)
  create_userns  the same in a pod with one (mode POD, 0 -> 100000 x 65536:
                 the layers and upper dir id-mapped on the host first)
  shrink, grow   UpdatePodSandboxResources of a 256 + 128 MiB, 2-vCPU VM
                 down to 256 + 64 MiB and 1 vCPU, and back (the balloon and
                 a vCPU offline/online), and QEMU's PSS before and after the
                 shrink (after writing 100 MiB in the guest and freeing it)

The JSON has every sample, the medians and the ratio create_userns /
create_plain (absolute times on these machines mean little).

Usage: bench/userns_resize.py [--runs 5] [--output bench/results/userns_resize.json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from cri_api.v1 import api_pb2 as api

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from vmrt.metrics import qemu_pss

MAPPING = [api.IDMapping(container_id=0, host_id=100000, length=65536)]


def resources(memory_mib: int, cpus: int) -> api.LinuxContainerResources:
    return api.LinuxContainerResources(memory_limit_in_bytes=memory_mib << 20,
                                       cpu_period=100_000, cpu_quota=cpus * 100_000)


def main() -> int:
    parser = common.parser(__doc__, "userns_resize.json")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    samples: dict[str, list[float]] = {k: [] for k in (
        "create_plain", "create_userns", "shrink", "grow", "pss_before_mib", "pss_after_mib")}
    with common.vmrtd(image) as d:
        for run in range(args.runs):
            for kind in ("plain", "userns"):
                options = api.NamespaceOption(userns_options=api.UserNamespace(
                    mode=api.POD, uids=MAPPING, gids=MAPPING)) if kind == "userns" else None
                config = d.pod_config(linux=api.LinuxPodSandboxConfig(
                    security_context=api.LinuxSandboxSecurityContext(namespace_options=options)))
                pod_id = d.run_pod(config)
                start = time.monotonic()
                d.run_container(pod_id, config, ["sleep", "60"], linux=api.LinuxContainerConfig(
                    security_context=api.LinuxContainerSecurityContext(
                        namespace_options=options)))
                samples[f"create_{kind}"].append(time.monotonic() - start)
                d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                           timeout=60)
            config = d.pod_config(linux=api.LinuxPodSandboxConfig(resources=resources(128, 1)))
            pod_id = d.run_pod(config)
            container = d.run_container(pod_id, config, ["sleep", "120"])
            # Guest RAM touched and freed, so the balloon has something to return.
            d.exec(container, ["sh", "-c", "head -c 100000000 /dev/zero > /dev/shm/x; "
                                           "rm /dev/shm/x"])
            samples["pss_before_mib"].append(qemu_pss(d.qemu_pid(pod_id)) / (1 << 20))
            for name, size in (("shrink", resources(64, 0)), ("grow", resources(128, 1))):
                start = time.monotonic()
                d.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(
                    pod_sandbox_id=pod_id, resources=size), timeout=60)
                samples[name].append(time.monotonic() - start)
                if name == "shrink":
                    samples["pss_after_mib"].append(qemu_pss(d.qemu_pid(pod_id)) / (1 << 20))
            d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
            print(f"run {run + 1}/{args.runs}: " + "  ".join(
                f"{k} {v[-1]:.2f}" for k, v in samples.items()), file=sys.stderr)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return common.write_result(args.output, {
        "samples": samples, "medians": medians,
        "ratios": {"create_userns/create_plain": medians["create_userns"]
                   / medians["create_plain"]}})


if __name__ == "__main__":
    sys.exit(main())
