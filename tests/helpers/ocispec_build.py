"""Shared inputs and accessors for the ocispec.build table tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.runtime import ocispec

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:App:/home/app:/bin/sh
svc:x:1001:2000::/srv:/bin/sh
nohome:x:1002:1002:::/bin/sh
"""
GROUP = b"""root:x:0:
wheel:x:10:root,app
app:x:1000:
staff:x:50:app,svc
svcgrp:x:2000:svc
audio:x:63:svc
"""
FILES = {"etc/passwd": PASSWD, "etc/group": GROUP}
IMAGE = {"Entrypoint": ["/bin/app"]}
POD = api.PodSandboxConfig(hostname="pod-host")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def linux(resources: api.LinuxContainerResources | None = None,
          **security: Any) -> api.LinuxContainerConfig:
    return api.LinuxContainerConfig(
        resources=resources or api.LinuxContainerResources(),
        security_context=api.LinuxContainerSecurityContext(**security))


def build(*, image: dict[str, Any] | None = None, pod: api.PodSandboxConfig | None = None,
          files: dict[str, bytes] | None = None,
          shared: Sequence[ocispec.SharedMount] = (), **config: Any) -> dict[str, Any]:
    """The spec for a ContainerConfig of ``config``; ``shared`` are its mounts as the
    runtime has put them in the sandbox share."""
    return ocispec.build(
        config=api.ContainerConfig(metadata=api.ContainerMetadata(name="c"),
                                   image=api.ImageSpec(image="img"), **config),
        pod_config=POD if pod is None else pod,
        image_config=IMAGE if image is None else image,
        image_file=(FILES if files is None else files).get, mounts=shared)


def dig(spec: dict[str, Any], path: str) -> Any:
    value: Any = spec
    for key in path.split("."):
        value = value[key]
    return value


def mount_at(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    found = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(found) == 1, f"{len(found)} mounts at {destination}"
    return {k: v for k, v in found[0].items() if k != "destination"}


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["process"]["env"])
