"""OCI and Docker schema 2 manifests and indexes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vmrt.errors import InvalidArgumentError, NotFoundError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join([*MANIFEST_TYPES, *INDEX_TYPES])

LAYER_GZIP = ("application/vnd.oci.image.layer.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.diff.tar.gzip")
LAYER_ZSTD = ("application/vnd.oci.image.layer.v1.tar+zstd",)
LAYER_TAR = ("application/vnd.oci.image.layer.v1.tar",
             "application/vnd.docker.image.rootfs.diff.tar")


class ManifestError(InvalidArgumentError):
    pass


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, data: Any, where: str) -> Descriptor:
        try:
            return cls(str(data.get("mediaType", "")), str(data["digest"]), int(data["size"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ManifestError(f"{where}: a descriptor without digest or size") from None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]


def media_type(body: bytes, declared: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        raise ManifestError("the manifest is not JSON") from None
    kind = str(data.get("mediaType", "") or declared.split(";")[0].strip())
    if not kind:
        kind = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    return kind


def parse_manifest(body: bytes, kind: str) -> Manifest:
    data = json.loads(body)
    if kind not in MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest type {kind}")
    layers = [Descriptor.of(layer, "manifest layer") for layer in data.get("layers", [])]
    for layer in layers:
        if layer.media_type not in (*LAYER_GZIP, *LAYER_ZSTD, *LAYER_TAR) and \
                "nondistributable" not in layer.media_type:
            raise ManifestError(f"unsupported layer type {layer.media_type}")
    return Manifest(kind, Descriptor.of(data.get("config"), "manifest config"), layers)


def pick_platform(body: bytes, os_name: str = "linux", arch: str = "amd64") -> Descriptor:
    """The manifest of an index that runs here."""
    data = json.loads(body)
    choices = []
    for entry in data.get("manifests", []):
        platform = entry.get("platform") or {}
        if platform.get("os") == os_name and platform.get("architecture") == arch:
            choices.append(entry)
    if not choices:
        available = sorted({f"{(e.get('platform') or {}).get('os')}/"
                            f"{(e.get('platform') or {}).get('architecture')}"
                            for e in data.get("manifests", [])})
        raise NotFoundError(f"no {os_name}/{arch} image in the index (it has: "
                            f"{', '.join(available) or 'nothing'})")
    # Prefer the plain variant over e.g. amd64/v3 when several match.
    choices.sort(key=lambda e: (e.get("platform") or {}).get("variant", "") != "")
    return Descriptor.of(choices[0], "index entry")
