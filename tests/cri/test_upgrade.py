"""An upgrade of vmrt itself: pods started by the previous release keep
running while vmrtd is replaced, and the new vmrtd adopts them.

The previous release is the last commit before the drop-in issue's work,
checked out with ``git archive`` into a venv of its own (its dependencies
are a subset of today's: the venv reaches the suite's site-packages through
a ``.pth`` line, without the suite's editable vmrt). The guest image is
today's: only the host side changes here.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, wait_for
from tests.helpers import leaks

pytestmark = pytest.mark.vm

PREVIOUS = "68b981a"  # the last commit before the drop-in issue's work
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def previous_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    have = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                          capture_output=True, check=False)
    if have.returncode != 0:
        pytest.skip(f"this checkout has no history back to {PREVIOUS} (a shallow clone)")
    base = tmp_path_factory.mktemp("previous")
    source = base / "src"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS, "vmrt"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "vmrt-previous.pth").write_text(f"{source}\n{sysconfig.get_paths()['purelib']}\n")
    # -P: not the working directory first on sys.path (it is this checkout).
    wrapper = base / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {venv / "bin" / "python"} -P "$@"\n')
    wrapper.chmod(0o755)
    python = str(wrapper)
    where = subprocess.run([python, "-c", "import vmrt; print(vmrt.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(source)), where
    return python


@pytest.fixture
def upgraded(guest_image, previous_python: str, request: pytest.FixtureRequest
             ) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    for base in _short_dir():
        yield from _daemon(base, guest_image, request, python=previous_python)


def test_pods_of_the_previous_release_are_adopted_after_an_upgrade(upgraded: Daemon) -> None:
    daemon = upgraded
    # The previous release says nothing of SupplementalGroupsPolicy; today's does.
    assert not daemon.runtime.Status(api.StatusRequest()).features.supplemental_groups_policy
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    container = daemon.run_container(pod_id, config, [
        "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"],
        name="ticker")
    log = Path(daemon.status(container).log_path)
    assert wait_for(lambda: log.exists() and b"tick 1" in log.read_bytes())
    qemu = leaks.qemu_processes(str(daemon.state))
    assert len(qemu) == 1

    # The upgrade: the old vmrtd stops (its pods do not), the new one starts.
    daemon.stop()
    assert leaks.qemu_processes(str(daemon.state)) == qemu
    daemon.python = sys.executable
    daemon.start()
    version = subprocess.run([daemon.python, "-c", "import vmrt; print(vmrt.__file__)"],
                             capture_output=True, text=True, check=True).stdout
    assert str(REPO) in version
    assert daemon.runtime.Status(api.StatusRequest()).features.supplemental_groups_policy

    status = daemon.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id), timeout=120).status
    assert status.state == api.SANDBOX_READY
    assert daemon.status(container).state == api.CONTAINER_RUNNING
    assert daemon.exec(container, ["echo", "after the upgrade"]).stdout == b"after the upgrade\n"
    # Its log goes on being written, and the new vmrtd runs new containers in it.
    seen = log.read_bytes().count(b"tick")
    assert wait_for(lambda: log.read_bytes().count(b"tick") > seen + 1)
    second = daemon.run_container(pod_id, config, ["sleep", "300"], name="new")
    assert daemon.status(second).stop_signal == api.SIGTERM  # a field the old release lacked
    # The old records are read; the new fields have their defaults.
    daemon.runtime.StopContainer(api.StopContainerRequest(container_id=container, timeout=5))
    assert daemon.status(container).state == api.CONTAINER_EXITED
    daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert wait_for(lambda: not leaks.qemu_processes(str(daemon.state)), timeout=30)
