"""Finding a guest image and noticing a missing or damaged one."""

import json
from pathlib import Path

import pytest

from vmrt.guest.image import IMAGE_FORMAT, GuestImage, GuestImageError, sha256_file


def fake_image(root: Path) -> Path:
    root.mkdir()
    (root / "vmlinux").write_bytes(b"\x7fELF" + b"k" * 100)
    (root / "initrd.img").write_bytes(b"070701" + b"i" * 100)
    files = {n: {"size": (root / n).stat().st_size, "sha256": sha256_file(root / n)}
             for n in ("vmlinux", "initrd.img")}
    (root / "manifest.json").write_text(json.dumps(
        {"format": IMAGE_FORMAT, "kernel_release": "6.1.0-test", "files": files}))
    return root


def test_a_good_image_loads(tmp_path: Path) -> None:
    image = GuestImage.load(fake_image(tmp_path / "img"))
    assert image.kernel_release == "6.1.0-test"
    image.verify()


def test_missing_image_directory(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="vmrt guest-image build"):
        GuestImage.load(tmp_path / "nope")


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "initrd.img").unlink(), "is missing"),
    (lambda r: (r / "initrd.img").write_bytes(b"070701short"), "corrupt"),
    (lambda r: (r / "vmlinux").write_bytes(b"MZ" + b"k" * 102), "corrupt"),
    (lambda r: (r / "manifest.json").write_text("{not json"), "manifest"),
    (lambda r: (r / "manifest.json").write_text('{"format": 99}'), "unknown format"),
])
def test_damage_is_named(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    root = fake_image(tmp_path / "img")
    damage(root)
    with pytest.raises(GuestImageError, match=message):
        GuestImage.load(root)


def test_verify_notices_same_size_corruption(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img")
    data = bytearray((root / "initrd.img").read_bytes())
    data[50] ^= 0xFF
    (root / "initrd.img").write_bytes(bytes(data))
    image = GuestImage.load(root)
    with pytest.raises(GuestImageError, match="sha256"):
        image.verify()
