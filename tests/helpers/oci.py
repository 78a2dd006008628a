"""Building small OCI images for tests and pushing them to a registry with skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

LAYER_MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One tar member: a file, a dir, a symlink or a hardlink."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink | hardlink | chardev
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def tar_bytes(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, 1
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target
            elif entry.kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
                continue
            archive.addfile(info)
    return buffer.getvalue()


@dataclass
class Layer:
    entries: list[Entry]
    compression: str = "gzip"

    def build(self) -> tuple[bytes, str, str]:
        raw = tar_bytes(self.entries)
        if self.compression == "gzip":
            blob = gzip.compress(raw, mtime=0)
        elif self.compression == "zstd":
            blob = zstandard.ZstdCompressor().compress(raw)
        else:
            blob = raw
        return blob, LAYER_MEDIA[self.compression], digest(raw)


@dataclass
class Image:
    layers: list[Layer]
    config: dict[str, Any] = field(default_factory=dict)
    architecture: str = "amd64"


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.index: list[dict[str, Any]] = []

    def blob(self, data: bytes) -> str:
        d = digest(data)
        (self.path / "blobs" / "sha256" / d.removeprefix("sha256:")).write_bytes(data)
        return d

    def manifest(self, image: Image) -> dict[str, Any]:
        layers, diff_ids = [], []
        for layer in image.layers:
            blob, media, diff_id = layer.build()
            layers.append({"mediaType": media, "digest": self.blob(blob), "size": len(blob)})
            diff_ids.append(diff_id)
        config = json.dumps({"architecture": image.architecture, "os": "linux",
                             "config": image.config,
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        body = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": self.blob(config), "size": len(config)},
            "layers": layers}).encode()
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": self.blob(body), "size": len(body),
                "platform": {"os": "linux", "architecture": image.architecture}}

    def add(self, name: str, *images: Image) -> None:
        """One image under ``name``, or an index of several platforms."""
        descriptors = [self.manifest(image) for image in images]
        if len(descriptors) == 1:
            entry = dict(descriptors[0])
            entry.pop("platform")
        else:
            body = json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.index.v1+json",
                               "manifests": descriptors}).encode()
            entry = {"mediaType": "application/vnd.oci.image.index.v1+json",
                     "digest": self.blob(body), "size": len(body)}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.index.append(entry)
        (self.path / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "manifests": self.index}))


def push(layout: Path, name: str, destination: str, creds: str = "") -> str:
    """skopeo copy an image of the layout to a plain-HTTP registry; returns its digest."""
    argv = ["skopeo", "copy", "--all", "--dest-tls-verify=false", "--preserve-digests",
            f"oci:{layout}:{name}", f"docker://{destination}"]
    if creds:
        argv.insert(2, f"--dest-creds={creds}")
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    inspect = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              *( [f"--creds={creds}"] if creds else []),
                              f"docker://{destination}"],
                             check=True, capture_output=True, timeout=60)
    return digest(inspect.stdout)
