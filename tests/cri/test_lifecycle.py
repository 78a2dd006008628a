"""Pods and containers through CRI: lifecycle, exec, logs, filters, stats, events."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, expect_error, wait_for

pytestmark = pytest.mark.vm

LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) (.*)$")


def test_version_status_and_runtime_config(vmrtd: Daemon) -> None:
    version = vmrtd.runtime.Version(api.VersionRequest())
    assert version.runtime_name == "vmrt" and version.runtime_api_version == "v1"
    status = vmrtd.runtime.Status(api.StatusRequest(verbose=True))
    conditions = {c.type: c for c in status.status.conditions}
    assert conditions["RuntimeReady"].status
    assert conditions["NetworkReady"].status  # the test daemon has a CNI network
    assert {"", "vmrt", "tiny"} <= {h.name for h in status.runtime_handlers}
    assert json.loads(status.info["config"])["accel"] in ("tcg", "kvm")
    config = vmrtd.runtime.RuntimeConfig(api.RuntimeConfigRequest())
    assert config.linux.cgroup_driver == api.CGROUPFS


def test_two_containers_in_one_pod(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config(labels={"app": "two"})
    pod_id = vmrtd.run_pod(config)
    status = vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id, verbose=True))
    assert status.status.state == api.SANDBOX_READY
    assert status.status.metadata.name == config.metadata.name
    assert json.loads(status.info["info"])["vm"]["memory_mib"] == 256

    own_pids = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
        namespace_options=api.NamespaceOption(pid=api.CONTAINER)))
    first = vmrtd.run_container(pod_id, config, ["sh", "-c", "echo one; sleep 300"],
                                labels={"role": "server"}, linux=own_pids)
    second = vmrtd.create(pod_id, config, ["sh", "-c", "echo two; sleep 1; exit 3"],
                          envs=[api.KeyValue(key="GREETING", value="hi")], working_dir="/tmp")
    assert vmrtd.status(second).state == api.CONTAINER_CREATED
    vmrtd.runtime.StartContainer(api.StartContainerRequest(container_id=second))

    exited = vmrtd.wait_exited(second)
    assert exited.state == api.CONTAINER_EXITED
    assert exited.exit_code == 3 and exited.reason == "Error"
    assert exited.created_at <= exited.started_at <= exited.finished_at
    running = vmrtd.status(first)
    assert running.state == api.CONTAINER_RUNNING and running.started_at > 0

    # Both share the pod's hostname; each has its own pid namespace.
    reply = vmrtd.exec(first, ["sh", "-c", "hostname; ps -o args"])
    lines = reply.stdout.decode().splitlines()
    assert lines[0] == config.hostname
    # Its own pid namespace: its sleep, the exec'd shell, and nothing of the pod's.
    assert "sleep 300" in lines
    assert not any("2147483647" in line for line in lines)

    vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=first, timeout=5))
    stopped = vmrtd.status(first)
    assert stopped.state == api.CONTAINER_EXITED and stopped.exit_code in (128 + 15, 128 + 9)
    for container_id in (first, second):
        vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id))
    listed = vmrtd.runtime.ListContainers(api.ListContainersRequest(
        filter=api.ContainerFilter(pod_sandbox_id=pod_id)))
    assert not listed.containers
    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    stopped_pod = vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status
    assert stopped_pod.state == api.SANDBOX_NOTREADY
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    expect_error(grpc.StatusCode.NOT_FOUND, vmrtd.runtime.PodSandboxStatus,
                 api.PodSandboxStatusRequest(pod_sandbox_id=pod_id))


def test_image_config_env_workdir_and_user(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]
                                           ) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(
        pod_id, config, ["sh", "-c", "sleep 300"], working_dir="/tmp",
        envs=[api.KeyValue(key="GREETING", value="hi")],
        linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
            run_as_user=api.Int64Value(value=65534), supplemental_groups=[1234])))
    reply = vmrtd.exec(container, ["sh", "-c", "echo $GREETING $PATH; pwd; id -u; id -g; "
                                   "grep ^Groups: /proc/self/status"])
    out = reply.stdout.decode().splitlines()
    assert out[0].startswith("hi /usr/local/sbin")
    assert out[1] == "/tmp"
    assert out[2] == "65534"
    # The kernel's supplementary groups hold the primary gid too, as containerd's do.
    groups = [int(g) for g in out[4].split()[1:]]
    assert int(out[3]) in groups and 1234 in groups, out
    user = vmrtd.status(container).user.linux
    assert user.uid == 65534 and user.gid == int(out[3])
    assert sorted(user.supplemental_groups) == sorted(groups)
    features = vmrtd.runtime.Status(api.StatusRequest()).features
    assert features.supplemental_groups_policy


def test_pod_hostname_dns_and_sysctls(vmrtd: Daemon,
                                      pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"])
    reply = vmrtd.exec(container, ["sh", "-c", "hostname; cat /etc/resolv.conf; "
                                   "cat /proc/sys/net/ipv4/ip_forward "
                                   "/proc/sys/kernel/shm_rmid_forced; grep -c . /etc/hosts"])
    lines = reply.stdout.decode().splitlines()
    assert lines[0] == config.hostname
    assert lines[1:4] == ["nameserver 10.96.0.10", "search test.svc.cluster.local",
                          "options ndots:5"]
    assert lines[4:6] == ["1", "1"]
    assert int(lines[6]) >= 2


def test_exec_sync_output_exit_codes_and_timeout(vmrtd: Daemon,
                                                 pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(pod_id, config, ["sh", "-c", "while :; do read x; done"],
                                    stdin=True)
    reply = vmrtd.exec(container, ["sh", "-c", "echo out; echo err >&2; exit 5"])
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 5)
    assert vmrtd.exec(container, ["true"]).exit_code == 0
    big = vmrtd.exec(container, ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"])
    assert big.stdout == b"x" * 3_000_000
    started = time.monotonic()
    details = expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, vmrtd.exec, container,
                           ["sleep", "30"], timeout=2)
    assert time.monotonic() - started < 25
    assert "did not finish within 2 s" in details
    # The timed-out command is gone; nothing else in the pod's shared pid
    # namespace is called sleep either (its holder runs as "pause").
    assert vmrtd.exec(container, ["sh", "-c", "pgrep sleep || true"]).stdout == b""
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.ExecSync,
                           api.ExecSyncRequest(container_id=container, cmd=["true"],
                                               timeout=-1))
    assert "negative" in details
    # As with containerd, a program that cannot start is an error, not an
    # exit code: the caller named a program the container does not have.
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.exec, container,
                           ["/no/such/program"])
    assert details.startswith("cmd: ") and "/no/such/program" in details
    # A file that exists but cannot be opened as a program is the same.
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.exec, container,
                           ["/proc/self/mem"])
    assert details.startswith("cmd: "), details


def test_log_file_format_partial_lines_and_reopen(vmrtd: Daemon,
                                                  pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(pod_id, config, [
        "sh", "-c",
        "echo first; echo oops >&2; head -c 40000 /dev/zero | tr '\\0' a; echo; "
        "printf 'no newline'; sleep 2; echo after-rotate; sleep 300"])
    log_path = vmrtd.status(container).log_path
    assert log_path.endswith(".log") and log_path.startswith(config.log_directory)

    def log_has(text: bytes) -> bool:
        try:
            with open(log_path, "rb") as f:
                return text in f.read()
        except FileNotFoundError:
            return False

    assert wait_for(lambda: log_has(b"F " + b"a" * 100))
    with open(log_path, "rb") as f:
        lines = f.read().splitlines()
    parsed = [LOG_LINE.match(line) for line in lines]
    assert all(parsed), lines[:5]
    # Each stream keeps its order; between stdout and stderr there is none
    # (two pipes, each copied on its own, as in containerd).
    assert sorted((m.group(1), m.group(2), m.group(3)) for m in parsed[:2]) == [  # type: ignore[union-attr]
        (b"stderr", b"F", b"oops"), (b"stdout", b"F", b"first")]
    pieces = [m for m in parsed if m and m.group(3).startswith(b"aaaa")]
    assert [m.group(2) for m in pieces] == [b"P", b"P", b"F"]
    assert b"".join(m.group(3) for m in pieces) == b"a" * 40000

    rotated = log_path + ".1"
    import os

    os.rename(log_path, rotated)
    vmrtd.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=container))
    assert wait_for(lambda: log_has(b"after-rotate"))
    with open(log_path, "rb") as f:
        assert b"first" not in f.read()
    vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=container, timeout=0))
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, vmrtd.runtime.ReopenContainerLog,
                 api.ReopenContainerLogRequest(container_id=container))


def test_stop_and_remove_are_idempotent(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config()
    pod_id = vmrtd.run_pod(config)
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"])
    for _ in range(2):
        vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=container, timeout=1))
    for _ in range(2):
        vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container))
    for _ in range(2):
        vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    for _ in range(2):
        vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    unknown = "0" * 64
    vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=unknown))
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=unknown))
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=unknown))


def test_list_filters(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    running = vmrtd.run_container(pod_id, config, ["sleep", "300"], labels={"tier": "a"})
    created = vmrtd.create(pod_id, config, ["true"], labels={"tier": "b"})

    def containers(**fields: object) -> set[str]:
        reply = vmrtd.runtime.ListContainers(api.ListContainersRequest(
            filter=api.ContainerFilter(**fields)))  # type: ignore[arg-type]
        return {c.id for c in reply.containers}

    assert {running, created} <= containers()
    assert containers(id=running[:16]) == {running}
    assert running in containers(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
    assert created not in containers(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
    assert containers(label_selector={"tier": "b"}) == {created}
    assert containers(pod_sandbox_id="f" * 64) == set()

    def pods(**fields: object) -> set[str]:
        reply = vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(**fields)))  # type: ignore[arg-type]
        return {p.id for p in reply.items}

    assert pod_id in pods(label_selector={"app": "shared"})
    assert pod_id not in pods(label_selector={"app": "other"})
    assert pod_id in pods(state=api.PodSandboxStateValue(state=api.SANDBOX_READY))
    assert pod_id not in pods(state=api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY))
    assert pods(id=pod_id[:20]) == {pod_id}


def test_stats(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(pod_id, config, ["sh", "-c",
                                                     "dd if=/dev/zero of=/big bs=1k count=2048;"
                                                     " sleep 300"])
    assert wait_for(lambda: vmrtd.exec(container, [
        "sh", "-c", "test \"$(wc -c < /big)\" -eq 2097152"]).exit_code == 0)
    stats = vmrtd.runtime.ContainerStats(api.ContainerStatsRequest(container_id=container)).stats
    assert stats.attributes.id == container
    assert stats.memory.working_set_bytes.value > 0
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.writable_layer.used_bytes.value >= 2048 * 1024
    listed = vmrtd.runtime.ListContainerStats(api.ListContainerStatsRequest(
        filter=api.ContainerStatsFilter(pod_sandbox_id=pod_id)))
    assert container in {s.attributes.id for s in listed.stats}
    pod_stats = vmrtd.runtime.PodSandboxStats(api.PodSandboxStatsRequest(
        pod_sandbox_id=pod_id)).stats
    assert pod_stats.linux.memory.working_set_bytes.value > 0
    assert pod_stats.linux.process.process_count.value >= 1
    assert container in {c.attributes.id for c in pod_stats.linux.containers}
    all_pods = vmrtd.runtime.ListPodSandboxStats(api.ListPodSandboxStatsRequest())
    assert pod_id in {s.attributes.id for s in all_pods.stats}


def test_pod_resize_keeps_the_size_or_says_why_not(vmrtd: Daemon,
                                                    pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    # kubelet's call after a resize that leaves the VM as it is: accepted.
    vmrtd.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod_id, resources=config.linux.resources))
    bigger = api.LinuxContainerResources(memory_limit_in_bytes=512 << 20)
    details = expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                           vmrtd.runtime.UpdatePodSandboxResources,
                           api.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod_id,
                                                                resources=bigger))
    assert "booted with 256 MiB and 1 vCPU(s)" in details, details
    assert "cannot become 768 MiB" in details, details
    expect_error(grpc.StatusCode.NOT_FOUND, vmrtd.runtime.UpdatePodSandboxResources,
                 api.UpdatePodSandboxResourcesRequest(pod_sandbox_id="f" * 64))
    assert vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.state == api.SANDBOX_READY


def test_a_pod_shrinks_and_grows_back_in_place(vmrtd: Daemon) -> None:
    """In-place pod resize within the size the VM booted with: the balloon
    takes guest RAM and gives it back, a vCPU goes offline and online; the
    guest's own /proc/meminfo and nproc show it."""
    def resources(memory_mib: int, cpus: int) -> api.LinuxContainerResources:
        return api.LinuxContainerResources(memory_limit_in_bytes=memory_mib << 20,
                                           cpu_period=100_000, cpu_quota=cpus * 100_000)

    config = vmrtd.pod_config(linux=api.LinuxPodSandboxConfig(resources=resources(128, 1)))
    pod_id = vmrtd.run_pod(config)  # a VM of 256 + 128 MiB and 1 + 1 vCPUs
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"])

    def guest() -> tuple[int, int]:
        out = vmrtd.exec(container, ["sh", "-c", "grep MemTotal /proc/meminfo; nproc"])
        memtotal, nproc = out.stdout.decode().split("\n")[:2]
        return int(memtotal.split()[1]) // 1024, int(nproc)

    booted_mib, booted_cpus = guest()
    assert booted_cpus == 2 and booted_mib > 300, (booted_mib, booted_cpus)

    def resize(memory_mib: int, cpus: int) -> None:
        vmrtd.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod_id, resources=resources(memory_mib, cpus)), timeout=60)

    resize(64, 0)  # 256 + 64 MiB, 1 vCPU
    small_mib, small_cpus = guest()
    assert small_cpus == 1 and 56 <= booted_mib - small_mib <= 72, (booted_mib, small_mib)
    resize(128, 1)  # back to the size it booted with
    assert guest() == (booted_mib, booted_cpus)
    # Past it: refused with the sizes, and the VM keeps what it has.
    details = expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                           vmrtd.runtime.UpdatePodSandboxResources,
                           api.UpdatePodSandboxResourcesRequest(
                               pod_sandbox_id=pod_id, resources=resources(256, 1)))
    assert "booted with 384 MiB and 2 vCPU(s)" in details and "512 MiB" in details, details
    assert guest() == (booted_mib, booted_cpus)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_update_resources_and_oom_killed(vmrtd: Daemon,
                                         pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"])
    vmrtd.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(
        container_id=container,
        linux=api.LinuxContainerResources(memory_limit_in_bytes=48 * 1024 * 1024)))
    reply = vmrtd.exec(container, ["cat", "/sys/fs/cgroup/memory.max"])
    assert reply.stdout.strip() == str(48 * 1024 * 1024).encode()
    assert vmrtd.status(container).resources.linux.memory_limit_in_bytes == 48 * 1024 * 1024
    # Values the guest's kernel refuses are the caller's error, and change nothing.
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                           vmrtd.runtime.UpdateContainerResources,
                           api.UpdateContainerResourcesRequest(
                               container_id=container,
                               linux=api.LinuxContainerResources(cpuset_cpus="63")))
    assert details.startswith("linux: "), details
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                           vmrtd.runtime.UpdateContainerResources,
                           api.UpdateContainerResourcesRequest(
                               container_id=container,
                               linux=api.LinuxContainerResources(
                                   memory_swap_limit_in_bytes=1 << 30)))
    assert "memory_swap_limit_in_bytes" in details, details
    reply = vmrtd.exec(container, ["cat", "/sys/fs/cgroup/memory.max"])
    assert reply.stdout.strip() == str(48 * 1024 * 1024).encode()

    limited = api.LinuxContainerConfig(resources=api.LinuxContainerResources(
        memory_limit_in_bytes=16 * 1024 * 1024))
    hog = vmrtd.run_container(pod_id, config, ["sh", "-c",
                                               "head -c 200m /dev/zero | tail > /dev/null"],
                              linux=limited)
    status = vmrtd.wait_exited(hog)
    assert status.reason == "OOMKilled", status
    assert status.exit_code == 137


