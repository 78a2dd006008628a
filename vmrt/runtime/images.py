"""A local image store: enough for containers to get root filesystems by CRI ImageSpec.

This is the store the RuntimeService needs until registry pulls land. An
image is a read-only root filesystem directory plus the parts of an OCI image
config that shape a container (Env, Entrypoint, Cmd, WorkingDir, User). The
built-in busybox image comes from the guest image's own busybox tree, so a
fresh node can run a container with no registry at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrt.errors import InvalidArgumentError, NotFoundError
from vmrt.sandbox.persist import read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = "docker.io"
BUILTIN_BUSYBOX = "docker.io/library/busybox:latest"


def normalize(reference: str) -> str:
    """Docker's short-name rules: 'busybox' -> 'docker.io/library/busybox:latest'."""
    ref = reference.strip()
    if not ref or any(c.isspace() for c in ref):
        raise InvalidArgumentError(f"invalid image reference {reference!r}")
    if ref.startswith("sha256:"):
        return ref
    name, _, digest = ref.partition("@")
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        domain, path = DEFAULT_REGISTRY, name
    else:
        domain, path = first, rest
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if path != path.lower():
        raise InvalidArgumentError(f"invalid image reference {reference!r}: "
                                   "repository names must be lowercase")
    last = path.rsplit("/", 1)[-1]
    if digest:
        return f"{domain}/{path}@{digest}"
    if ":" not in last:
        path += ":latest"
    return f"{domain}/{path}"


@dataclass
class LocalImage:
    id: str
    repo_tags: list[str]
    rootfs: str
    config: dict[str, Any] = field(default_factory=dict)
    size: int = 0

    @property
    def user(self) -> str:
        return str(self.config.get("User", ""))


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class ImageStore:
    def __init__(self, root: Path) -> None:
        self._index_path = root / "images" / "local.json"
        self._images: dict[str, LocalImage] = {}
        if self._index_path.exists():
            for data in read_json(self._index_path):
                image = LocalImage(**data)
                self._images[image.id] = image

    def _save(self) -> None:
        write_json(self._index_path, [vars(i) for i in self._images.values()])

    def add(self, tag: str, rootfs: Path, config: dict[str, Any]) -> LocalImage:
        """Register ``rootfs`` under ``tag`` (moving the tag off any other image)."""
        tag = normalize(tag)
        digest = hashlib.sha256(f"{rootfs.resolve()}\0{sorted(config.items())}".encode())
        image_id = "sha256:" + digest.hexdigest()
        for other in self._images.values():
            if tag in other.repo_tags and other.id != image_id:
                other.repo_tags.remove(tag)
        image = self._images.get(image_id)
        if image is None:
            image = LocalImage(image_id, [], str(rootfs.resolve()), config, _tree_size(rootfs))
            self._images[image_id] = image
        if tag not in image.repo_tags:
            image.repo_tags.append(tag)
        self._save()
        return image

    def ensure_builtin(self, busybox_rootfs: Path) -> None:
        self.add(BUILTIN_BUSYBOX, busybox_rootfs,
                 {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                  "Cmd": ["sh"]})

    def list(self) -> list[LocalImage]:
        return list(self._images.values())

    def find(self, reference: str) -> LocalImage | None:
        if reference in self._images:
            return self._images[reference]
        if reference.startswith("sha256:"):
            return None
        ref = normalize(reference)
        for image in self._images.values():
            if ref in image.repo_tags:
                return image
        # A unique prefix of an image id, as 'docker run' accepts.
        matches = [i for i in self._images.values() if i.id.removeprefix("sha256:")
                   .startswith(reference) and len(reference) >= 12]
        return matches[0] if len(matches) == 1 else None

    def resolve(self, reference: str) -> LocalImage:
        image = self.find(reference)
        if image is None:
            raise NotFoundError(f"image {reference!r} is not present on this node")
        return image

    def remove(self, reference: str) -> None:
        image = self.find(reference)
        if image is None:
            return
        if reference in (image.id, image.id.removeprefix("sha256:")) or \
                not reference or len(image.repo_tags) <= 1:
            del self._images[image.id]
        else:
            image.repo_tags.remove(normalize(reference))
        self._save()
