#!/usr/bin/env python3
"""Streaming benchmark: exec and port-forward through vmrtd, side by side with the
paths that bypass the streaming server.

In one pod, N samples each, interleaved:

  exec        a whole streaming exec of `true` over SPDY (CRI Exec, upgrade,
              streams, exit status), as crictl runs it
  execsync    the same command through CRI ExecSync
  interactive one exec session running `cat`: 1 byte in on stdin, back on
              stdout, 200 times (what typing in `kubectl exec -it` feels like)
  tcp-echo    the same 1-byte round trip over direct TCP to the pod IP
              (busybox nc -e cat), no streaming server and no agent
  pf-up/down  64 MiB through `port-forward` (SPDY, one stream pair) into a sink
              in the pod / out of a source in the pod
  tcp-up/down the same over direct TCP to the pod IP

Usage: bench/streaming.py [--samples 50] [--output bench/results/streaming.json]
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_api.v1 import api_pb2 as api

from bench import common
from bench.net import ECHO, PAYLOAD, SINK, connect, round_trips
from tests.cri.conftest import Daemon
from vmrt.streaming import client

SOURCE = 5003
SERVERS = (f"nc -ll -p {SINK} -e sh -c 'cat > /dev/null' & "
           f"nc -ll -p {ECHO} -e cat & "
           f"nc -ll -p {SOURCE} -e sh -c 'head -c {PAYLOAD} /dev/zero' & wait")
ROUND_TRIPS = 200


def percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": common.percentile(samples, 0.5),
            "p99_ms": common.percentile(samples, 0.99), "n": len(samples)}


async def streaming_exec(daemon: Daemon, cid: str) -> float:
    started = time.perf_counter()
    url = daemon.runtime.Exec(api.ExecRequest(container_id=cid, cmd=["true"], stdout=True,
                                              stderr=True), timeout=30).url
    session, serving, _ = await client.connect(url, ["v4.channel.k8s.io"])
    error = await session.open_stream([("streamType", "error")])
    await error.close()
    out = await session.open_stream([("streamType", "stdout")])
    err = await session.open_stream([("streamType", "stderr")])
    await asyncio.gather(client.read_all(out), client.read_all(err))
    status = json.loads(await client.read_all(error))
    elapsed = (time.perf_counter() - started) * 1000
    await session.close()
    serving.cancel()
    if status.get("status") != "Success":
        raise RuntimeError(f"exec failed: {status}")
    return elapsed


def exec_sync(daemon: Daemon, cid: str) -> float:
    started = time.perf_counter()
    reply = daemon.runtime.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=["true"],
                                                        timeout=30), timeout=60)
    if reply.exit_code != 0:
        raise RuntimeError(f"ExecSync failed: {reply}")
    return (time.perf_counter() - started) * 1000


async def interactive(daemon: Daemon, cid: str) -> list[float]:
    url = daemon.runtime.Exec(api.ExecRequest(container_id=cid, cmd=["cat"], stdin=True,
                                              stdout=True, stderr=True), timeout=30).url
    session, serving, _ = await client.connect(url, ["v4.channel.k8s.io"])
    error = await session.open_stream([("streamType", "error")])
    await error.close()
    stdin = await session.open_stream([("streamType", "stdin")])
    out = await session.open_stream([("streamType", "stdout")])
    await session.open_stream([("streamType", "stderr")])
    samples = []
    for _ in range(ROUND_TRIPS):
        started = time.perf_counter()
        await stdin.write(b"x")
        if await out.read() != b"x":
            raise RuntimeError("cat sent something else")
        samples.append((time.perf_counter() - started) * 1000)
    await stdin.close()
    await client.read_all(error)
    await session.close()
    serving.cancel()
    return samples


async def forward(daemon: Daemon, pod_id: str, upload: bool) -> float:
    """MB/s through one port-forward stream pair, into SINK or out of SOURCE."""
    port = SINK if upload else SOURCE
    url = daemon.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=pod_id,
                                                            port=[port]), timeout=30).url
    session, serving, _ = await client.connect(url, ["portforward.k8s.io"])
    headers = [("streamType", "error"), ("port", str(port)), ("requestID", "0")]
    error = await session.open_stream(headers)
    await error.close()
    data = await session.open_stream([("streamType", "data"), *headers[1:]])
    started = time.perf_counter()
    if upload:
        block = b"x" * (1 << 20)
        for _ in range(PAYLOAD // len(block)):
            await data.write(block)
        await data.close()
        await client.read_all(data)  # the sink closes once it has read everything
    else:
        await data.close()
        received = len(await client.read_all(data))
        if received != PAYLOAD:
            raise RuntimeError(f"port-forward delivered {received} of {PAYLOAD} bytes")
    elapsed = time.perf_counter() - started
    problem = await client.read_all(error)
    await session.close()
    serving.cancel()
    if problem:
        raise RuntimeError(problem.decode())
    return PAYLOAD / elapsed / 1e6


def tcp_transfer(ip: str, upload: bool) -> float:
    with connect(ip, SINK if upload else SOURCE) as sock:
        started = time.perf_counter()
        if upload:
            block = b"x" * (1 << 20)
            for _ in range(PAYLOAD // len(block)):
                sock.sendall(block)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
        else:
            received = 0
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
            if received != PAYLOAD:
                raise RuntimeError(f"direct TCP delivered {received} of {PAYLOAD} bytes")
        return PAYLOAD / (time.perf_counter() - started) / 1e6


def main() -> int:
    parser = common.parser(__doc__, "streaming.json")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--transfers", type=int, default=3)
    args = parser.parse_args()
    image = common.guest_image(args.root)
    samples: dict[str, list[float]] = {k: [] for k in (
        "exec", "execsync", "interactive", "tcp-echo", "pf-up", "tcp-up", "pf-down",
        "tcp-down")}
    with common.vmrtd(image) as daemon:
        config = daemon.pod_config()
        pod_id = daemon.run_pod(config)
        cid = daemon.run_container(pod_id, config, ["sh", "-c", SERVERS])
        ip = daemon.runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
        connect(ip, ECHO).close()
        for _ in range(args.samples):
            samples["exec"].append(asyncio.run(streaming_exec(daemon, cid)))
            samples["execsync"].append(exec_sync(daemon, cid))
        print(f"exec p50 {statistics.median(samples['exec']):.1f} ms, ExecSync p50 "
              f"{statistics.median(samples['execsync']):.1f} ms", file=sys.stderr)
        for _ in range(3):
            samples["interactive"] += asyncio.run(interactive(daemon, cid))
            samples["tcp-echo"] += round_trips(ip)
        for run in range(args.transfers):
            for upload, pf, tcp in ((True, "pf-up", "tcp-up"), (False, "pf-down", "tcp-down")):
                samples[pf].append(asyncio.run(forward(daemon, pod_id, upload)))
                samples[tcp].append(tcp_transfer(ip, upload))
            print(f"transfer {run + 1}/{args.transfers}: port-forward up "
                  f"{samples['pf-up'][-1]:.1f} / down {samples['pf-down'][-1]:.1f} MB/s, "
                  f"direct {samples['tcp-up'][-1]:.1f} / {samples['tcp-down'][-1]:.1f} MB/s",
                  file=sys.stderr)

    latency = {k: percentiles(samples[k]) for k in ("exec", "execsync", "interactive",
                                                    "tcp-echo")}
    throughput = {k: statistics.median(samples[k]) for k in ("pf-up", "tcp-up", "pf-down",
                                                             "tcp-down")}
    result = {
        "benchmark": "streaming", "samples_per_latency": args.samples,
        "payload_bytes": PAYLOAD, "latency": latency, "throughput_MBps": throughput,
        "ratio": {
            "exec/execsync p50": latency["exec"]["p50_ms"] / latency["execsync"]["p50_ms"],
            "exec/execsync p99": latency["exec"]["p99_ms"] / latency["execsync"]["p99_ms"],
            "interactive/tcp-echo p50":
                latency["interactive"]["p50_ms"] / latency["tcp-echo"]["p50_ms"],
            "port-forward/direct up": throughput["pf-up"] / throughput["tcp-up"],
            "port-forward/direct down": throughput["pf-down"] / throughput["tcp-down"],
        },
        "samples": samples,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'':12}{'p50':>10}{'p99':>10}")
    for name, row in latency.items():
        print(f"{name:12}{row['p50_ms']:8.2f}ms{row['p99_ms']:8.2f}ms")
    for name, value in throughput.items():
        print(f"{name:12}{value:8.1f} MB/s")
    for name, value in result["ratio"].items():  # type: ignore[attr-defined]
        print(f"{name:28}{value:8.2f}")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