def test_container_events(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    events: list[api.ContainerEventResponse] = []
    call = vmrtd.runtime.GetContainerEvents(api.GetEventsRequest())

    def read() -> None:
        try:
            for event in call:
                events.append(event)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    container = vmrtd.run_container(pod_id, config, ["sh", "-c", "exit 0"])
    vmrtd.wait_exited(container)
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container))
    # A pod sandbox's own events carry its id as the container id (containerd's way).
    other = vmrtd.run_pod(vmrtd.pod_config())
    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=other))
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=other))
    wait_for(lambda: len([e for e in events if e.container_id in (container, other)]) >= 8)
    call.cancel()
    kinds = [e.container_event_type for e in events if e.container_id == container]
    assert kinds == [api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT,
                     api.CONTAINER_STOPPED_EVENT, api.CONTAINER_DELETED_EVENT]
    assert all(e.pod_sandbox_status.id == pod_id for e in events if e.container_id == container)
    mine = [e for e in events if e.container_id == other]
    assert [e.container_event_type for e in mine] == [
        api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT,
        api.CONTAINER_STOPPED_EVENT, api.CONTAINER_DELETED_EVENT]
    assert all(e.pod_sandbox_status.id == other for e in mine)
    assert [e.pod_sandbox_status.state for e in mine] == [
        api.SANDBOX_READY, api.SANDBOX_READY, api.SANDBOX_NOTREADY, api.SANDBOX_NOTREADY]


