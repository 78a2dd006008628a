"""vmrt images / pull / rmi / image inspect / image import on a store of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon
from tests.helpers.oci import Entry, Image, Layer, Layout
from tests.images.conftest import Images

pytestmark = pytest.mark.vm


def vmrt(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmrt.cli.main", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_import_list_inspect_remove(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = Layout(tmp_path / "layout")
    layout.add("example.com/tools/hello:1.0",
               Image([Layer([Entry("hello.txt", b"imported\n")], "none")], {"Cmd": ["sh"]}))
    imported = vmrt(root, "image", "import", str(layout.path))
    assert imported.returncode == 0, imported.stderr
    assert "example.com/tools/hello:1.0" in imported.stdout

    archive = tmp_path / "hello.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout.path}:example.com/tools/hello:1.0",
                    f"docker-archive:{archive}:docker.io/library/hello:from-archive"],
                   check=True, capture_output=True, timeout=60)
    second = vmrt(root, "image", "import", str(archive))
    assert second.returncode == 0, second.stderr
    assert "docker.io/library/hello:from-archive" in second.stdout

    listing = vmrt(root, "images")
    assert "example.com/tools/hello" in listing.stdout and "from-archive" in listing.stdout
    records = json.loads(vmrt(root, "images", "-o", "json").stdout)
    assert len(records) == 1, "both imports are the same image"
    inspected = json.loads(vmrt(root, "image", "inspect", "docker.io/library/hello:from-archive")
                           .stdout)
    assert (Path(inspected["layer_dirs"][0]) / "hello.txt").read_text() == "imported\n"

    assert vmrt(root, "rmi", "example.com/tools/hello:1.0").returncode == 0
    assert json.loads(vmrt(root, "images", "-o", "json").stdout)[0]["repo_tags"] == [
        "docker.io/library/hello:from-archive"]
    assert vmrt(root, "rmi", inspected["id"]).returncode == 0
    assert json.loads(vmrt(root, "images", "-o", "json").stdout) == []
    assert not any((root / "images" / "layers").iterdir())
    bad = vmrt(root, "image", "import", str(tmp_path))
    assert bad.returncode == 125 and "not an OCI layout" in bad.stderr


def test_pull_shows_progress(tmp_path: Path, images: Images) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config.toml"
    config.write_text(f'[registry.mirrors."{images.registry.address}"]\n'
                      f'endpoints = ["http://{images.registry.address}"]\n')
    name = f"{images.registry.address}/test/app:1"
    pulled = subprocess.run([sys.executable, "-m", "vmrt.cli.main", "--root", str(root), "pull",
                             "--config", str(config), name], capture_output=True, text=True,
                            timeout=120, check=False)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().startswith("sha256:")
    assert "#" * 30 in pulled.stderr and "MiB" in pulled.stderr
    assert f"{images.registry.address}/test/app" in vmrt(root, "images").stdout


def test_run_a_pulled_image(puller: Daemon) -> None:
    """vmrt run pulls (through the mirror), and the image's entrypoint and
    command are the container's unless the user gives them."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmrt.cli.main", "-r",
                               f"unix://{puller.socket}", "run", "--rm",
                               "--log-root", str(puller.logs), *args],
                              capture_output=True, text=True, timeout=300, check=False)

    image = "registry.invalid/test/entry:1"
    first = run("--pull", "always", image)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "entry default-arg\n"
    again = run("--pull", "never", image, "--", "given", "args")
    assert again.returncode == 0 and again.stdout == "entry given args\n", again.stderr
    replaced = run("--pull", "never", "--entrypoint", "/bin/sh", image, "--",
                   "-c", "echo replaced; exit 7")
    assert replaced.returncode == 7 and replaced.stdout == "replaced\n", replaced.stderr
    missing = run("--pull", "always", "registry.invalid/test/absent:1")
    assert missing.returncode == 125 and "absent" in missing.stderr, missing.stderr
    left = puller.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items
    assert not [p for p in left if p.labels.get("vmrt.io/run")], "a run left its pod"
