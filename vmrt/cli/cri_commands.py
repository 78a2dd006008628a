"""``vmrt pods|ps|inspect|exec|attach|port-forward|logs|stop|rm|stats``: crictl-style
commands over CRI."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.cli import launch, overhead, streams, tenants, workloads
from vmrt.cli.cri_client import (
    DEFAULT_ENDPOINT,
    Client,
    CRIError,
    ago,
    print_data,
    print_table,
    size,
    to_dict,
)
from vmrt.cli.logs import copy_log

STATE_NAMES = {api.CONTAINER_CREATED: "Created", api.CONTAINER_RUNNING: "Running",
               api.CONTAINER_EXITED: "Exited", api.CONTAINER_UNKNOWN: "Unknown"}


def default_endpoint() -> str:
    return os.environ.get("CONTAINER_RUNTIME_ENDPOINT", DEFAULT_ENDPOINT)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    common = argparse.ArgumentParser(add_help=False)
    # Not given after the verb: the one before it (crictl's habit, vmrt's
    # own -r, whose default is the environment's) stays.
    common.add_argument("--runtime-endpoint", "-r", default=argparse.SUPPRESS,
                        help="vmrtd's CRI socket (also before the verb)")
    common.add_argument("--tenant", default=argparse.SUPPRESS,
                        help="see and start only this tenant's pods (also before the verb; "
                             "default: $VMRT_TENANT)")
    common.add_argument("--host", action="append", default=argparse.SUPPRESS,
                        metavar="ssh://USER@HOST[:PORT]",
                        help="vmrtd on that node, over SSH (also before the verb)")
    common.add_argument("--timeout", type=float, default=60.0)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")

    p = sub.add_parser("pods", parents=[common, output], help="list pod sandboxes")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_pods)
    p = sub.add_parser("ps", parents=[common, output], help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="include exited containers")
    p.add_argument("-p", "--pod", default="", help="only this pod's containers")
    p.set_defaults(func=_ps)
    p = sub.add_parser("inspect", parents=[common],
                       help="status of a container or pod, as JSON (or -o yaml)")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default="json")
    p.add_argument("id")
    p.set_defaults(func=_inspect)
    streams.add_parsers(sub, common)
    workloads.add_parsers(sub, common)
    launch.add_parser(sub, common)
    tenants.add_parsers(sub, common, output)
    overhead.add_parser(sub, common, output)
    p = sub.add_parser("logs", parents=[common], help="a container's log")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--timestamps", action="store_true")
    p.add_argument("container")
    p.set_defaults(func=_logs)
    p = sub.add_parser("stop", parents=[common], help="stop containers or pods")
    p.add_argument("-t", "--stop-timeout", type=int, default=10)
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=_stop)
    p = sub.add_parser("rm", parents=[common], help="remove containers or pods")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=_rm)
    p = sub.add_parser("stats", parents=[common, output], help="container resource usage")
    p.set_defaults(func=_stats)


def _client(args: argparse.Namespace) -> Client:
    return Client.for_args(args)


def _pods(args: argparse.Namespace) -> int:
    labels = dict(item.split("=", 1) for item in args.label)
    reply = _client(args).rt("ListPodSandbox", api.ListPodSandboxRequest(
        filter=api.PodSandboxFilter(label_selector=labels)))
    if args.output != "table":
        print_data(to_dict(reply), args.output)
        return 0
    rows = [[p.id[:13], ago(p.created_at),
             "Ready" if p.state == api.SANDBOX_READY else "NotReady",
             p.metadata.name, p.metadata.namespace, str(p.metadata.attempt),
             p.runtime_handler or "(default)"] for p in reply.items]
    print_table(["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"], rows)
    return 0


def _ps(args: argparse.Namespace) -> int:
    flt = api.ContainerFilter(pod_sandbox_id=args.pod)
    if not args.all:
        flt.state.CopyFrom(api.ContainerStateValue(state=api.CONTAINER_RUNNING))
    reply = _client(args).rt("ListContainers", api.ListContainersRequest(filter=flt))
    if args.output != "table":
        print_data(to_dict(reply), args.output)
        return 0
    rows = [[c.id[:13], c.image.image, ago(c.created_at), STATE_NAMES[c.state],
             c.metadata.name, str(c.metadata.attempt), c.pod_sandbox_id[:13]]
            for c in reply.containers]
    print_table(["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"], rows)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    client = _client(args)
    if client.find_container(args.id) is not None:
        reply = client.rt("ContainerStatus", api.ContainerStatusRequest(
            container_id=args.id, verbose=True))
    elif client.find_pod(args.id) is not None:
        reply = client.rt("PodSandboxStatus", api.PodSandboxStatusRequest(
            pod_sandbox_id=args.id, verbose=True))
    else:
        raise CRIError(f"no container or pod {args.id!r}")
    print_data(to_dict(reply), args.output)
    return 0


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    status = client.find_container(args.container)
    if status is None:
        raise CRIError(f"no container {args.container!r}")
    copy_log(client, status, args.follow, args.timestamps)
    return 0


def _on_each(args: argparse.Namespace, container_call: Any, pod_call: Any) -> int:
    """Apply a container action or a pod action to each id, whichever it names."""
    client = _client(args)
    for target in args.ids:
        if client.find_container(target) is not None:
            container_call(client, target)
        elif client.find_pod(target) is not None:
            pod_call(client, target)
        else:
            raise CRIError(f"no container or pod {target!r}")
        print(target)
    return 0


def _stop(args: argparse.Namespace) -> int:
    return _on_each(
        args,
        lambda client, target: client.rt("StopContainer", api.StopContainerRequest(
            container_id=target, timeout=args.stop_timeout),
            timeout=args.stop_timeout + args.timeout),
        lambda client, target: client.rt("StopPodSandbox", api.StopPodSandboxRequest(
            pod_sandbox_id=target)))


def _rm(args: argparse.Namespace) -> int:
    return _on_each(
        args,
        lambda client, target: client.rt("RemoveContainer", api.RemoveContainerRequest(
            container_id=target)),
        lambda client, target: client.rt("RemovePodSandbox", api.RemovePodSandboxRequest(
            pod_sandbox_id=target)))


def _stats(args: argparse.Namespace) -> int:
    client = _client(args)
    first = client.rt("ListContainerStats", api.ListContainerStatsRequest())
    if args.output != "table":
        print_data(to_dict(first), args.output)
        return 0
    # CPU% needs two samples.
    time.sleep(1.0)
    second = client.rt("ListContainerStats", api.ListContainerStatsRequest())
    before: dict[str, Any] = {s.attributes.id: s for s in first.stats}
    rows = []
    for stat in second.stats:
        cpu = ""
        old = before.get(stat.attributes.id)
        if old is not None and stat.cpu.timestamp > old.cpu.timestamp:
            used = stat.cpu.usage_core_nano_seconds.value - old.cpu.usage_core_nano_seconds.value
            cpu = f"{100 * used / (stat.cpu.timestamp - old.cpu.timestamp):.2f}"
        rows.append([stat.attributes.id[:13], stat.attributes.metadata.name, cpu,
                     size(stat.memory.working_set_bytes.value),
                     size(stat.writable_layer.used_bytes.value),
                     str(stat.writable_layer.inodes_used.value)])
    print_table(["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], rows)
    return 0