def test_pod_resources_size_the_vm_and_handlers_select_it(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config()
    config.linux.resources.memory_limit_in_bytes = 128 * 1024 * 1024
    config.linux.overhead.memory_limit_in_bytes = 32 * 1024 * 1024
    pod_id = vmrtd.run_pod(config, handler="vmrt")
    info = json.loads(vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id, verbose=True)).info["info"])
    # The overhead is room for the VM around the containers, not guest RAM.
    assert info["vm"]["memory_mib"] == 256 + 128
    assert vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.runtime_handler == "vmrt"
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"])
    total_kib = int(vmrtd.exec(container, ["awk", "/MemTotal/ {print $2}",
                                           "/proc/meminfo"]).stdout)
    assert total_kib > 300 * 1024
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_containers_keep_the_kernels_timer_slack(vmrtd: Daemon) -> None:
    """The agent runs with a large timer slack (fewer wake-ups of an idle
    guest); its containers and execs do not inherit it: a workload's short
    sleeps stay short."""
    config = vmrtd.pod_config()
    pod_id = vmrtd.run_pod(config)
    container = vmrtd.run_container(pod_id, config, ["sh", "-c",
                                                     "cat /proc/self/timerslack_ns; sleep 600"])
    reply = vmrtd.exec(container, ["sh", "-c", "cat /proc/self/timerslack_ns; time -p sh -c "
                                               "'for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.02; "
                                               "done' 2>&1 | grep real"])
    lines = reply.stdout.decode().split()
    assert lines[0] == "50000", reply  # the exec
    assert float(lines[2]) < 1.5, reply  # ten sleeps of 20 ms, not of 200
    log = (vmrtd.logs / config.metadata.name / vmrtd.status(container).log_path)
    assert wait_for(lambda: b" stdout F 50000\n" in log.read_bytes(), timeout=10), \
        log.read_bytes()  # the container's own process


