"""Bad CRI requests get the right code and a message naming the problem; failures
part-way roll back everything; the daemon keeps serving."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, expect_error, wait_for
from tests.helpers import leaks

pytestmark = pytest.mark.vm


@pytest.fixture(autouse=True)
def still_serving(vmrtd: Daemon):  # type: ignore[no-untyped-def]
    made = len(vmrtd.pod_ids)
    yield
    assert vmrtd.runtime.Version(api.VersionRequest(), timeout=10).runtime_name == "vmrt"
    # The test's own pods, also when it failed half-way (removing twice is fine).
    for pod_id in vmrtd.pod_ids[made:]:
        vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)


def test_missing_metadata(vmrtd: Daemon) -> None:
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=api.PodSandboxConfig()))
    assert "metadata.name" in details
    config = vmrtd.pod_config()
    config.metadata.uid = ""
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=config))
    assert "metadata.uid" in details


def test_unknown_ids(vmrtd: Daemon) -> None:
    unknown = "ab" * 32
    for call, request in [
        (vmrtd.runtime.PodSandboxStatus, api.PodSandboxStatusRequest(pod_sandbox_id=unknown)),
        (vmrtd.runtime.ContainerStatus, api.ContainerStatusRequest(container_id=unknown)),
        (vmrtd.runtime.StartContainer, api.StartContainerRequest(container_id=unknown)),
        (vmrtd.runtime.ExecSync, api.ExecSyncRequest(container_id=unknown, cmd=["true"])),
        (vmrtd.runtime.ContainerStats, api.ContainerStatsRequest(container_id=unknown)),
    ]:
        details = expect_error(grpc.StatusCode.NOT_FOUND, call, request)
        assert unknown in details
    details = expect_error(grpc.StatusCode.NOT_FOUND, vmrtd.runtime.CreateContainer,
                           api.CreateContainerRequest(
                               pod_sandbox_id=unknown,
                               config=api.ContainerConfig(
                                   metadata=api.ContainerMetadata(name="x"),
                                   image=api.ImageSpec(image="busybox"))))
    assert "pod sandbox" in details
    # Stopping or removing what is not there succeeds: kubelet retries these.
    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=unknown), timeout=30)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=unknown),
                                   timeout=30)
    vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=unknown), timeout=30)
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=unknown), timeout=30)


def test_unknown_runtime_handler(vmrtd: Daemon) -> None:
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=vmrtd.pod_config(),
                                                    runtime_handler="gvisor"))
    assert details.startswith("runtime_handler: ") and "gvisor" in details


def test_duplicate_pod_name_and_bad_container_requests(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config(name="dup")
    pod_id = vmrtd.run_pod(config)
    details = expect_error(grpc.StatusCode.ALREADY_EXISTS, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=config))
    assert "dup" in details

    def create(**fields: object) -> api.CreateContainerRequest:
        container = api.ContainerConfig(metadata=api.ContainerMetadata(name="bad"),
                                        image=api.ImageSpec(image="busybox"),
                                        command=["true"])
        for key, value in fields.items():
            if key == "mounts":
                container.mounts.extend(value)  # type: ignore[arg-type]
            else:
                getattr(container, key).CopyFrom(value)
        return api.CreateContainerRequest(pod_sandbox_id=pod_id, config=container,
                                          sandbox_config=config)

    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.CreateContainer,
                           create(mounts=[api.Mount(container_path="relative/path",
                                                    host_path="/tmp")]))
    assert "container_path" in details
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.CreateContainer,
                           create(mounts=[api.Mount(container_path="/data", host_path="")]))
    assert "host_path" in details
    details = expect_error(grpc.StatusCode.NOT_FOUND, vmrtd.runtime.CreateContainer,
                           create(image=api.ImageSpec(image="no-such-image:1.0")))
    assert "no-such-image" in details
    no_name = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=api.ContainerConfig(
        image=api.ImageSpec(image="busybox")), sandbox_config=config)
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.CreateContainer,
                           no_name)
    assert "metadata.name" in details
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.StopContainer,
                           api.StopContainerRequest(container_id="x", timeout=-5))
    assert "negative" in details

    # The same container name twice in one pod.
    first = vmrtd.create(pod_id, config, ["true"], name="twin")
    details = expect_error(grpc.StatusCode.ALREADY_EXISTS, vmrtd.create, pod_id, config,
                           ["true"], name="twin")
    assert "twin" in details
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=first))

    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    details = expect_error(grpc.StatusCode.FAILED_PRECONDITION, vmrtd.runtime.CreateContainer,
                           create())
    assert "not ready" in details
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    # The name is free again once the pod is removed.
    again = vmrtd.run_pod(config)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=again))


def test_failed_run_pod_sandbox_leaves_nothing(vmrtd: Daemon) -> None:
    before = {p.id for p in vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items}
    # The "tiny" handler's 96 MiB cannot hold the guest: the VM dies while booting.
    details = expect_error(grpc.StatusCode.INTERNAL, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=vmrtd.pod_config(),
                                                    runtime_handler="tiny"))
    assert "while booting" in details and "memory" in details
    after = {p.id for p in vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items}
    assert after == before
    assert not leaks.find(vmrtd.state)
    assert not list((vmrtd.root / "pods").glob("*/pod.json")) or \
        {p.parent.name for p in (vmrtd.root / "pods").glob("*/pod.json")} == before


def test_a_missing_command_fails_at_start_and_leaves_nothing(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    before = {c.id for c in vmrtd.runtime.ListContainers(api.ListContainersRequest()).containers}
    # As containerd: CreateContainer succeeds, StartContainer fails.
    broken = vmrtd.create(pod_id, config, ["/no/such/binary"], name="broken",
                          mounts=[api.Mount(container_path="/data", host_path="/tmp")])
    assert vmrtd.status(broken).state == api.CONTAINER_CREATED
    details = expect_error(grpc.StatusCode.FAILED_PRECONDITION, vmrtd.runtime.StartContainer,
                           api.StartContainerRequest(container_id=broken))
    assert "cannot start" in details and "/no/such/binary" in details, details
    status = vmrtd.status(broken)
    assert (status.state, status.exit_code, status.reason) == (
        api.CONTAINER_EXITED, 128, "StartError"), status
    assert "/no/such/binary" in status.message
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=broken))
    after = {c.id for c in vmrtd.runtime.ListContainers(api.ListContainersRequest()).containers}
    assert after == before
    shared = next(vmrtd.state.glob("sandboxes/*/shared"))
    assert not any(shared.iterdir()), list(shared.iterdir())
    # Only the share's own read-only view is mounted there, and nothing in
    # the host-only directory behind it.
    assert leaks.mounts_under(shared) == [str(shared)]
    assert leaks.mounts_under(shared.parent / "mounts") == [str(shared.parent / "mounts")]
    assert not any((vmrtd.root / "containers").iterdir()) or \
        {p.name for p in (vmrtd.root / "containers").iterdir()} <= before
    # The name was released with everything else.
    retry = vmrtd.create(pod_id, config, ["true"], name="broken")
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=retry))


def test_deadline_cancels_run_pod_sandbox_and_rolls_back(vmrtd: Daemon) -> None:
    before = leaks.find(vmrtd.state)
    pods_before = {p.id for p in vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items}
    expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, vmrtd.runtime.RunPodSandbox,
                 api.RunPodSandboxRequest(config=vmrtd.pod_config()), timeout=1.0)
    # The daemon applies the same deadline and unwinds what it had done.
    assert wait_for(lambda: leaks.find(vmrtd.state) == before, timeout=20), \
        (before, leaks.find(vmrtd.state))
    after = {p.id for p in vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items}
    assert after == pods_before
    # Whichever came first, the caller's cancellation or the daemon's own
    # deadline (the same one), the call was unwound.
    def unwound() -> bool:
        log = vmrtd.log_file.read_text()
        return ("RunPodSandbox cancelled by the caller" in log
                or "RunPodSandbox -> DEADLINE_EXCEEDED" in log)

    # Under load the log line can come after the clean-up the test saw.
    assert wait_for(unwound, timeout=20), vmrtd.log_file.read_text()[-2000:]


def test_a_stop_cut_short_by_its_deadline_is_finished_by_the_next(vmrtd: Daemon) -> None:
    """A guest that hangs (its QEMU stopped) makes a StopPodSandbox miss its
    deadline; the next StopPodSandbox must still do the whole job."""
    config = vmrtd.pod_config()
    pod_id = vmrtd.run_pod(config)
    vmrtd.run_container(pod_id, config, ["sleep", "1000"])
    pid = vmrtd.qemu_pid(pod_id)
    os.kill(pid, signal.SIGSTOP)
    try:
        expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, vmrtd.runtime.StopPodSandbox,
                     api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    status = vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id), timeout=30).status
    assert status.state == api.SANDBOX_NOTREADY
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
    assert "netns" not in leaks.network_leaks([pod_id], vmrtd.network.ipam_dir)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=60)
    assert not (vmrtd.root / "pods" / pod_id).exists()
    assert pod_id[:32] not in str(leaks.find(vmrtd.state))


def test_a_guest_panic_makes_the_pod_notready_and_says_so(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config()
    pod_id = vmrtd.run_pod(config)
    container = vmrtd.run_container(pod_id, config, ["sleep", "600"],
                                    linux=api.LinuxContainerConfig(
                                        security_context=api.LinuxContainerSecurityContext(
                                            privileged=True)))
    with pytest.raises(grpc.RpcError):  # the guest dies under the call
        vmrtd.runtime.ExecSync(api.ExecSyncRequest(
            container_id=container, cmd=["sh", "-c", "echo c > /proc/sysrq-trigger"],
            timeout=30), timeout=60)
    reason = wait_for(lambda: vmrtd.notready_reason(pod_id), timeout=60)
    assert reason
    # From the pvpanic device's GUEST_PANICKED (QEMU shuts down with reason
    # guest-panic); without it the guest's panic=-1 reboot read as guest-reset.
    assert "guest-panic" in reason and "panicked" in reason, reason
    assert vmrtd.status(container).state == api.CONTAINER_EXITED


def test_a_hung_guest_is_declared_dead_by_the_watchdog(vmrtd: Daemon) -> None:
    """With the handler's watchdog settings (conftest's "watchful": keepalive
    2 s, PING timeout 5 s, two probes of 3 s; the defaults take about a
    minute)."""
    config = vmrtd.pod_config()
    pod_id = vmrtd.run_pod(config, handler="watchful")
    container = vmrtd.run_container(pod_id, config, ["sleep", "600"])
    pid = vmrtd.qemu_pid(pod_id)
    started = time.monotonic()
    os.kill(pid, signal.SIGSTOP)  # the guest hangs; QEMU is still there
    try:
        reason = wait_for(lambda: vmrtd.notready_reason(pod_id), timeout=120)
        assert reason
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    print(f"hung guest declared dead after {time.monotonic() - started:.1f} s")
    assert "stopped answering" in reason, reason
    assert "missed 2 health checks of 3 s" in reason, reason  # the handler's, not the defaults
    assert vmrtd.status(container).state == api.CONTAINER_EXITED
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
