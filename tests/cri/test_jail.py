"""QEMU's confinement, as the kernel reports it for the running process:
capabilities, mount namespace and root, cgroup (both drivers), and the
refusal of a pod larger than any VM may be."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error
from vmrt.hypervisor.confine import CAPABILITIES, DEFAULT_CAPABILITIES
from vmrt.sandbox import cgroups

pytestmark = pytest.mark.vm


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc/{pid}/status")


@pytest.fixture
def parent_cgroups() -> Iterator[list[str]]:
    """Parent cgroups a test makes up (as kubelet would have made them); removed after."""
    made: list[str] = []
    yield made
    for relative in made:
        for hierarchy in cgroups.hierarchies():
            parts = Path(relative.lstrip("/")).parts
            for depth in range(len(parts), 0, -1):
                subprocess.run(["rmdir", str(hierarchy.joinpath(*parts[:depth]))],
                               check=False, capture_output=True)


def test_qemu_is_jailed_in_the_pods_cgroup(vmrtd: Daemon, parent_cgroups: list[str]) -> None:
    parent = f"/vmrt-test-{secrets.token_hex(3)}/pod{secrets.token_hex(4)}"
    parent_cgroups.append(parent)
    config = vmrtd.pod_config(linux=api.LinuxPodSandboxConfig(cgroup_parent=parent))
    pod_id = vmrtd.run_pod(config)
    pid = vmrtd.qemu_pid(pod_id)
    assert "qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()

    # Capabilities: exactly the ones 9p needs, and no way back to the rest.
    wanted = sum(1 << CAPABILITIES[c] for c in DEFAULT_CAPABILITIES)
    assert int(status_field(pid, "CapEff"), 16) == wanted
    assert int(status_field(pid, "CapBnd"), 16) == wanted
    assert int(status_field(pid, "CapInh"), 16) == 0
    assert status_field(pid, "NoNewPrivs") == "1"
    assert status_field(pid, "Seccomp") == "2"  # QEMU's own -sandbox filter

    # Its own mount namespace, whose root holds only what the VM needs.
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    root = Path(f"/proc/{pid}/root")
    assert set(os.listdir(root)) <= {"usr", "etc", "bin", "sbin", "lib", "lib64", "proc",
                                     "dev", "tmp", "var", "run"}, os.listdir(root)
    assert os.listdir(root / "etc") == ["ld.so.cache"]
    assert os.listdir(root / "proc") == ["self"]
    assert not (root / "root").exists() and not (root / "sys").exists()
    assert sorted(os.listdir(root / "dev")) == ["null", "random", "urandom", "zero"]
    sandbox = next(vmrtd.state.glob(f"sandboxes/{pod_id[:32]}"))
    inside = root / str(sandbox).lstrip("/")
    assert os.listdir(inside) == ["shared"]  # not the sockets, state or console files
    assert not (root / str(vmrtd.root).lstrip("/")).exists()  # nor images or records

    # The pod's cgroup, in every hierarchy.
    expected = f"{parent}/vmrt-{pod_id}"
    placed = cgroups.os_pid_cgroups(pid)
    for hierarchy in cgroups.hierarchies():
        key = "unified" if hierarchy.name == "unified" or hierarchy == Path("/sys/fs/cgroup") \
            else hierarchy.name
        matching = [path for controllers, path in placed.items()
                    if key in controllers.split(",")]
        assert matching == [expected], (hierarchy, placed)
    assert vmrtd.runtime.RuntimeConfig(api.RuntimeConfigRequest()).linux.cgroup_driver == \
        api.CGROUPFS

    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    for hierarchy in cgroups.hierarchies():
        assert not (hierarchy / expected.lstrip("/")).exists()


def test_a_pod_larger_than_any_vm_is_refused(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config(linux=api.LinuxPodSandboxConfig(
        resources=api.LinuxContainerResources(memory_limit_in_bytes=64 << 40)))
    before = set(vmrtd.state.glob("sandboxes/*"))
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=config), timeout=60)
    assert "memory_limit_in_bytes" in details and "more than the maximum of" in details
    assert set(vmrtd.state.glob("sandboxes/*")) == before


@pytest.fixture
def systemd_vmrtd(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    for base in _short_dir():
        yield from _daemon(base, guest_image, request,
                           extra_config='[cgroups]\ndriver = "systemd"\n')


def test_systemd_cgroup_driver(systemd_vmrtd: Daemon, parent_cgroups: list[str]) -> None:
    vmrtd = systemd_vmrtd
    assert vmrtd.runtime.RuntimeConfig(api.RuntimeConfigRequest()).linux.cgroup_driver == \
        api.SYSTEMD
    refused = vmrtd.pod_config(linux=api.LinuxPodSandboxConfig(
        cgroup_parent="/kubepods/besteffort"))
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=refused), timeout=60)
    assert "not a systemd slice" in details
    uid = secrets.token_hex(4)
    parent_cgroups.append(f"/vmrttest.slice/vmrttest-besteffort.slice/"
                          f"vmrttest-besteffort-pod{uid}.slice")
    config = vmrtd.pod_config(linux=api.LinuxPodSandboxConfig(
        cgroup_parent=f"vmrttest-besteffort-pod{uid}.slice"))
    pod_id = vmrtd.run_pod(config)
    pid = vmrtd.qemu_pid(pod_id)
    expected = (f"/vmrttest.slice/vmrttest-besteffort.slice/vmrttest-besteffort-pod{uid}.slice/"
                f"vmrt-{pod_id}.scope")
    assert expected in cgroups.os_pid_cgroups(pid).values(), cgroups.os_pid_cgroups(pid)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    for hierarchy in cgroups.hierarchies():
        assert not (hierarchy / expected.lstrip("/")).exists()
