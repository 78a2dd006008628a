"""The CLI's connection to vmrtd, and output as tables or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
import yaml
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc
from google.protobuf.json_format import MessageToDict

from vmrt.cli import remote
from vmrt.errors import VmrtError

DEFAULT_ENDPOINT = "unix:///run/vmrt/vmrt.sock"


class CRIError(VmrtError):
    pass


TENANT_HEADER = "vmrt-tenant"  # vmrt.cri.tenancy's: the calls see one tenant


class Client:
    """``tenant``: every call sees that tenant's pods and containers only."""

    def __init__(self, endpoint: str, timeout: float, tenant: str = "", host: str = "",
                 identity: str = "", remote_command: str = "vmrt") -> None:
        """``host``: ssh://USER@HOST[:PORT], whose vmrtd at ``endpoint`` is reached over SSH."""
        target = endpoint if "://" in endpoint else f"unix://{endpoint}"
        self.node = remote.node(host, identity, remote_command) if host else None
        if self.node is not None:
            target = self.node.relay(target)
        self._channel = grpc.insecure_channel(target)
        self.runtime = api_grpc.RuntimeServiceStub(self._channel)
        self.images = api_grpc.ImageServiceStub(self._channel)
        self.timeout = timeout
        self.endpoint = f"{endpoint} on {host}" if host else endpoint
        self.tenant = tenant
        self._metadata = ((TENANT_HEADER, tenant),) if tenant else ()

    @classmethod
    def for_args(cls, args: Any, tenant: str | None = None) -> Client:
        """The command line's client; ``tenant`` in place of its --tenant."""
        return cls(args.runtime_endpoint, args.timeout,
                   getattr(args, "tenant", "") if tenant is None else tenant,
                   getattr(args, "host", ""), getattr(args, "identity", ""),
                   getattr(args, "remote_vmrt", "vmrt"))

    def call(self, stub: Any, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            reply = getattr(stub, method)(request, timeout=timeout or self.timeout,
                                          metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined,unused-ignore]
            details = exc.details()  # type: ignore[attr-defined,unused-ignore]
            if code == grpc.StatusCode.UNAVAILABLE:
                if self.node is not None and self.node.error():
                    details = self.node.error()  # what the node's end said
                raise CRIError(f"cannot reach vmrtd at {self.endpoint}: {details}") from None
            raise CRIError(f"{method}: {details} ({code.name})") from None
        if self.node is not None and method in ("Exec", "Attach", "PortForward"):
            # The URL is on the node's loopback: reached through the SSH connection.
            reply.url = self.node.tunnel(reply.url)
        return reply

    def rt(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return self.call(self.runtime, method, request, timeout)

    def img(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return self.call(self.images, method, request, timeout)

    def open_log(self, path: str) -> Any:
        """A log file of vmrtd's node: a local file, or over SFTP with --host."""
        if self.node is None:
            return open(path, "rb")
        return self.node.open_file(path)

    def find_container(self, prefix: str) -> api.ContainerStatus | None:
        try:
            return self.rt("ContainerStatus", api.ContainerStatusRequest(
                container_id=prefix)).status
        except CRIError as exc:
            if "NOT_FOUND" in str(exc):
                return None
            raise

    def find_pod(self, prefix: str) -> api.PodSandboxStatus | None:
        try:
            return self.rt("PodSandboxStatus", api.PodSandboxStatusRequest(
                pod_sandbox_id=prefix)).status
        except CRIError as exc:
            if "NOT_FOUND" in str(exc):
                return None
            raise


def to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return result


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    print()


def print_data(data: Any, output: str) -> None:
    """``-o json`` or ``-o yaml``."""
    if output == "yaml":
        yaml.safe_dump(data, sys.stdout, sort_keys=True, default_flow_style=False)
    else:
        print_json(data)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        print("   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())


def ago(ns: int) -> str:
    if not ns:
        return ""
    seconds = max(0, int(time.time() - ns / 1e9))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)
