"""Attacks from a hostile guest, each run from a privileged container that
shares the VM's pid namespace (so ``nsenter -t 1`` reaches the agent's own
namespaces: as much of the guest as root in the guest kernel has).

Each test states the attack, then checks that the host is untouched.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon

pytestmark = pytest.mark.vm


def attacker(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> str:
    pod_id, config = pod
    return vmrtd.run_container(pod_id, config, ["sleep", "600"], linux=api.LinuxContainerConfig(
        security_context=api.LinuxContainerSecurityContext(
            privileged=True, namespace_options=api.NamespaceOption(pid=api.NODE))))


def in_agent(vmrtd: Daemon, container: str, script: str,
             timeout: int = 60) -> api.ExecSyncResponse:
    """Run ``script`` in the agent's mount namespace, as guest root."""
    return vmrtd.exec(container, ["nsenter", "-t", "1", "-m", "--", "sh", "-c", script],
                      timeout=timeout)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def canary() -> Iterator[Path]:
    """A host directory worth protecting: files, and a tmpfs mounted under it
    with files of its own (as /var/lib/kubelet holds every pod's volumes)."""
    base = Path("/tmp") / f"vmrt-canary-{secrets.token_hex(4)}"
    (base / "volume").mkdir(parents=True)
    (base / "precious").write_text("keep me\n")
    subprocess.run(["mount", "-t", "tmpfs", "canary", str(base / "volume")], check=True)
    (base / "volume" / "data").write_text("keep me too\n")
    try:
        yield base
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(base / "volume")], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def assert_canary_intact(canary: Path) -> None:
    assert (canary / "precious").read_text() == "keep me\n"
    assert is_mounted(canary / "volume"), "the host unmounted the canary's tmpfs"
    assert (canary / "volume" / "data").read_text() == "keep me too\n"


def test_symlink_planted_in_the_share_never_steers_the_host(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig], canary: Path,
        tmp_path: Path) -> None:
    """Kata's CVE-2020-2026: swap a sibling container's share directory (and
    its root filesystem and volume mount points) for symlinks to a host
    directory, then have the host remove that container."""
    pod_id, config = pod
    volume = tmp_path / "volume"
    volume.mkdir()
    victim = vmrtd.run_container(pod_id, config, ["sleep", "600"], mounts=[
        api.Mount(container_path="/data", host_path=str(volume))])
    evil = attacker(vmrtd, pod)
    share = f"/run/vmrt/share/{victim}"
    seen = in_agent(vmrtd, evil, f"ls {share}/rootfs/bin/sh {share}/mounts/0 >/dev/null && "
                                 "echo seen")
    assert seen.stdout == b"seen\n", seen.stderr  # the attacker does reach the share
    plant = in_agent(vmrtd, evil, f"""
        cd /run/vmrt/share
        mv {victim} {victim}.moved; ln -s {canary} {victim}
        mv {victim}/rootfs {victim}/rootfs.moved; ln -s {canary} {victim}/rootfs
        mv {victim}/mounts/0 {victim}/mounts/0.moved; ln -s {canary} {victim}/mounts/0
        ln -s {canary} {victim}/mounts/1
        ln -s {canary} {victim}/rootfs/escape
        ln -s {canary} {victim}/mounts/0/escape
        ls -la /run/vmrt/share /run/vmrt/share/{victim}
    """)
    refusals = plant.stderr.decode()
    # Three renames and two new names in the share's own directories.
    assert refusals.count("can't rename") == 3, refusals
    assert refusals.count("Read-only file system") == 5, refusals
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=victim), timeout=60)
    assert_canary_intact(canary)
    # What the guest could write (inside the root filesystem and the volume)
    # was just that: the volume's symlink is in the volume, pointing nowhere
    # the host goes.
    assert (volume / "escape").is_symlink()
