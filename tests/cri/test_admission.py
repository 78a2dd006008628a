"""RunPodSandbox is refused when the node cannot hold the new VM at its full size."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error
from tests.helpers import leaks
from vmrt.runtime.sizing import meminfo_mib

pytestmark = pytest.mark.vm


@pytest.fixture
def room_for_one(guest_image, request: pytest.FixtureRequest
                 ) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    """A vmrtd whose overcommit ratio leaves room for 400 MiB of VMs: one default pod."""
    ratio = 400 / meminfo_mib("MemTotal")
    for base in _short_dir():
        yield from _daemon(base, guest_image, request,
                           hypervisor_config=f"memory_overcommit = {ratio:.6f}\n")


def test_a_pod_the_node_cannot_hold_is_refused(room_for_one: Daemon) -> None:
    daemon = room_for_one
    first = daemon.run_pod()
    message = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, daemon.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=daemon.pod_config()), timeout=120)
    assert "cannot hold another VM of 256 MiB" in message and "already take 256 MiB" in message
    assert "hypervisor.memory_overcommit" in message
    assert len(leaks.qemu_processes(str(daemon.state))) == 1  # nothing of the refused pod
    daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=first), timeout=60)
    # A stopped pod's VM is gone, and so is its share of the node.
    second = daemon.run_pod()
    assert daemon.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=second)).status.state == api.SANDBOX_READY
