"""vmrtd restarts (graceful or kill -9) and finds its pods, containers and logs again."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, wait_for
from tests.helpers import leaks

pytestmark = pytest.mark.vm

COUNTER = ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]


def _log_numbers(path: str) -> list[int]:
    with open(path) as f:
        return [int(n) for n in re.findall(r" stdout F line (\d+)$", f.read(), re.MULTILINE)]


def test_restart_recovers_pods_containers_exit_codes_and_logs(own_vmrtd: Daemon) -> None:
    daemon = own_vmrtd
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    counter = daemon.run_container(pod_id, config, COUNTER)
    short = daemon.run_container(pod_id, config, ["sh", "-c", "sleep 5; exit 42"])
    log_path = daemon.status(counter).log_path
    assert wait_for(lambda: len(_log_numbers(log_path)) >= 5)

    # A graceful restart: the pod and its VM keep running throughout.
    qemu = leaks.qemu_processes(str(daemon.state))
    daemon.restart(signal.SIGTERM)
    assert leaks.qemu_processes(str(daemon.state)) == qemu
    assert daemon.status(counter).state == api.CONTAINER_RUNNING

    # kill -9: no chance to save anything beyond what was already on disk.
    daemon.stop(signal.SIGKILL)
    lines_before = len(_log_numbers(log_path))
    time.sleep(6)  # the short container exits while no daemon is watching
    daemon.start()

    pods = daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items
    assert [(p.id, p.state) for p in pods] == [(pod_id, api.SANDBOX_READY)]
    assert daemon.status(counter).state == api.CONTAINER_RUNNING
    finished = daemon.status(short)
    assert finished.state == api.CONTAINER_EXITED
    assert finished.exit_code == 42 and finished.reason == "Error"

    reply = daemon.exec(counter, ["sh", "-c", "echo alive"])
    assert reply.stdout == b"alive\n"
    # The log keeps growing, and nothing written while the daemon was away is lost.
    assert wait_for(lambda: len(_log_numbers(log_path)) > lines_before + 30, timeout=30)
    numbers = _log_numbers(log_path)
    assert sorted(set(numbers)) == list(range(max(numbers) + 1)), "a gap in the log"


def test_vm_that_died_while_the_daemon_was_down(own_vmrtd: Daemon) -> None:
    daemon = own_vmrtd
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    container = daemon.run_container(pod_id, config, ["sleep", "300"])
    daemon.stop(signal.SIGKILL)
    (qemu,) = leaks.qemu_processes(str(daemon.state))
    os.kill(qemu, signal.SIGKILL)
    wait_for(lambda: not leaks.qemu_processes(str(daemon.state)))
    daemon.start()

    status = daemon.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status
    assert status.state == api.SANDBOX_NOTREADY
    gone = daemon.status(container)
    assert gone.state == api.CONTAINER_EXITED
    assert gone.exit_code == 255 and "VM exited" in gone.message
    assert not leaks.find(daemon.state)
    daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items


def test_vm_that_dies_while_the_daemon_runs(own_vmrtd: Daemon) -> None:
    daemon = own_vmrtd
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    container = daemon.run_container(pod_id, config, ["sleep", "300"])
    (qemu,) = leaks.qemu_processes(str(daemon.state))
    os.kill(qemu, signal.SIGKILL)
    assert wait_for(lambda: daemon.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.state == api.SANDBOX_NOTREADY)
    gone = daemon.status(container)
    assert gone.state == api.CONTAINER_EXITED and "killed by signal 9" in gone.message
    assert wait_for(lambda: not leaks.find(daemon.state))


def test_leaked_vm_of_a_half_started_pod_is_killed(own_vmrtd: Daemon) -> None:
    """kill -9 during RunPodSandbox: the next daemon removes the half-made pod and its VM."""
    daemon = own_vmrtd
    import threading

    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(_try_run(daemon)), daemon=True)
    thread.start()
    assert wait_for(lambda: leaks.qemu_processes(str(daemon.state)), timeout=30)
    daemon.stop(signal.SIGKILL)
    thread.join(30)
    assert leaks.qemu_processes(str(daemon.state)), "QEMU should outlive the killed daemon"
    (half_started,) = [p.name for p in (daemon.state / "sandboxes").iterdir()]
    assert leaks.network_leaks([half_started], daemon.network.ipam_dir), "no network yet?"
    daemon.start()
    assert wait_for(lambda: not leaks.qemu_processes(str(daemon.state)), timeout=10)
    assert not daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items
    assert not leaks.find(daemon.state)
    # Its netns, CNI lease and iptables rules go too, not only its VM.
    assert not leaks.network_leaks([half_started], daemon.network.ipam_dir, daemon.network.name)


def _try_run(daemon: Daemon) -> object:
    try:
        return daemon.run_pod()
    except Exception as exc:
        return exc


def test_a_stalled_vm_is_given_its_time_and_the_rest_is_served_meanwhile(
        own_vmrtd: Daemon) -> None:
    """A VM that does not answer while vmrtd restarts (its QEMU stopped):
    CRI is served at once, a call on that pod waits for its adoption, and
    once the VM moves again it is adopted, not killed."""
    daemon = own_vmrtd
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    container = daemon.run_container(pod_id, config, ["sleep", "300"])
    qemu = daemon.qemu_pid(pod_id)
    daemon.stop(signal.SIGKILL)
    os.kill(qemu, signal.SIGSTOP)
    try:
        daemon.start()  # returns when Version answers: before the pod is adopted
        pods = daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
        assert [p.id for p in pods] == [pod_id]
        waiting = daemon.runtime.PodSandboxStatus.future(
            api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=120)
        time.sleep(8)
        assert not waiting.done(), "a call on a pod being adopted should wait for it"
    finally:
        os.kill(qemu, signal.SIGCONT)
    assert waiting.result().status.state == api.SANDBOX_READY
    assert daemon.exec(container, ["echo", "adopted"]).stdout == b"adopted\n"
    assert leaks.qemu_processes(str(daemon.state)) == [qemu]
    assert "recovered 1 pod(s)" in daemon.log_file.read_text()
