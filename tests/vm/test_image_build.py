"""The guest image build is idempotent and its result is what the VM tests boot."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vm


def test_second_build_finds_the_image_up_to_date(guest_image) -> None:  # type: ignore[no-untyped-def]
    root = os.environ.get("VMRT_ROOT", "/var/lib/vmrt")
    result = subprocess.run([sys.executable, "-m", "vmrt.cli.main", "--root", root,
                             "guest-image", "build"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stderr
    assert result.stdout.strip() == str(guest_image.directory)


def test_manifest_describes_the_image(guest_image) -> None:  # type: ignore[no-untyped-def]
    manifest = guest_image.manifest
    assert manifest["kernel_release"] == guest_image.kernel_release
    names = {p["name"] for p in manifest["packages"]}
    assert {"busybox-static", "crun", "python3.11-minimal"} <= names
    assert any(n.startswith("linux-image-") for n in names)
    assert "grpc" not in manifest["stdlib_modules"]
    assert {"asyncio", "logging", "json"} <= set(manifest["stdlib_modules"])
    guest_image.verify()
