"""Importing images from files: OCI layouts, docker-archive tars, and the built-in busybox."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from vmrt.errors import InvalidArgumentError
from vmrt.images import manifest as mf
from vmrt.images.registry import IntegrityError
from vmrt.images.store import ImageRecord, ImageStore

BUILTIN_BUSYBOX_TAGS = ["docker.io/library/busybox:latest", "localhost/vmrt/busybox:latest"]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _store_blob(store: ImageStore, source: Path, expected: str = "") -> str:
    digest = _sha256(source)
    if expected and digest != expected:
        raise IntegrityError(f"{source.name}: digest {digest} does not match {expected}")
    target = store.blobs / digest.removeprefix("sha256:")
    if not target.exists():
        shutil.copyfile(source, target)
    return digest


def import_path(store: ImageStore, path: Path, tag: str = "") -> list[ImageRecord]:
    """Import an OCI layout (directory or tar) or a docker-archive tar."""
    if path.is_dir():
        if not (path / "oci-layout").exists():
            raise InvalidArgumentError(f"{path} is a directory but not an OCI layout "
                                       "(no oci-layout file)")
        return _import_oci(store, path, tag)
    if not tarfile.is_tarfile(path):
        raise InvalidArgumentError(f"{path} is neither an OCI layout nor a tar archive")
    with tempfile.TemporaryDirectory(dir=store.dir) as tmp:
        with tarfile.open(path) as archive:
            archive.extractall(tmp, filter="data")
        root = Path(tmp)
        if (root / "oci-layout").exists():
            return _import_oci(store, root, tag)
        if (root / "manifest.json").exists():
            return _import_docker(store, root, tag)
    raise InvalidArgumentError(f"{path} has neither oci-layout nor manifest.json")


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, value = digest.partition(":")
    path = layout / "blobs" / algorithm / value
    if not path.is_file():
        raise InvalidArgumentError(f"blob {digest} is missing from the layout")
    return path


def _import_oci(store: ImageStore, layout: Path, tag: str) -> list[ImageRecord]:
    index = json.loads((layout / "index.json").read_text())
    imported = []
    for entry in index.get("manifests", []):
        desc = mf.Descriptor.of(entry, "index.json")
        body = _blob_path(layout, desc.digest).read_bytes()
        kind = mf.media_type(body, desc.media_type)
        if kind in mf.INDEX_TYPES:
            desc = mf.pick_platform(body)
            body = _blob_path(layout, desc.digest).read_bytes()
            kind = mf.media_type(body, desc.media_type)
        manifest = mf.parse_manifest(body, kind)
        config = json.loads(_blob_path(layout, manifest.config.digest).read_bytes())
        layers = []
        for layer in manifest.layers:
            digest = _store_blob(store, _blob_path(layout, layer.digest), layer.digest)
            layers.append((store.blobs / digest.removeprefix("sha256:"), layer.media_type))
        name = (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name", "")
        tags = [tag] if tag else ([name] if name and ("/" in name or ":" in name) else [])
        imported.append(store.add_local(tags, config, layers))
    if not imported:
        raise InvalidArgumentError(f"{layout}: index.json lists no images")
    return imported


def _import_docker(store: ImageStore, root: Path, tag: str) -> list[ImageRecord]:
    imported = []
    for entry in json.loads((root / "manifest.json").read_text()):
        config = json.loads((root / entry["Config"]).read_text())
        layers = []
        for name in entry.get("Layers", []):
            digest = _store_blob(store, root / name)
            layers.append((store.blobs / digest.removeprefix("sha256:"), ""))
        tags = [tag] if tag else list(entry.get("RepoTags") or [])
        imported.append(store.add_local(tags, config, layers))
    return imported


def layer_tar(tree: Path) -> bytes:
    """A deterministic tar of ``tree``: sorted, root-owned, mtime 0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = Path(dirpath) / name
                info = archive.gettarinfo(str(full), arcname=str(full.relative_to(tree)))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if info.isreg():
                    with full.open("rb") as f:
                        archive.addfile(info, f)
                else:
                    archive.addfile(info)
    return buffer.getvalue()


def ensure_builtin_busybox(store: ImageStore, busybox_rootfs: Path) -> ImageRecord:
    """The busybox image made from the guest image's Debian busybox: no registry needed."""
    data = layer_tar(busybox_rootfs)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    config: dict[str, Any] = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    }
    blob = store.blobs / digest.removeprefix("sha256:")
    if not blob.exists():
        blob.write_bytes(data)
    # Don't take "busybox:latest" away from a pulled image.
    tags = [t for t in BUILTIN_BUSYBOX_TAGS
            if (existing := store.find(t)) is None or existing.layers == [digest]]
    return store.add_local(tags, config, [(blob, mf.LAYER_TAR[0])])