def _qemu_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_a_guest_frees_goes_back_to_the_host(vmrtd: Daemon) -> None:
    """Free-page reporting (a handler without templates): 96 MiB written to a
    tmpfs in the guest grow QEMU's RSS; once removed, the guest reports the
    free pages and QEMU's RSS falls back."""
    config = vmrtd.pod_config()
    pod_id = vmrtd.run_pod(config)
    privileged = api.LinuxContainerConfig(
        security_context=api.LinuxContainerSecurityContext(privileged=True))
    container = vmrtd.run_container(pod_id, config, ["sleep", "600"], linux=privileged)
    pid = vmrtd.qemu_pid(pod_id)
    fill = vmrtd.exec(container, ["sh", "-c", "mkdir -p /fill && mount -t tmpfs -o size=120m "
                                  "fill /fill && dd if=/dev/zero of=/fill/f bs=1M count=96"],
                      timeout=120)
    assert fill.exit_code == 0, fill
    filled = _qemu_rss_mib(pid)
    empty = vmrtd.exec(container, ["sh", "-c", "rm /fill/f && umount /fill"])
    assert empty.exit_code == 0, empty
    assert wait_for(lambda: _qemu_rss_mib(pid) < filled - 64, timeout=60, interval=1.0), \
        f"QEMU's RSS {filled:.0f} MiB with the tmpfs full, {_qemu_rss_mib(pid):.0f} MiB after"
    print(f"QEMU RSS: {filled:.0f} MiB full, {_qemu_rss_mib(pid):.0f} MiB once freed")
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
