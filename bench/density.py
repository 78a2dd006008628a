#!/usr/bin/env python3
"""Density: start latency and the cost of idle pods, cold boots against
template clones, side by side in one run of one vmrtd.

One vmrtd with two handlers of the same VM settings: ``cold``
(``template = false``) and ``tmpl`` (``template = true``). Its template is
made first (one pod, then wait for it; and one for a sized pod: 128 MiB of
declared memory makes a VM of another size, so another template). Then:

1. latency, --runs rounds, interleaved: the bare boot of bench/boot.py,
   RunPodSandbox cold, RunPodSandbox from the template, and a sized pod
   from its template (each pod removed after it is timed);
2. --parallel RunPodSandbox calls at once from the template: p50/p99;
3. idle cost: --pods idle pods of each kind (one sleeping container each),
   then PSS per QEMU and MemAvailable's drop per pod, and over --seconds
   the CPU per pod (QEMU's ticks plus vmrtd's share) while a kubelet-like
   poller runs (ListPodSandbox and ListContainers every second,
   ListPodSandboxStats and ListContainerStats every 10 s).

The JSON also has where a start's time goes, cold and from a template
(medians of the steps vmrtd logs for each pod it starts).

Usage: bench/density.py [--runs 5] [--parallel 20] [--pods 20] [--seconds 30]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_api.v1 import api_pb2 as api

from bench import common
from bench.boot import bare_boot
from bench.idle import TICK, pss_breakdown_kib, pss_kib, ticks
from tests.cri.conftest import Daemon, wait_for
from vmrt.hypervisor.accel import choose_accel
from vmrt.runtime.sizing import meminfo_mib
from vmrt.sandbox.settings import VMConfig

HANDLERS = "[runtime_handlers.cold]\ntemplate = false\n[runtime_handlers.tmpl]\ntemplate = true\n"
SIZED = api.LinuxPodSandboxConfig(resources=api.LinuxContainerResources(
    memory_limit_in_bytes=128 << 20))


def templates_ready(daemon: Daemon, count: int) -> bool:
    return daemon.log_file.read_text().count(" ready in ") >= count


def timed_pod(daemon: Daemon, handler: str, sized: bool = False) -> tuple[str, float]:
    config = daemon.pod_config(linux=SIZED) if sized else daemon.pod_config()
    began = time.monotonic()
    pod_id = daemon.run_pod(config, handler=handler)
    return pod_id, time.monotonic() - began


def step_medians(daemon: Daemon, marker: str) -> dict[str, float]:
    """Medians of vmrtd's "pod ... started ... in T s: step t, ..." lines:
    network (CNI and the tap), then the VM's launched / restored /
    agent_ready / setup (seconds since the VM's start), and configured
    (since the network was up: the VM and the agent's ConfigureNetwork)."""
    steps: dict[str, list[float]] = {}
    for line in daemon.log_file.read_text().splitlines():
        if marker in line and ": " in line.split(marker, 1)[1]:
            for item in line.split(marker, 1)[1].split(": ", 1)[1].split(", "):
                name, value = item.rsplit(" ", 1)
                steps.setdefault(name, []).append(float(value))
    return {name: round(statistics.median(values), 3) for name, values in steps.items()}


def remove(daemon: Daemon, pod_id: str) -> None:
    daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=120)


def poller(daemon: Daemon, stop: threading.Event) -> None:
    """What kubelet asks of an idle node."""
    rt = daemon.runtime
    second = 0
    while not stop.is_set():
        rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30)
        rt.ListContainers(api.ListContainersRequest(), timeout=30)
        if second % 10 == 0:
            rt.ListPodSandboxStats(api.ListPodSandboxStatsRequest(), timeout=60)
            rt.ListContainerStats(api.ListContainerStatsRequest(), timeout=60)
        second += 1
        stop.wait(1.0)


def idle_group(daemon: Daemon, handler: str, pods: int) -> tuple[list[str], list[int], float]:
    """--pods idle pods: their ids, QEMU pids, and MemAvailable's drop per pod (MiB)."""
    before = meminfo_mib("MemAvailable")
    ids, pids = [], []
    for _ in range(pods):
        config = daemon.pod_config()
        pod_id = daemon.run_pod(config, handler=handler)
        daemon.run_container(pod_id, config, ["sleep", "100000"])
        ids.append(pod_id)
        pids.append(daemon.qemu_pid(pod_id))
    time.sleep(10)  # the boots' and the containers' start settle
    return ids, pids, (before - meminfo_mib("MemAvailable")) / pods


