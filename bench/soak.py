#!/usr/bin/env python3
"""Soak: pod + container + ExecSync + port-forward + remove, --cycles times, and
what is left on the node and in vmrtd afterwards.

Each cycle runs a pod with an echo server (`nc -ll -e cat`), execs into it,
sends a line through a port-forward and reads it back, then stops and
removes the pod. Before the first cycle, after --warmup cycles and at the
end it counts: qemu processes, mounts under the state dir, vmrt netns and
taps, CNI leases of the daemon's network, and vmrtd's open fds, threads,
asyncio tasks and RSS. The JSON gives the counts, the difference between
the warm and final ones (all zero when nothing leaks) and per-step times.

Usage: bench/soak.py [--cycles 200] [--warmup 3]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_api.v1 import api_pb2 as api
from pyroute2 import IPRoute, netns

from bench import common
from tests.cri.conftest import Daemon
from tests.helpers import leaks
from vmrt.network.pod import netns_name, tap_name
from vmrt.streaming import client

ECHO = 5002


def vmrtd_counts(daemon: Daemon) -> dict[str, int]:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    rss = common.rss_kib(pid)
    reply = daemon.runtime.Status(api.StatusRequest(verbose=True), timeout=30)
    streaming = json.loads(reply.info["streaming"])
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": streaming["threads"],
            "tasks": streaming["tasks"], "rss_kib": rss}


def node_counts(daemon: Daemon, made: list[str]) -> dict[str, int]:
    """What the soak's own pods (``made``: every pod id it ran) left on the node."""
    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    namespaces = set(netns.listnetns())
    leases = daemon.network.ipam_dir
    return {
        "qemu": len(leaks.qemu_processes(str(daemon.state))),
        "mounts": len(leaks.mounts_under(daemon.state)),
        "netns": sum(1 for pod_id in made if netns_name(pod_id) in namespaces),
        "taps": sum(1 for pod_id in made if tap_name(pod_id) in links),
        "leases": sum(1 for p in leases.glob("*") if p.name[0].isdigit()) if leases.is_dir()
        else 0,
        "pod_records": sum(1 for _ in (daemon.root / "pods").glob("*")),
        "container_dirs": sum(1 for _ in (daemon.root / "containers").glob("*")),
    }


def counts(daemon: Daemon, made: list[str]) -> dict[str, int]:
    return {**node_counts(daemon, made), **vmrtd_counts(daemon)}


async def echo_through_port_forward(daemon: Daemon, pod_id: str) -> None:
    url = daemon.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=pod_id,
                                                            port=[ECHO]), timeout=30).url
    session, serving, _ = await client.connect(url, ["portforward.k8s.io"])
    try:
        headers = [("streamType", "error"), ("port", str(ECHO)), ("requestID", "0")]
        error = await session.open_stream(headers)
        await error.close()
        data = await session.open_stream([("streamType", "data"), *headers[1:]])
        await data.write(b"ping\n")
        await data.close()
        echoed = await asyncio.wait_for(client.read_all(data), 30)
        if echoed != b"ping\n":
            raise RuntimeError(f"port-forward echoed {echoed!r}")
    finally:
        await session.close()
        serving.cancel()


def cycle(daemon: Daemon, times: dict[str, list[float]], made: list[str]) -> None:
    def timed(step: str, fn):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        value = fn()
        times.setdefault(step, []).append(time.perf_counter() - began)
        return value

    config = daemon.pod_config()
    pod_id = timed("run_pod", lambda: daemon.run_pod(config))
    made.append(pod_id)
    container = timed("create_start", lambda: daemon.run_container(
        pod_id, config, ["sh", "-c", f"nc -ll -p {ECHO} -e cat"]))
    reply = timed("exec_sync", lambda: daemon.exec(container, ["echo", "ok"]))
    if reply.stdout != b"ok\n":
        raise RuntimeError(f"ExecSync said {reply.stdout!r}")
    # The server may need a moment to listen after the start.
    for attempt in range(50):
        try:
            timed("port_forward", lambda: asyncio.run(echo_through_port_forward(daemon, pod_id)))
            break
        except Exception:
            if attempt == 49:
                raise
            time.sleep(0.1)
    timed("stop_remove", lambda: (
        daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=60),
        daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                        timeout=60)))
    daemon.pod_ids.remove(pod_id)


def main() -> int:
    parser = common.parser(__doc__, "soak.json")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    times: dict[str, list[float]] = {}
    errors: list[str] = []
    made: list[str] = []
    began = time.monotonic()
    with common.vmrtd(image) as daemon:
        start = counts(daemon, made)
        warm = start
        for n in range(args.cycles):
            try:
                cycle(daemon, times, made)
            except Exception as exc:
                errors.append(f"cycle {n}: {exc!r}")
                print(f"cycle {n}: {exc!r}", file=sys.stderr)
            if n + 1 == args.warmup:
                warm = counts(daemon, made)
            if (n + 1) % 10 == 0:
                print(f"{n + 1}/{args.cycles} cycles, {len(errors)} errors", file=sys.stderr)
        time.sleep(2)  # the last teardown's tasks end
        end = counts(daemon, made)
    return common.write_result(args.output, {
        "cycles": args.cycles, "errors": len(errors), "error_list": errors[:20],
        "seconds": round(time.monotonic() - began),
        "counts": {"start": start, f"after_{args.warmup}_cycles": warm, "end": end},
        "end_minus_warm": {k: end[k] - warm[k] for k in end},
        "step_seconds": {step: {"p50": round(statistics.median(v), 3),
                                "max": round(max(v), 3)} for step, v in times.items()},
    })


if __name__ == "__main__":
    sys.exit(main())
