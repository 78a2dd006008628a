#!/usr/bin/env python3
"""Pod network benchmark: host -> pod through the VM, against a plain netns + veth.

Side by side, N times each:

  vm      a vmrt pod (CNI bridge, tap + tc mirred, virtio-net under TCG) whose
          container runs busybox nc servers
  veth    a network namespace with a veth pair and the same busybox nc servers,
          no VM: what the host's network stack alone costs

Measured from the host's network namespace: TCP throughput (64 MiB into a
sink, until the server closes) and request round trips (1 byte out, 1 byte
back on one connection, 200 times; p50/p99).

Usage: bench/net.py [--runs 3] [--output bench/results/net.json]
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_api.v1 import api_pb2 as api
from pyroute2 import IPRoute, netns

from bench import common

PAYLOAD = 64 << 20
ROUND_TRIPS = 200
SINK, ECHO = 5001, 5002
SERVERS = (f"nc -ll -p {SINK} -e sh -c 'cat > /dev/null' & "
           f"nc -ll -p {ECHO} -e cat & wait")


def connect(ip: str, port: int, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((ip, port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def throughput(ip: str) -> float:
    block = b"x" * (1 << 20)
    with connect(ip, SINK) as sock:
        started = time.monotonic()
        for _ in range(PAYLOAD // len(block)):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the server closes once it has read everything
        return PAYLOAD / (time.monotonic() - started) / 1e6


def round_trips(ip: str) -> list[float]:
    samples = []
    with connect(ip, ECHO) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("echo server sent something else")
            samples.append((time.perf_counter() - started) * 1000)
    return samples


class PlainNetns:
    """A netns with a veth to the host and the same nc servers: no VM."""

    def __init__(self, busybox: Path) -> None:
        self.name = "bench-veth"
        if self.name in netns.listnetns():
            netns.remove(self.name)
        netns.create(self.name)
        with IPRoute() as ipr:
            ipr.link("add", ifname="bvh0", kind="veth", peer="bvn0")
            host = ipr.link_lookup(ifname="bvh0")[0]
            ipr.addr("add", index=host, address="10.250.0.1", prefixlen=24)
            ipr.link("set", index=host, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="bvn0")[0], net_ns_fd=self.name)
        subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c",
                        "ip addr add 10.250.0.2/24 dev bvn0 && ip link set bvn0 up && "
                        "ip link set lo up"], check=True)
        self.server = subprocess.Popen(["ip", "netns", "exec", self.name, str(busybox), "sh",
                                        "-c", SERVERS.replace("nc ", f"{busybox} nc ")
                                        .replace("cat", f"{busybox} cat")])
        self.ip = "10.250.0.2"

    def close(self) -> None:
        self.server.kill()
        for pid in subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                  text=True, check=False).stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname="bvh0"):
                ipr.link("del", index=index)
        netns.remove(self.name)


def main() -> int:
    parser = common.parser(__doc__, "net.json")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    results: dict[str, dict[str, list[float]]] = {
        "vm": {"MBps": [], "rtt_ms": []}, "veth": {"MBps": [], "rtt_ms": []}}
    with common.vmrtd(image) as daemon:
        plain = PlainNetns(image.busybox_rootfs / "bin" / "busybox")
        try:
            config = daemon.pod_config()
            pod_id = daemon.run_pod(config)
            daemon.run_container(pod_id, config, ["sh", "-c", SERVERS])
            pod_ip = daemon.runtime.PodSandboxStatus(
                api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
            for run in range(args.runs):
                for kind, ip in (("vm", pod_ip), ("veth", plain.ip)):
                    results[kind]["MBps"].append(throughput(ip))
                    results[kind]["rtt_ms"] += round_trips(ip)
                print(f"run {run + 1}/{args.runs}: vm {results['vm']['MBps'][-1]:.1f} MB/s, "
                      f"veth {results['veth']['MBps'][-1]:.1f} MB/s", file=sys.stderr)
        finally:
            plain.close()

    def summary(kind: str) -> dict[str, float]:
        rtt = sorted(results[kind]["rtt_ms"])
        return {"throughput_MBps": statistics.median(results[kind]["MBps"]),
                "rtt_p50_ms": rtt[len(rtt) // 2], "rtt_p99_ms": rtt[int(len(rtt) * 0.99)]}

    vm, veth = summary("vm"), summary("veth")
    result = {"benchmark": "net", "runs": args.runs, "payload_bytes": PAYLOAD,
              "round_trips_per_run": ROUND_TRIPS, "vm": vm, "veth": veth,
              "ratio": {"throughput vm/veth": vm["throughput_MBps"] / veth["throughput_MBps"],
                        "rtt_p50 vm/veth": vm["rtt_p50_ms"] / veth["rtt_p50_ms"]},
              "samples": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'':6}{'MB/s':>10}{'rtt p50':>10}{'rtt p99':>10}")
    for name, row in (("vm", vm), ("veth", veth)):
        print(f"{name:6}{row['throughput_MBps']:10.1f}{row['rtt_p50_ms']:9.3f}ms"
              f"{row['rtt_p99_ms']:9.3f}ms")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
