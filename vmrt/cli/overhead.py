"""``vmrt overhead``: what a pod costs beyond its containers, measured here.

A probe pod (one sleeping container) is started through vmrtd with the
handler asked for; once it has settled, its QEMU's PSS is read from the
host (``smaps_rollup``) and its CPU time over a while from ``/proc/PID/stat``.
The containers' own working set, as the guest accounts it, is taken off the
memory: what is left is the VM around them (guest kernel, agent, translation
cache, QEMU), which is what a RuntimeClass's ``overhead.podFixed`` is for.
It is a figure of this node: a TCG node and a KVM node differ a lot, so an
installer runs it on each kind of node rather than shipping a constant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import yaml
from cri_api.v1 import api_pb2 as api

from vmrt.cli.cri_client import Client, CRIError, print_data, print_table
from vmrt.cli.launch import remove_pod
from vmrt.cli.workloads import ensure_image
from vmrt.metrics import qemu_pss

SETTLE_S = 5.0
HEADROOM = 1.10  # podFixed is the measurement plus 10 %, rounded up
EXAMPLE = """examples:
  vmrt overhead                        # the default handler, 30 s of idle CPU
  vmrt overhead --runtime vmrt -o json
  vmrt overhead --runtime vmrt --runtimeclass vmrt > runtimeclass.yaml"""


@dataclass
class Overhead:
    handler: str
    from_template: bool
    qemu_pss_mib: float
    containers_working_set_mib: float
    memory_mib: float
    idle_cpu_millicores: float
    measured_seconds: float
    pod_fixed_memory: str
    pod_fixed_cpu: str


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg,unused-ignore]
               common: argparse.ArgumentParser, output: argparse.ArgumentParser) -> None:
    p = sub.add_parser("overhead", parents=[common, output],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE,
                       help="measure what a pod costs beyond its containers on this node "
                            "(for a RuntimeClass's overhead)")
    p.add_argument("--runtime", default="", metavar="HANDLER", help="the handler to measure")
    p.add_argument("--image", default="busybox", help="the probe container's image")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="how long to measure the idle CPU (default 30)")
    p.add_argument("--runtimeclass", default="", metavar="NAME",
                   help="print a RuntimeClass of this name with the overhead instead")
    p.add_argument("--log-root", default=os.environ.get("VMRT_LOG_ROOT", "/var/log/vmrt"),
                   help="where the probe's log goes")
    p.set_defaults(func=_overhead)


def _overhead(args: argparse.Namespace) -> int:
    if getattr(args, "host", None):
        raise CRIError("vmrt overhead reads this node's /proc; run it on the node itself "
                       "(ssh NODE vmrt overhead)")
    if not 1.0 <= args.seconds <= 3600.0:
        raise CRIError(f"--seconds {args.seconds}: between 1 and 3600")
    client = Client.for_args(args)
    ensure_image(client, args.image, "missing")
    result = measure(client, args)
    if args.runtimeclass:
        print(yaml.safe_dump(runtime_class(args.runtimeclass, args.runtime or "vmrt", result),
                             sort_keys=False), end="")
    elif args.output != "table":
        print_data(asdict(result), args.output)
    else:
        print_table(["HANDLER", "FROM TEMPLATE", "QEMU PSS", "CONTAINERS", "OVERHEAD",
                     "IDLE CPU", "PODFIXED MEMORY", "PODFIXED CPU"],
                    [[result.handler or "(default)", "yes" if result.from_template else "no",
                      f"{result.qemu_pss_mib:.1f} MiB",
                      f"{result.containers_working_set_mib:.1f} MiB",
                      f"{result.memory_mib:.1f} MiB", f"{result.idle_cpu_millicores:.1f}m",
                      result.pod_fixed_memory, result.pod_fixed_cpu]])
    return 0


def measure(client: Client, args: argparse.Namespace) -> Overhead:
    token = secrets.token_hex(6)
    name, uid = f"overhead-{token}", secrets.token_hex(16)
    pod = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        hostname=name, log_directory=os.path.join(args.log_root, f"default_{name}_{uid}"))
    pod_id = client.rt("RunPodSandbox", api.RunPodSandboxRequest(
        config=pod, runtime_handler=args.runtime), timeout=max(args.timeout, 300.0)
    ).pod_sandbox_id
    try:
        container = client.rt("CreateContainer", api.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=pod, config=api.ContainerConfig(
                metadata=api.ContainerMetadata(name="probe"),
                image=api.ImageSpec(image=args.image), command=["sleep", "2147483647"],
                log_path="probe/0.log"))).container_id
        client.rt("StartContainer", api.StartContainerRequest(container_id=container))
        time.sleep(SETTLE_S)
        info = json.loads(client.rt("PodSandboxStatus", api.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True)).info["info"])
        vm = info.get("vm") or {}
        pid = int(vm.get("pid") or 0)
        if pid <= 0:
            raise CRIError(f"pod {pod_id[:13]} has no VM process to measure")
        began, ticks = time.monotonic(), _cpu_ticks(pid)
        time.sleep(args.seconds)
        elapsed, used = time.monotonic() - began, _cpu_ticks(pid) - ticks
        pss = qemu_pss(pid)
        stats = client.rt("ContainerStats", api.ContainerStatsRequest(container_id=container))
        working_set = stats.stats.memory.working_set_bytes.value
    finally:
        remove_pod(client, pod_id, pod.log_directory)
    memory_mib = max(0.0, (pss - working_set) / 2**20)
    millicores = used / os.sysconf("SC_CLK_TCK") / elapsed * 1000
    return Overhead(
        handler=args.runtime, from_template=bool(vm.get("from_template")),
        qemu_pss_mib=round(pss / 2**20, 1),
        containers_working_set_mib=round(working_set / 2**20, 1),
        memory_mib=round(memory_mib, 1), idle_cpu_millicores=round(millicores, 1),
        measured_seconds=round(elapsed, 1),
        pod_fixed_memory=f"{_round_up(memory_mib * HEADROOM, 8)}Mi",
        pod_fixed_cpu=f"{_round_up(millicores * HEADROOM, 10)}m")


def runtime_class(name: str, handler: str, result: Overhead) -> dict[str, Any]:
    return {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "vmrt"},
                         "annotations": {"vmrt.io/measured": (
                             f"vmrt overhead: QEMU PSS {result.qemu_pss_mib} MiB, containers "
                             f"{result.containers_working_set_mib} MiB, idle CPU "
                             f"{result.idle_cpu_millicores}m over {result.measured_seconds} s"
                             f"{', from a template' if result.from_template else ''}")}},
            "handler": handler,
            "overhead": {"podFixed": {"memory": result.pod_fixed_memory,
                                      "cpu": result.pod_fixed_cpu}},
            "scheduling": {"nodeSelector": {"vmrt.io/runtime": "true"}}}


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _round_up(value: float, step: int) -> int:
    return max(step, int(math.ceil(value / step) * step))
