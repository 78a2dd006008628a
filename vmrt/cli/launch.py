"""``vmrt run IMAGE [-- CMD ...]``: a pod and one container in it, through vmrtd,
in one step, with docker run's habits.

The pod and the container are plain CRI objects (RunPodSandbox,
CreateContainer, StartContainer), so ``vmrt pods``, ``ps``, ``logs`` and a
tenant's listing see them like any other. In the foreground the container's
log is followed, stdout to stdout and stderr to stderr, and ``vmrt run``
exits with the container's exit code once its log is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.cli import streams
from vmrt.cli.cri_client import Client, CRIError
from vmrt.cli.logs import copy_log
from vmrt.cli.run import parse_memory
from vmrt.cli.workloads import PULL_POLICIES, ensure_image

DEFAULT_LOG_ROOT = "/var/log/vmrt"
CPU_PERIOD = 100_000
PROTOCOLS = {"tcp": api.TCP, "udp": api.UDP, "sctp": api.SCTP}
STOP_TIMEOUT = 10

RUN_EXAMPLE = """examples:
  vmrt run busybox -- sh -c 'echo out; echo err >&2; exit 3'   # exit code 3
  vmrt run --rm -it busybox sh
  vmrt --tenant blue run -d --name web -p 8080:80 busybox -- httpd -f -p 80
  vmrt run --memory 512M --cpus 1.5 --runtime vmrt-small registry.local/app:1 -- /app"""


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg,unused-ignore]
               common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RUN_EXAMPLE, help="run an image in a new pod through vmrtd (docker run)",
        usage="vmrt run [OPTIONS] IMAGE [--] [CMD [ARGS...]]")
    p.add_argument("--name", default="",
                   help="the pod's and the container's name (default: run-XXXXXX)")
    p.add_argument("--rm", action="store_true",
                   help="remove the pod and its log when the container exits")
    p.add_argument("-d", "--detach", action="store_true",
                   help="print the container id and leave it running")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin on")
    p.add_argument("-t", "--tty", action="store_true", help="give the container a terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set an environment variable (KEY alone: this shell's value)")
    p.add_argument("-w", "--workdir", default="", help="the working directory in the container")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:]HOST:CONTAINER[/PROTO]",
                   help="a host port mapped to a container port (tcp, udp or sctp)")
    p.add_argument("--runtime", default="", metavar="HANDLER",
                   help="the RuntimeClass handler (default: vmrtd's default)")
    p.add_argument("--memory", default="", help="the container's memory limit (256M, 1G)")
    p.add_argument("--cpus", type=float, default=0.0, help="the container's CPU limit (1.5)")
    p.add_argument("--pull", choices=PULL_POLICIES, default="missing",
                   help="pull the image first: when missing (default), always, or never")
    p.add_argument("--entrypoint", default=None,
                   help="the command to run instead of the image's entrypoint")
    p.add_argument("--log-root", default=os.environ.get("VMRT_LOG_ROOT", DEFAULT_LOG_ROOT),
                   help="where pod log directories go (default: $VMRT_LOG_ROOT or "
                        f"{DEFAULT_LOG_ROOT})")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=_run)


# -- the configs ----------------------------------------------------------------


def parse_env(items: list[str], environ: Mapping[str, str] | None = None) -> list[api.KeyValue]:
    environ = os.environ if environ is None else environ
    result = []
    for item in items:
        key, equals, value = item.partition("=")
        if not key:
            raise CRIError(f"-e {item!r}: expected KEY=VALUE or KEY")
        if not equals:
            if key not in environ:  # docker's habit: an unset KEY is left out
                continue
            value = environ[key]
        result.append(api.KeyValue(key=key, value=value))
    return result


def parse_publish(spec: str) -> api.PortMapping:
    """``[IP:]HOST:CONTAINER[/PROTO]`` (docker's -p, with the host port required)."""
    ports, _, proto = spec.partition("/")
    protocol = PROTOCOLS.get(proto.lower() or "tcp")
    if protocol is None:
        raise CRIError(f"-p {spec!r}: protocol must be tcp, udp or sctp")
    host_ip, _, rest = ports.rpartition(":") if ports.count(":") == 2 else ("", "", ports)
    host, colon, container = rest.partition(":")
    if not colon:
        raise CRIError(f"-p {spec!r}: expected [IP:]HOST:CONTAINER[/PROTO]")
    try:
        host_port, container_port = int(host), int(container)
    except ValueError:
        raise CRIError(f"-p {spec!r}: ports must be numbers") from None
    if not (0 < host_port < 65536 and 0 < container_port < 65536):
        raise CRIError(f"-p {spec!r}: ports are 1-65535")
    return api.PortMapping(protocol=protocol, container_port=container_port,
                           host_port=host_port, host_ip=host_ip)


def resources(memory: str, cpus: float) -> api.LinuxContainerResources:
    limits = api.LinuxContainerResources()
    if memory:
        limits.memory_limit_in_bytes = parse_memory(memory) * 1024 * 1024
    if cpus < 0:
        raise CRIError(f"--cpus {cpus}: must not be negative")
    if cpus:
        limits.cpu_period = CPU_PERIOD
        limits.cpu_quota = max(1000, round(cpus * CPU_PERIOD))
    return limits


def pod_config(args: argparse.Namespace, name: str, tenant: str) -> api.PodSandboxConfig:
    """Under a tenant, vmrtd moves a pod of ``default`` (unless that is the
    tenant's) into the tenant's first namespace."""
    uid = str(uuid.uuid4())
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        hostname=name,
        log_directory=os.path.join(args.log_root, f"{tenant or 'default'}_{name}_{uid}"),
        labels={"vmrt.io/run": name},
        port_mappings=[parse_publish(spec) for spec in args.publish])
    config.linux.resources.CopyFrom(resources(args.memory, args.cpus))
    return config


