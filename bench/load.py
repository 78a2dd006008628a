#!/usr/bin/env python3
"""Load: ExecSync loops in --pods pods at once for --minutes, then vmrtd
SIGKILLed and restarted with all those pods running.

One thread per pod calls ExecSync (`echo ok`) in a loop. The JSON gives the
calls made, the errors, ExecSync latency (p50/p99/max), vmrtd's RSS at the
start and the end of the loop, watchdog false positives (pods that went
NOTREADY, and "stopped answering" lines in vmrtd's log), and for the restart:
seconds until CRI answers, until every pod is READY and answers an
ExecSync, and whether any QEMU was killed or replaced.

Usage: bench/load.py [--pods 30] [--minutes 10]
"""

from __future__ import annotations

import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from cri_api.v1 import api_pb2 as api

from bench import common
from tests.cri.conftest import Daemon
from tests.helpers import leaks


def rss_kib(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return common.rss_kib(daemon.proc.pid)


def exec_loop(daemon: Daemon, container: str, until: float, latencies: list[float],
              errors: list[str]) -> None:
    while time.monotonic() < until:
        began = time.perf_counter()
        try:
            reply = daemon.exec(container, ["echo", "ok"], timeout=60)
            if reply.stdout != b"ok\n" or reply.exit_code != 0:
                errors.append(f"{container[:12]}: {reply.exit_code} {reply.stdout[:80]!r}")
        except grpc.RpcError as exc:
            errors.append(f"{container[:12]}: {exc.code().name} {exc.details()}")
            time.sleep(1)
            continue
        latencies.append(time.perf_counter() - began)


def recover_all(daemon: Daemon, pods: dict[str, str]) -> dict[str, object]:
    """SIGKILL vmrtd with every pod running; the restart's times."""
    before = sorted(leaks.qemu_processes(str(daemon.state)))
    daemon.stop(signal.SIGKILL)
    began = time.monotonic()
    daemon.start()  # returns once Version answers
    served = time.monotonic() - began
    answered: dict[str, float] = {}

    def answer(pod_id: str, container: str) -> None:
        try:
            daemon.exec(container, ["echo", "ok"], timeout=60)
            answered[pod_id] = time.monotonic() - began
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=answer, args=item) for item in pods.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    states = daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=60).items
    ready = [p.id for p in states if p.state == api.SANDBOX_READY]
    return {
        "seconds_to_serve": round(served, 2),
        "seconds_to_all_answering": round(max(answered.values()), 2) if answered else None,
        "pods_answering": len(answered), "pods_ready": len(ready),
        "qemu_unchanged": sorted(leaks.qemu_processes(str(daemon.state))) == before,
    }


def main() -> int:
    parser = common.parser(__doc__, "load.json")
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    result: dict[str, object] = {"pods": args.pods, "minutes": args.minutes}
    with common.vmrtd(image) as daemon:
        pods: dict[str, str] = {}
        began = time.monotonic()
        for n in range(args.pods):
            config = daemon.pod_config()
            pod_id = daemon.run_pod(config)
            pods[pod_id] = daemon.run_container(pod_id, config, ["sleep", "100000"])
            print(f"pod {n + 1}/{args.pods} up", file=sys.stderr)
        result["seconds_to_start_pods"] = round(time.monotonic() - began, 1)
        latencies: list[float] = []
        errors: list[str] = []
        rss_start = rss_kib(daemon)
        until = time.monotonic() + args.minutes * 60
        threads = [threading.Thread(target=exec_loop, args=(daemon, c, until, latencies, errors))
                   for c in pods.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_end = rss_kib(daemon)
        states = daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=60).items
        log = daemon.log_file.read_text(errors="replace")
        result.update({
            "exec_calls": len(latencies), "errors": len(errors), "error_list": errors[:20],
            "exec_seconds": {"p50": round(statistics.median(latencies), 3) if latencies else 0,
                             "p99": round(common.percentile(latencies, 0.99), 3),
                             "max": round(max(latencies), 3) if latencies else 0},
            "vmrtd_rss_kib": {"start": rss_start, "end": rss_end},
            "watchdog_false_positives": {
                "pods_notready": sum(1 for p in states if p.state != api.SANDBOX_READY),
                "stopped_answering_lines": log.count("the guest stopped answering"),
                "missed_probe_lines": log.count("did not answer ("),
            },
        })
        result["recovery_after_sigkill"] = recover_all(daemon, pods)
    return common.write_result(args.output, result)


if __name__ == "__main__":
    sys.exit(main())
