"""Finding and checking a built guest image.

An image directory holds ``vmlinux`` (uncompressed, booted through its PVH
entry), ``initrd.img`` (newc cpio), ``marker.img`` (the busybox-only
baseline for benchmarks), ``rootfs-busybox/`` (the default container root)
and ``manifest.json``. Checks here are cheap (headers and sizes) because
they run on every VM launch; ``verify`` hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import VmrtError

MANIFEST = "manifest.json"
IMAGE_FORMAT = 1


class GuestImageError(VmrtError):
    pass


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    kernel: Path
    initrd: Path
    marker_initrd: Path
    busybox_rootfs: Path
    kernel_release: str
    manifest: dict[str, object]

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> GuestImage:
        root = Path(directory)
        manifest_path = root / MANIFEST
        if not root.is_dir():
            raise GuestImageError(
                f"guest image not found at {root}; build it with 'vmrt guest-image build'"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise GuestImageError(
                f"guest image at {root} has no {MANIFEST}; rebuild it with "
                "'vmrt guest-image build'"
            ) from None
        except ValueError as exc:
            raise GuestImageError(
                f"guest image manifest {manifest_path} is corrupt: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != IMAGE_FORMAT:
            raise GuestImageError(
                f"guest image at {root} has an unknown format; rebuild it with "
                "'vmrt guest-image build'"
            )
        image = cls(
            directory=root,
            kernel=root / "vmlinux",
            initrd=root / "initrd.img",
            marker_initrd=root / "marker.img",
            busybox_rootfs=root / "rootfs-busybox",
            kernel_release=str(manifest.get("kernel_release", "")),
            manifest=manifest,
        )
        image.check()
        return image

    def check(self) -> None:
        """Cheap integrity check: every file present, right size, right magic."""
        files = self.manifest.get("files")
        if not isinstance(files, dict):
            raise GuestImageError(f"guest image manifest in {self.directory} lists no files")
        for name, magic in (("vmlinux", b"\x7fELF"), ("initrd.img", b"070701")):
            path = self.directory / name
            entry = files.get(name)
            if not isinstance(entry, dict):
                raise GuestImageError(f"guest image manifest does not list {name}")
            try:
                size = path.stat().st_size
                with path.open("rb") as f:
                    head = f.read(len(magic))
            except FileNotFoundError:
                raise GuestImageError(f"guest image file {path} is missing") from None
            if size != entry.get("size") or head != magic:
                raise GuestImageError(
                    f"guest image file {path} is corrupt (size {size}, expected "
                    f"{entry.get('size')}); rebuild it with 'vmrt guest-image build --force'"
                )

    def verify(self) -> None:
        """Full check: the sha256 of every file in the manifest."""
        self.check()
        files = self.manifest["files"]
        assert isinstance(files, dict)
        for name, entry in files.items():
            digest = sha256_file(self.directory / name)
            if digest != entry.get("sha256"):
                raise GuestImageError(f"guest image file {self.directory / name}: sha256 mismatch")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_image_dir(state_root: str | os.PathLike[str]) -> Path:
    return Path(state_root) / "guest-images" / "default"