def container_config(args: argparse.Namespace, name: str) -> api.ContainerConfig:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name),
        image=api.ImageSpec(image=args.image),
        args=command, working_dir=args.workdir, envs=parse_env(args.env),
        log_path=f"{name}/0.log", labels={"vmrt.io/run": name},
        tty=args.tty, stdin=args.interactive, stdin_once=args.interactive)
    if args.entrypoint is not None:
        config.command[:] = [args.entrypoint] if args.entrypoint else []
    config.linux.resources.CopyFrom(resources(args.memory, args.cpus))
    return config


# -- running it -----------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    if args.rm and args.detach:
        raise CRIError("--rm and -d together: a detached container is removed with "
                       "vmrt rm POD")
    client = Client.for_args(args)
    name = args.name or f"run-{secrets.token_hex(3)}"
    pod = pod_config(args, name, client.tenant)
    container = container_config(args, name)
    ensure_image(client, args.image, args.pull)
    pod_id = client.rt("RunPodSandbox", api.RunPodSandboxRequest(
        config=pod, runtime_handler=args.runtime), timeout=max(args.timeout, 300.0)
    ).pod_sandbox_id
    try:
        container_id = client.rt("CreateContainer", api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container, sandbox_config=pod)).container_id
        client.rt("StartContainer", api.StartContainerRequest(container_id=container_id))
    except BaseException:
        remove_pod(client, pod_id, pod.log_directory)
        raise
    if args.detach:
        print(container_id)
        return 0
    try:
        return _foreground(client, container_id, args)
    except KeyboardInterrupt:
        _stop(client, container_id)
        return 130
    finally:
        if args.rm:
            remove_pod(client, pod_id, pod.log_directory)


def _foreground(client: Client, container_id: str, args: argparse.Namespace) -> int:
    if args.tty and args.interactive:
        reply = client.rt("Attach", api.AttachRequest(
            container_id=container_id, tty=True, stdin=True, stdout=True))
        streams.run_session(reply.url, stdin=True, tty=True, timeout=None)
        return wait_exit(client, container_id)
    if args.interactive:
        # Input through an attach session, output from the log, which has
        # it all from the start and keeps stdout and stderr apart.
        reply = client.rt("Attach", api.AttachRequest(container_id=container_id, stdin=True))
        feeding = threading.Thread(target=_feed_stdin, args=(reply.url,), daemon=True)
        feeding.start()
    status = client.find_container(container_id)
    if status is None:
        raise CRIError(f"container {container_id[:13]} is gone")
    copy_log(client, status, follow=True)
    return wait_exit(client, container_id)


def _feed_stdin(url: str) -> None:
    # An error means the container has exited or closed its stdin: the log tells.
    with contextlib.suppress(CRIError):
        streams.run_session(url, stdin=True, tty=False, timeout=None)


def wait_exit(client: Client, container_id: str) -> int:
    while True:
        status = client.find_container(container_id)
        if status is None:
            raise CRIError(f"container {container_id[:13]} was removed before it exited")
        if status.state == api.CONTAINER_EXITED:
            return int(status.exit_code)
        time.sleep(0.2)


def _stop(client: Client, container_id: str) -> None:
    client.rt("StopContainer", api.StopContainerRequest(
        container_id=container_id, timeout=STOP_TIMEOUT),
        timeout=STOP_TIMEOUT + client.timeout)


def remove_pod(client: Client, pod_id: str, log_directory: str) -> None:
    """Stop and remove the pod (its containers go with it), and its log directory."""
    errors: list[Any] = []
    for method, request in (
            ("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id)),
            ("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))):
        try:
            client.rt(method, request)
        except CRIError as exc:
            errors.append(exc)
    if log_directory:
        shutil.rmtree(log_directory, ignore_errors=True)
    if errors:
        raise CRIError(f"removing pod {pod_id[:13]}: {errors[0]}")
