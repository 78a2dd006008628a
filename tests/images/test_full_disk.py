"""vmrt's root (records, image store, writable layers) on a small tmpfs that
fills up mid-pull, mid-RunPodSandbox and mid-CreateContainer: clear errors
(RESOURCE_EXHAUSTED naming the file), nothing half-written, and once space is
freed and vmrtd restarted, the earlier pod is back and everything works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error
from tests.helpers import leaks
from tests.images.conftest import Images
from tests.images.test_pull import pull, status

pytestmark = pytest.mark.vm

TMPFS_MIB = 160
PAGE = 4096


@pytest.fixture
def small_root(guest_image, images: Images, request: pytest.FixtureRequest
               ) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    mirror = (f'[registry.mirrors."{images.registry.address}"]\n'
              f'endpoints = ["http://{images.registry.address}"]\n')
    for base in _short_dir():
        root = base / "root"
        root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700",
                        "vmrt-test-full", str(root)], check=True)
        try:
            yield from _daemon(base, guest_image, request, extra_config=mirror)
        finally:
            subprocess.run(["umount", "-l", str(root)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(root: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on ``root``'s filesystem."""
    filler = root / "filler"
    size = (filler.stat().st_size if filler.exists() else 0) + free_bytes(root) - leave
    with filler.open("ab") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, size)
    return filler


def records_are_whole(root: Path) -> list[str]:
    """Files under pods/ (and the image index) that do not parse, and temporaries."""
    bad = []
    for path in [*root.glob("pods/**/*.json"), *root.glob("images/*.json")]:
        try:
            json.loads(path.read_text())
        except ValueError:
            bad.append(str(path))
    bad += [str(p) for p in root.rglob(".*.tmp")]
    return bad


def test_a_full_disk_fails_calls_cleanly_and_loses_nothing(small_root: Daemon,
                                                           images: Images) -> None:
    daemon = small_root
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    container = daemon.run_container(pod_id, config, ["sleep", "300"])
    root = daemon.root

    # Mid-pull: a 48 MiB layer into 30 MiB. The partial download goes.
    name = f"{images.registry.address}/test/interrupted:1"
    fill(root, 30 << 20)
    before = free_bytes(root)
    message = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, pull, daemon, name)
    assert "No space left on device" in message and str(root) in message, message
    assert not status(daemon, name).id
    assert not [p for p in root.rglob("*") if ".partial" in p.name]
    assert free_bytes(root) >= before - (1 << 20), "the partial download was not removed"

    # Room for a pod record, not for two: RunPodSandbox writes its record,
    # and the next write of it (the network's state, while the old one
    # stands) fails. Its undoing then frees what it took.
    record_pages = -(-(root / "pods" / pod_id / "pod.json").stat().st_size // PAGE)
    fill(root, record_pages * PAGE)
    other = daemon.pod_config()
    message = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, daemon.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=other), timeout=120)
    assert "No space left on device" in message and f"{root}/pods/" in message, message
    assert free_bytes(root) == record_pages * PAGE
    # One page: CreateContainer's intent fits; after the agent has made the
    # container, its record does not.
    fill(root, PAGE)
    message = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, daemon.create, pod_id, config,
                           ["sleep", "300"])
    assert "No space left on device" in message and f"{root}/pods/" in message, message
    # Nothing of either call is left, nothing is half-written, the pod runs on.
    assert [p.id for p in daemon.runtime.ListPodSandbox(
        api.ListPodSandboxRequest()).items] == [pod_id]
    assert [c.id for c in daemon.runtime.ListContainers(
        api.ListContainersRequest()).containers] == [container]
    assert sorted(p.name for p in (root / "containers").iterdir()) == [container]
    assert not list(root.glob("pods/*/creating/*"))
    assert len(leaks.qemu_processes(str(daemon.state))) == 1
    assert not records_are_whole(root)
    assert daemon.exec(container, ["echo", "still"]).stdout == b"still\n"

    # Space back, vmrtd killed and restarted: the pod and its container are there.
    (root / "filler").unlink()
    daemon.restart(signal.SIGKILL)
    assert daemon.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.state == api.SANDBOX_READY
    assert daemon.status(container).state == api.CONTAINER_RUNNING
    assert daemon.exec(container, ["echo", "back"]).stdout == b"back\n"
    assert pull(daemon, name).startswith("sha256:")
    second = daemon.run_container(pod_id, config, ["sleep", "300"])
    assert daemon.status(second).state == api.CONTAINER_RUNNING
    assert not records_are_whole(root)