def main() -> int:
    parser = common.parser(__doc__, "density.json")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    config = VMConfig(accel=choose_accel("auto").name)
    result: dict[str, object] = {"runs": args.runs, "parallel": args.parallel,
                                 "pods": args.pods, "seconds": args.seconds}
    with common.vmrtd(image, HANDLERS) as daemon:
        # The templates: vmrtd builds the base size's at start-up, and the
        # first sized pod (cold) starts the other's.
        for sized, count in ((False, 1), (True, 2)):
            pod_id, _ = timed_pod(daemon, "tmpl", sized)
            assert wait_for(lambda c=count: templates_ready(daemon, c), timeout=600,
                            interval=1.0), "the template was not built"
            remove(daemon, pod_id)

        samples: dict[str, list[float]] = {"bare": [], "cold": [], "template": [],
                                           "sized_template": []}
        for run in range(args.runs):
            samples["bare"].append(bare_boot(image, config))
            for key, handler, sized in (("cold", "cold", False), ("template", "tmpl", False),
                                        ("sized_template", "tmpl", True)):
                pod_id, seconds = timed_pod(daemon, handler, sized)
                if key != "cold":
                    assert daemon.pod_info(pod_id)["vm"]["from_template"], key
                samples[key].append(seconds)
                remove(daemon, pod_id)
            print(f"run {run + 1}/{args.runs}: " + "  ".join(
                f"{k} {v[-1]:.2f}s" for k, v in samples.items()), file=sys.stderr)
        median = {k: statistics.median(v) for k, v in samples.items()}
        result["start_s"] = {"samples": samples, "median": median}
        result["template_start_steps_s"] = step_medians(daemon, " from a template in ")
        result["cold_start_steps_s"] = step_medians(daemon, " started in ")
        result["start_ratio_to_bare"] = {k: round(v / median["bare"], 3)
                                         for k, v in median.items()}

        with ThreadPoolExecutor(args.parallel) as pool:
            timed = list(pool.map(lambda _: timed_pod(daemon, "tmpl"), range(args.parallel)))
        latencies = [seconds for _, seconds in timed]
        result["parallel_template_s"] = {"p50": round(common.percentile(latencies, 0.5), 3),
                                         "p99": round(common.percentile(latencies, 0.99), 3)}
        for pod_id, _ in timed:
            remove(daemon, pod_id)

        assert daemon.proc is not None
        vmrtd_pid = daemon.proc.pid
        for kind, handler in (("cold", "cold"), ("template", "tmpl")):
            ids, pids, drop = idle_group(daemon, handler, args.pods)
            stop = threading.Event()
            poll = threading.Thread(target=poller, args=(daemon, stop), daemon=True)
            poll.start()
            time.sleep(2)
            start = [ticks(p) for p in pids], ticks(vmrtd_pid)
            began = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - began
            qemu = [(ticks(p) - a) / TICK / elapsed * 100 for p, a in zip(pids, start[0],
                                                                          strict=True)]
            vmrtd_share = (ticks(vmrtd_pid) - start[1]) / TICK / elapsed * 100 / args.pods
            stop.set()
            poll.join(30)
            pss = [pss_kib(p) / 1024 for p in pids]
            parts = [pss_breakdown_kib(p, daemon.pod_info(i)["vm"]["memory_mib"])
                     for i, p in zip(ids, pids, strict=True)]
            result[f"idle_{kind}"] = {
                "pss_mib_per_qemu_by_part": {
                    part: round(statistics.mean(p[part] for p in parts) / 1024, 1)
                    for part in parts[0]},
                "pss_mib_per_qemu": round(statistics.mean(pss), 1),
                "mem_available_drop_mib_per_pod": round(drop, 1),
                "qemu_cpu_percent_per_pod": round(statistics.mean(qemu), 3),
                "vmrtd_cpu_percent_per_pod": round(vmrtd_share, 3),
            }
            for pod_id in ids:
                remove(daemon, pod_id)
    return common.write_result(args.output, result)


if __name__ == "__main__":
    sys.exit(main())
