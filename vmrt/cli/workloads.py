"""``vmrt runp``, ``vmrt create``, ``vmrt start``: crictl's verbs, with its file formats."""

from __future__ import annotations

import argparse
from pathlib import Path

from cri_api.v1 import api_pb2 as api

from vmrt.cli import specfiles
from vmrt.cli.cri_client import Client, CRIError

PULL_POLICIES = ("missing", "always", "never")

RUNP_EXAMPLE = """example:
  vmrt runp docs/examples/pod.json
  vmrt --tenant blue runp --runtime vmrt pod.yaml"""
CREATE_EXAMPLE = """example:
  POD=$(vmrt runp pod.json)
  CTR=$(vmrt create $POD container.json pod.json)
  vmrt start $CTR"""


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg,unused-ignore]
                common: argparse.ArgumentParser) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("runp", parents=[common], formatter_class=raw, epilog=RUNP_EXAMPLE,
                       help="run a pod sandbox from a crictl pod config (JSON or YAML)")
    p.add_argument("--runtime", default="", metavar="HANDLER",
                   help="the RuntimeClass handler (default: vmrtd's default)")
    p.add_argument("pod_config", type=Path, metavar="POD.(json|yaml)")
    p.set_defaults(func=_runp)
    p = sub.add_parser("create", parents=[common], formatter_class=raw, epilog=CREATE_EXAMPLE,
                       help="create a container in a pod from crictl config files")
    p.add_argument("--pull", choices=PULL_POLICIES, default="missing",
                   help="pull the image first: when missing (default), always, or never")
    p.add_argument("pod", metavar="POD-ID")
    p.add_argument("container_config", type=Path, metavar="CONTAINER.(json|yaml)")
    p.add_argument("pod_config", type=Path, metavar="POD.(json|yaml)")
    p.set_defaults(func=_create)
    p = sub.add_parser("start", parents=[common], formatter_class=raw,
                       epilog="example:\n  vmrt start 3f2a9c", help="start created containers")
    p.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    p.set_defaults(func=_start)


def ensure_image(client: Client, image: str, policy: str) -> None:
    """Pull ``image`` as the policy says (kubelet's IfNotPresent, Always, Never)."""
    if policy != "always":
        status = client.img("ImageStatus", api.ImageStatusRequest(
            image=api.ImageSpec(image=image)))
        if status.image.id:
            return
        if policy == "never":
            raise CRIError(f"image {image!r} is not on the node and --pull is never")
    # A pull may take long: the registry, then unpacking, under TCG's slow disk.
    client.img("PullImage", api.PullImageRequest(image=api.ImageSpec(image=image)),
               timeout=max(client.timeout, 600.0))


def _runp(args: argparse.Namespace) -> int:
    config = specfiles.load(args.pod_config, api.PodSandboxConfig)
    reply = Client.for_args(args).rt("RunPodSandbox", api.RunPodSandboxRequest(
        config=config, runtime_handler=args.runtime), timeout=max(args.timeout, 300.0))
    print(reply.pod_sandbox_id)
    return 0


def _create(args: argparse.Namespace) -> int:
    container = specfiles.load(args.container_config, api.ContainerConfig)
    pod_config = specfiles.load(args.pod_config, api.PodSandboxConfig)
    client = Client.for_args(args)
    pod = client.find_pod(args.pod)
    if pod is None:
        raise CRIError(f"no pod {args.pod!r}")
    if not container.image.image:
        raise CRIError(f"{args.container_config}: image.image is required")
    ensure_image(client, container.image.image, args.pull)
    reply = client.rt("CreateContainer", api.CreateContainerRequest(
        pod_sandbox_id=pod.id, config=container, sandbox_config=pod_config))
    print(reply.container_id)
    return 0


def _start(args: argparse.Namespace) -> int:
    client = Client.for_args(args)
    for target in args.ids:
        status = client.find_container(target)
        if status is None:
            raise CRIError(f"no container {target!r}")
        client.rt("StartContainer", api.StartContainerRequest(container_id=status.id))
        print(target)
    return 0
