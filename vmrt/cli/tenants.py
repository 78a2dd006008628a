"""``vmrt tenant ls`` and ``vmrt tenant rm``: the node's pods grouped by tenant.

vmrtd says which tenant each pod is in (PodSandboxStatus, verbose) and which
tenants its config declares (Status, verbose); the CLI only adds them up.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.cli import tenantcheck
from vmrt.cli.cri_client import Client, CRIError, print_data, print_table

TENANT_EXAMPLE = """examples:
  vmrt tenant ls
  vmrt tenant ls -o json
  vmrt tenant rm blue
  vmrt tenant check blue green"""
CPU_SAMPLE_S = 1.0


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg,unused-ignore]
                common: argparse.ArgumentParser, output: argparse.ArgumentParser) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    tenant = sub.add_parser("tenant", formatter_class=raw, epilog=TENANT_EXAMPLE,
                            help="pods grouped by tenant: list them, remove a tenant's, check two")
    verbs = tenant.add_subparsers(dest="tenant_command", required=True)
    p = verbs.add_parser("ls", parents=[common, output], formatter_class=raw,
                         epilog="example:\n  vmrt tenant ls -o yaml",
                         help="per tenant: pods, containers, VM memory and CPU in use")
    p.set_defaults(func=_ls)
    p = verbs.add_parser("rm", parents=[common], formatter_class=raw,
                         epilog="example:\n  vmrt tenant rm blue",
                         help="stop and remove every pod of a tenant")
    p.add_argument("name", metavar="TENANT")
    tenantcheck.add_parser(verbs, common, output)
    p.set_defaults(func=_rm)


@dataclass
class TenantUsage:
    name: str
    namespaces: list[str] = field(default_factory=list)
    pods: int = 0
    pods_ready: int = 0
    containers: int = 0
    containers_running: int = 0
    vm_memory_mib: int = 0  # the full size of its ready pods' VMs
    vcpus: int = 0
    cpu_percent: float = 0.0  # of one core, over the sample
    max_pods: int = 0
    max_memory_mib: int = 0


def usage(client: Client, sample_s: float = CPU_SAMPLE_S) -> list[TenantUsage]:
    info = client.rt("Status", api.StatusRequest(verbose=True)).info
    declared: dict[str, Any] = json.loads(info.get("tenants", "{}"))
    tenants = {name: TenantUsage(name, list(spec.get("namespaces", [])),
                                 max_pods=int(spec.get("maxPods", 0)),
                                 max_memory_mib=int(spec.get("maxMemoryMiB", 0)))
               for name, spec in declared.items()}
    first = _cpu_sample(client)
    started = time.monotonic()
    pods = client.rt("ListPodSandbox", api.ListPodSandboxRequest()).items
    owner: dict[str, TenantUsage] = {}
    for pod in pods:
        try:
            status = client.rt("PodSandboxStatus", api.PodSandboxStatusRequest(
                pod_sandbox_id=pod.id, verbose=True))
        except CRIError as exc:
            if "NOT_FOUND" in str(exc):  # removed since the listing
                continue
            raise
        details = json.loads(status.info.get("info", "{}"))
        name = details.get("tenant") or pod.metadata.namespace
        entry = tenants.setdefault(name, TenantUsage(name))
        if pod.metadata.namespace not in entry.namespaces:
            entry.namespaces.append(pod.metadata.namespace)
        owner[pod.id] = entry
        entry.pods += 1
        vm = details.get("vm") or {}
        if pod.state == api.SANDBOX_READY:
            entry.pods_ready += 1
            entry.vm_memory_mib += int(vm.get("memory_mib", 0))
            entry.vcpus += int(vm.get("vcpus", 0))
    for container in client.rt("ListContainers", api.ListContainersRequest()).containers:
        holder = owner.get(container.pod_sandbox_id)
        if holder is not None:
            holder.containers += 1
            holder.containers_running += container.state == api.CONTAINER_RUNNING
    time.sleep(max(0.0, sample_s - (time.monotonic() - started)))
    second = _cpu_sample(client)
    for pod_id, (stamp, used) in second.items():
        before = first.get(pod_id)
        if pod_id in owner and before is not None and stamp > before[0]:
            owner[pod_id].cpu_percent += 100 * (used - before[1]) / (stamp - before[0])
    return sorted(tenants.values(), key=lambda t: t.name)


def _cpu_sample(client: Client) -> dict[str, tuple[int, int]]:
    """Per pod: (timestamp ns, CPU ns used so far), as the pod's agent counts it."""
    try:
        stats = client.rt("ListPodSandboxStats", api.ListPodSandboxStatsRequest()).stats
    except CRIError:
        return {}  # usage is a nicety; the counts stand without it
    return {s.attributes.id: (s.linux.cpu.timestamp, s.linux.cpu.usage_core_nano_seconds.value)
            for s in stats if s.linux.cpu.timestamp}


def _ls(args: argparse.Namespace) -> int:
    rows = usage(Client.for_args(args))
    if args.output != "table":
        print_data({"tenants": [asdict(t) for t in rows]}, args.output)
        return 0

    def limit(used: int, cap: int) -> str:
        return f"{used}/{cap}" if cap else str(used)

    print_table(["TENANT", "NAMESPACES", "PODS", "READY", "CONTAINERS", "RUNNING",
                 "VM MEMORY", "VCPUS", "CPU %"],
                [[t.name, ",".join(t.namespaces), limit(t.pods, t.max_pods), str(t.pods_ready),
                  str(t.containers), str(t.containers_running),
                  limit(t.vm_memory_mib, t.max_memory_mib) + " MiB", str(t.vcpus),
                  f"{t.cpu_percent:.2f}"] for t in rows])
    return 0


def _rm(args: argparse.Namespace) -> int:
    # Scoped to the tenant: vmrtd lists, and lets this touch, its pods only.
    client = Client.for_args(args, tenant=args.name)
    pods = client.rt("ListPodSandbox", api.ListPodSandboxRequest()).items
    for pod in pods:
        client.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        client.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        print(pod.id)
    return 0
