"""The CRI validation suite's images (look-alikes from ../shared/critest-images), pulled
through the three mirrors critest needs, keep their original names."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir
from tests.helpers.registry import free_port

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
# The kit lives beside the project (../shared), wherever this clone is.
_CANDIDATES = [os.environ.get("CRITEST_IMAGES_KIT", ""), str(REPO.parent / "shared"
               / "critest-images"), "/work/shared/critest-images"]
KIT = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "build.py").exists()),
           REPO.parent / "shared" / "critest-images")


@pytest.fixture(scope="module")
def kit_registry() -> Iterator[tuple[str, list[str]]]:
    if not (KIT / "build.py").exists():
        pytest.skip(f"the critest image kit is not at {KIT} (set CRITEST_IMAGES_KIT)")
    base = Path(tempfile.mkdtemp(prefix="kit-", dir="/tmp"))
    subprocess.run(["apt-get", "download", "-q", "busybox"], cwd=base, check=True,
                   capture_output=True, timeout=120)
    (deb,) = base.glob("busybox_*.deb")
    subprocess.run(["python3", str(KIT / "build.py"), "--busybox", str(deb), "--out",
                    str(base / "oci")], check=True, capture_output=True, timeout=300)
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    subprocess.run(["bash", str(KIT / "serve.sh"), "start", str(base / "oci"),
                    str(base / "registry")], check=True, capture_output=True, env=env,
                   timeout=300)
    names = [line.strip() for line in (KIT / "images.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    try:
        yield f"127.0.0.1:{port}", names
    finally:
        subprocess.run(["bash", str(KIT / "serve.sh"), "stop", str(base / "registry")],
                       capture_output=True, env=env, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mirrored(guest_image, kit_registry: tuple[str, list[str]],
             request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    address, _ = kit_registry
    mirrors = "".join(f'[registry.mirrors."{host}"]\nendpoints = ["http://{address}"]\n'
                      for host in ("registry.k8s.io", "k8s.gcr.io", "gcr.io"))
    for base in _short_dir():
        yield from _daemon(base, guest_image, request, name="critest-images",
                           check_leaks=False, extra_config=mirrors)


def test_every_critest_image_pulls_under_its_original_name(
        mirrored: Daemon, kit_registry: tuple[str, list[str]]) -> None:
    _, names = kit_registry
    for name in names:
        mirrored.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=name)),
                                  timeout=120)
    tags = {tag for image in mirrored.images.ListImages(api.ListImagesRequest()).images
            for tag in image.repo_tags}
    assert set(names) <= tags, sorted(set(names) - tags)
    ids = {name: mirrored.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=name))).image.id for name in names}
    one = "gcr.io/k8s-staging-cri-tools/test-image-"
    assert len({ids[f"{one}1:latest"], ids[f"{one}2:latest"], ids[f"{one}3:latest"]}) == 3
    assert len({ids[f"{one}tags:{n}"] for n in (1, 2, 3)}) == 1
    uid = mirrored.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=f"{one}user-uid:latest"))).image.uid.value
    assert uid > 0


def test_a_critest_image_runs_in_a_vm(mirrored: Daemon) -> None:
    name = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
    mirrored.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=name)), timeout=120)
    config = mirrored.pod_config()
    pod_id = mirrored.run_pod(config)
    container = mirrored.run_container(pod_id, config, ["sleep", "300"], image=name)
    reply = mirrored.exec(container, ["sh", "-c", "echo from the critest busybox; ls /bin | wc -l"])
    assert reply.stdout.startswith(b"from the critest busybox\n"), reply.stderr
    mirrored.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
