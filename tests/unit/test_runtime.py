"""The runtime's logic with fake sandboxes, agents and networks (tests/fakes.py).

Rollback order in RunPodSandbox and CreateContainer, recovery decisions,
state transitions, idempotent stop and remove, and records that stay
removed. Each test runs in milliseconds; the same paths with real VMs are
in tests/cri.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.fakes import FakeAgent, FakeDrivers, FakeNetworking, FakeSandbox, Journal, StepFailed
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError
from vmrt.config import CgroupConfig, Config, HypervisorConfig, StorageConfig
from vmrt.cri import convert
from vmrt.cri.boundary import status_of
from vmrt.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from vmrt.guest.image import GuestImage
from vmrt.images.store import ImageStore
from vmrt.runtime import core, recovery, sizing
from vmrt.runtime import sandbox as sandbox_mod
from vmrt.runtime.containers import ContainerService
from vmrt.runtime.core import Runtime
from vmrt.runtime.logs import CRILogWriter, LogPump
from vmrt.runtime.names import NameIndex
from vmrt.runtime.pods import PodService
from vmrt.runtime.records import (
    CONTAINER_TRANSITIONS,
    POD_TRANSITIONS,
    ContainerState,
    PodRecord,
    PodState,
    VMState,
)
from vmrt.runtime.store import RecordStore
from vmrt.sandbox import persist


@dataclasses.dataclass
class World:
    tmp: Path
    journal: Journal
    drivers: FakeDrivers
    rt: Runtime
    pods: PodService
    containers: ContainerService

    def restart(self, drivers: FakeDrivers | None = None) -> World:
        """A new vmrtd on the same disk (records, image store)."""
        return make_world(self.tmp, self.journal, drivers or FakeDrivers(self.journal))


def make_world(tmp: Path, journal: Journal, drivers: FakeDrivers) -> World:
    config = Config(storage=StorageConfig(root=str(tmp / "root"), state=str(tmp / "state")),
                    hypervisor=HypervisorConfig(accel="tcg"),
                    cgroups=CgroupConfig(root=str(tmp / "cgroup")))
    (tmp / "cgroup").mkdir(exist_ok=True)
    image = GuestImage(directory=tmp / "guest", kernel=tmp / "guest/vmlinuz",
                       initrd=tmp / "guest/initrd", marker_initrd=tmp / "guest/marker",
                       busybox_rootfs=tmp / "guest/rootfs", kernel_release="6.1",
                       manifest={})
    rt = Runtime(config, image, drivers=drivers, networking=FakeNetworking(journal))
    if not rt.images.images():
        rt.images.add_local(["busybox:latest"], {"rootfs": {"diff_ids": []},
                                                 "config": {"Cmd": ["sh"]}}, [])
    return World(tmp, journal, drivers, rt, PodService(rt), ContainerService(rt))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    journal = Journal()
    yield make_world(tmp_path, journal, FakeDrivers(journal))


def pod_config(world: World, name: str = "web", attempt: int = 0) -> api.PodSandboxConfig:
    logs = world.tmp / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default",
                                        attempt=attempt),
        log_directory=str(logs))


def container_config(name: str = "app", mounts: int = 0) -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image="busybox"),
        command=["sleep", "1000"], log_path=f"{name}.log",
        mounts=[api.Mount(container_path=f"/m{i}", host_path=f"/tmp/vmrt-unit-mount-{i}")
                for i in range(mounts)])


def started(world: World) -> tuple[str, str, FakeAgent]:
    """A pod with one started container, and the pod's fake agent."""
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    run(world.containers.start(container_id))
    agent = world.drivers.made[pod_id].agent
    assert agent is not None
    return pod_id, container_id, agent


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.get_event_loop_policy().get_event_loop().run_until_complete(coro)


@pytest.fixture(autouse=True)
def loop() -> Iterator[None]:
    new = asyncio.new_event_loop()
    asyncio.set_event_loop(new)
    yield
    # Stop what sandboxes left running (their watchers), then close.
    for task in asyncio.all_tasks(new):
        task.cancel()
    new.run_until_complete(asyncio.sleep(0))
    new.close()


# -- RunPodSandbox rollback -------------------------------------------------------

# CNI ADD runs while the VM starts (it needs only its tap, made with the netns).
RUN_STEPS = ["net.netns", "drivers.create", "vm.start", "net.cni_add",
             "agent.configure_network"]


@pytest.mark.parametrize(("failing", "undone"), [
    ("net.netns", []),
    ("drivers.create", ["net.remove_netns"]),
    # A VM that fails to start cleans up after itself (SandboxVM.start);
    # the CNI ADD already under way is let finish, then undone.
    ("vm.start", ["net.cni_add", "net.cni_del", "net.remove_netns"]),
    ("net.cni_add", ["vm.destroy", "net.remove_netns"]),
    ("agent.configure_network", ["vm.destroy", "net.cni_del", "net.remove_netns"]),
])
def test_run_pod_sandbox_undoes_every_step_done_in_reverse(world: World, failing: str,
                                                           undone: list[str]) -> None:
    world.journal.fail_at[failing] = StepFailed(failing)
    with pytest.raises(StepFailed):
        run(world.pods.run(pod_config(world), "vmrt"))
    assert world.journal.steps == RUN_STEPS[:RUN_STEPS.index(failing) + 1] + undone
    assert not world.rt.store.pods and not world.rt.sandboxes
    assert not list((world.tmp / "root" / "pods").iterdir())
    # The name is free again: kubelet's retry succeeds.
    world.journal.steps.clear()
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    assert world.journal.steps == RUN_STEPS
    assert world.rt.pod(pod_id).state == PodState.READY


def test_a_second_pod_with_the_same_name_is_already_exists(world: World) -> None:
    first = run(world.pods.run(pod_config(world), "vmrt"))
    with pytest.raises(AlreadyExistsError, match=first):
        run(world.pods.run(pod_config(world), "vmrt"))
    assert list(world.rt.store.pods) == [first]
    run(world.pods.run(pod_config(world, attempt=1), "vmrt"))


def test_the_pod_record_keeps_the_vm_settings_whole(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    started = world.drivers.made[pod_id].config
    reloaded = RecordStore(world.tmp / "root")
    reloaded.load()
    vm = reloaded.pods[pod_id].vm
    assert vm is not None and vm.settings == started and vm.pid == FakeSandbox.PID
    assert vm.settings.boot_timeout == world.rt.config.hypervisor.boot_timeout
    assert vm.settings.qemu_binary == world.rt.config.hypervisor.qemu_binary


# -- CreateContainer rollback ------------------------------------------------------

@pytest.mark.parametrize(("failing", "undone"), [
    ("share.mount_overlay", ["share.release"]),
    ("share.bind", ["share.release"]),
    ("agent.create_container", ["agent.remove_container", "share.release"]),
    ("store.add_container", ["agent.remove_container", "share.release"]),
])
def test_create_container_undoes_every_step_done_in_reverse(
        world: World, failing: str, undone: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    add = world.rt.store.add_container

    def journaled_add(record):  # type: ignore[no-untyped-def]
        world.journal("store.add_container")
        add(record)

    monkeypatch.setattr(world.rt.store, "add_container", journaled_add)
    world.journal.steps.clear()
    world.journal.fail_at[failing] = StepFailed(failing)
    config = container_config(mounts=1)
    config.mounts[0].host_path = str(tmp_path / "volume")
    with pytest.raises(StepFailed):
        run(world.containers.create(pod_id, config))
    steps = ["share.mount_overlay", "share.bind", "agent.create_container",
             "store.add_container"]
    assert world.journal.steps == steps[:steps.index(failing) + 1] + undone
    assert not world.rt.store.containers
    assert not list((world.tmp / "root" / "containers").iterdir())
    assert not world.drivers.made[pod_id].share.placed
    # The name is free again.
    run(world.containers.create(pod_id, config))


# -- records ------------------------------------------------------------------------

@pytest.mark.parametrize("table", [POD_TRANSITIONS, CONTAINER_TRANSITIONS])
def test_states_only_move_forward(table: dict) -> None:  # type: ignore[type-arg]
    states = list(table)
    for index, state in enumerate(states):
        # Later states only, and nothing out of the last one.
        assert set(table[state]) <= set(states[index + 1:])
    assert not table[states[-1]]


def test_the_store_refuses_a_move_the_table_does_not_allow(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    container = world.rt.container(container_id)
    world.rt.container_exited(container, 0, 5)
    with pytest.raises(FailedPreconditionError, match="exited; it cannot become running"):
        world.rt.store.update_container(container, lambda s: dataclasses.replace(
            s, state=ContainerState.RUNNING))
    assert container.state == ContainerState.EXITED
    with pytest.raises(FailedPreconditionError):
        run(world.containers.start(container_id))


def test_a_failed_write_changes_nothing_in_memory(world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    pod = world.rt.pod(pod_id)

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vmrt.runtime.store.write_json", full_disk)
    with pytest.raises(OSError):
        world.rt.store.update_pod(pod, lambda s: dataclasses.replace(
            s, state=PodState.NOTREADY, reason="x"))
    assert pod.state == PodState.READY and pod.reason == ""


def test_a_start_that_finishes_after_a_remove_does_not_bring_the_record_back(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    agent = world.drivers.made[pod_id].agent
    assert agent is not None
    release = asyncio.Event()
    original = agent.start_container

    async def slow_start(cid: str) -> None:
        await original(cid)
        await release.wait()

    monkeypatch.setattr(agent, "start_container", slow_start)

    async def race() -> None:
        start = asyncio.ensure_future(world.containers.start(container_id))
        await asyncio.sleep(0.01)
        await world.containers.remove(container_id)
        release.set()
        with pytest.raises(NotFoundError, match="was removed"):
            await start

    run(race())
    assert container_id not in world.rt.store.containers
    reloaded = RecordStore(world.tmp / "root")
    reloaded.load()
    assert container_id not in reloaded.containers


# -- stop, remove, and the VM's death --------------------------------------------------

def test_the_stop_signal_is_fixed_at_create_reported_and_sent(world: World) -> None:
    world.rt.images.add_local(["quits:1"], {"rootfs": {"diff_ids": []},
                                            "config": {"StopSignal": "SIGRTMIN+3"}}, [])
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    config = container_config()
    config.image.image = "quits:1"
    from_image = run(world.containers.create(pod_id, config))
    config.metadata.name, config.stop_signal = "own", api.SIGUSR1
    from_config = run(world.containers.create(pod_id, config))
    plain = run(world.containers.create(pod_id, container_config("plain")))
    statuses = {c: convert.container_status(world.rt.container(c))
                for c in (from_image, from_config, plain)}
    assert [statuses[c].stop_signal for c in (from_image, from_config, plain)] == [
        api.SIGRTMINPLUS3, api.SIGUSR1, api.SIGTERM]
    # Removing the image afterwards changes nothing: the signal was fixed at create.
    world.rt.images.remove("quits:1", set())
    for container_id, number in ((from_image, 37), (from_config, 10), (plain, 15)):
        run(world.containers.start(container_id))
        world.journal.steps.clear()
        run(world.containers.stop(container_id, 5))
        assert world.journal.steps[0] == f"agent.signal_process {number}", world.journal.steps


def test_status_reports_the_resources_of_the_latest_update(world: World) -> None:
    _, container_id, _ = started(world)
    before = convert.container_status(world.rt.container(container_id)).resources.linux
    assert before.memory_limit_in_bytes == 0
    update = api.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=512)
    run(world.containers.update_resources(container_id, update))
    now = convert.container_status(world.rt.container(container_id)).resources.linux
    assert now == update
    # Kept on disk: a restarted vmrtd reports the same.
    again = world.restart()
    recovery.load(again.rt)
    assert convert.container_status(again.rt.container(container_id)).resources.linux == update


def test_a_command_the_image_lacks_fails_at_start_as_in_containerd(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    world.journal.fail_at["agent.create_container"] = AgentError(
        "CreateContainer", grpc.StatusCode.INVALID_ARGUMENT,
        "command: executable file `/no/such` not found")
    container_id = run(world.containers.create(pod_id, container_config()))
    assert world.rt.container(container_id).state == ContainerState.CREATED
    # Not in the guest; a reconcile (an event-stream reconnect) leaves it alone.
    run(world.rt.sandboxes[pod_id].reconcile())
    assert world.rt.container(container_id).state == ContainerState.CREATED
    with pytest.raises(FailedPreconditionError, match="cannot start: executable file"):
        run(world.containers.start(container_id))
    status = convert.container_status(world.rt.container(container_id))
    assert (status.state, status.exit_code, status.reason) == (
        api.CONTAINER_EXITED, 128, "StartError")
    assert "/no/such" in status.message and status.finished_at > 0
    # The guest wrote that message: a flood of it is cut and made printable.
    world.journal.fail_at["agent.create_container"] = AgentError(
        "CreateContainer", grpc.StatusCode.INVALID_ARGUMENT, "command: " + "x\x1b[2J" * 100_000)
    flooded = run(world.containers.create(pod_id, container_config("flood")))
    message = world.rt.container(flooded).meta.start_error
    assert len(message) <= 1024 and "\x1b" not in message
    run(world.containers.remove(flooded))
    assert "agent.start_container" not in world.journal.steps
    run(world.containers.remove(container_id))
    assert container_id not in world.rt.store.containers
    assert not world.rt.container_dir(container_id).exists()
    # Any other refusal by the agent still fails the create.
    world.journal.fail_at["agent.create_container"] = AgentError(
        "CreateContainer", grpc.StatusCode.INVALID_ARGUMENT, "linux: bad")
    with pytest.raises(InvalidArgumentError):
        run(world.containers.create(pod_id, container_config("other")))
    assert [c.name for c in world.rt.store.containers.values()] == []


def test_image_volumes_pin_their_layers_and_must_be_present(world: World) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        entry = tarfile.TarInfo("w")
        entry.type = tarfile.DIRTYPE
        tar.addfile(entry)
    diff_id = "sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()
    blob = world.tmp / diff_id.removeprefix("sha256:")
    blob.write_bytes(layer.getvalue())
    world.rt.images.add_local(["models:1"], {"rootfs": {"diff_ids": [diff_id]}},
                              [(blob, "application/vnd.oci.image.layer.v1.tar")])
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    config = container_config()
    config.mounts.append(api.Mount(container_path="/models", readonly=True,
                                   image=api.ImageSpec(image="models:1"), image_sub_path="w"))
    container_id = run(world.containers.create(pod_id, config))
    assert "share.mount_image" in world.journal.steps
    assert diff_id in world.rt.layers_in_use()
    config.metadata.name = "other"
    config.mounts[0].image.image = "absent:1"
    with pytest.raises(NotFoundError, match="absent:1"):
        run(world.containers.create(pod_id, config))
    run(world.containers.remove(container_id))
    assert diff_id not in world.rt.layers_in_use()


def test_stop_and_remove_are_idempotent(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    run(world.containers.start(container_id))
    world.journal.steps.clear()
    run(world.pods.stop(pod_id))
    assert world.journal.steps == ["agent.signal_process 9", "agent.wait_process",
                                   "vm.destroy", "net.teardown"]
    container = world.rt.container(container_id)
    assert container.state == ContainerState.EXITED and container.status.exit_code == 137
    assert world.rt.pod(pod_id).state == PodState.NOTREADY
    world.journal.steps.clear()
    run(world.pods.stop(pod_id))
    # Only the sweep of leftovers (none): no second destroy, no CNI DEL.
    assert world.journal.steps == ["drivers.clean"]
    run(world.pods.remove(pod_id))
    run(world.pods.remove(pod_id))
    run(world.containers.remove(container_id))
    assert not world.rt.store.pods and not world.rt.store.containers
    assert not list((world.tmp / "root" / "pods").iterdir())
    # Both names are free.
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    run(world.containers.create(pod_id, container_config()))


def test_a_vm_that_dies_makes_the_pod_notready_and_its_containers_exited(
        world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    run(world.containers.start(container_id))
    world.drivers.made[pod_id].die()
    run(asyncio.sleep(0.05))
    pod = world.rt.pod(pod_id)
    assert pod.state == PodState.NOTREADY and "killed by signal 9" in pod.reason
    container = world.rt.container(container_id)
    assert container.state == ContainerState.EXITED and container.status.exit_code == 255
    assert pod_id not in world.rt.sandboxes
    with pytest.raises(FailedPreconditionError, match="not ready"):
        run(world.containers.create(pod_id, container_config("other")))


def test_a_guest_cannot_report_the_exit_of_another_pods_container(world: World) -> None:
    first = run(world.pods.run(pod_config(world, "a"), "vmrt"))
    second = run(world.pods.run(pod_config(world, "b"), "vmrt"))
    victim = run(world.containers.create(second, container_config()))
    run(world.containers.start(victim))
    liar = world.drivers.made[first].agent
    assert liar is not None
    liar.processes[victim] = world.drivers.made[second].agent.processes[victim]  # type: ignore[union-attr]
    liar.exit(victim, 0)
    run(asyncio.sleep(0.05))
    assert world.rt.container(victim).state == ContainerState.RUNNING


def test_an_exit_event_is_recorded(world: World) -> None:
    _, container_id, agent = started(world)
    agent.exit(container_id, 3)
    run(asyncio.sleep(0.05))
    status = world.rt.container(container_id).status
    assert (status.state, status.exit_code, status.reason) == (ContainerState.EXITED, 3, "Error")


def test_pod_sandboxes_have_events_too_each_with_the_status_of_its_moment(
        world: World) -> None:
    """As containerd's for kubelet's evented PLEG: a sandbox's CREATED,
    STARTED, STOPPED and DELETED (its id as the container id), and every
    event carries the pod's and its containers' status as they were then;
    the sandbox's DELETED still has the pod's last status."""
    queue = world.rt.events.subscribe()
    pod_id, container_id, agent = started(world)
    agent.exit(container_id, 0)
    run(asyncio.sleep(0.05))
    run(world.pods.stop(pod_id))
    run(world.pods.remove(pod_id))
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    seen = [(e.container_id, e.kind) for e in events]
    assert seen == [(pod_id, "created"), (pod_id, "started"),
                    (container_id, "created"), (container_id, "started"),
                    (container_id, "stopped"), (pod_id, "stopped"),
                    (container_id, "deleted"), (pod_id, "deleted")], seen
    by_kind = {(e.container_id, e.kind): e for e in events}
    assert by_kind[(pod_id, "started")].pod is not None
    assert by_kind[(pod_id, "started")].pod.state == PodState.READY
    created = by_kind[(container_id, "created")]
    assert [c.state for c in created.containers] == [ContainerState.CREATED]
    assert [c.state for c in by_kind[(container_id, "started")].containers] == [
        ContainerState.RUNNING]
    deleted = by_kind[(pod_id, "deleted")]
    assert deleted.pod is not None and deleted.pod.id == pod_id
    assert deleted.pod.state == PodState.NOTREADY
    assert pod_id not in world.rt.store.pods
    world.rt.events.unsubscribe(queue)


# -- recovery -------------------------------------------------------------------------

def test_recovery_adopts_live_vms_and_settles_the_rest(world: World) -> None:
    alive = run(world.pods.run(pod_config(world, "alive"), "vmrt"))
    gone = run(world.pods.run(pod_config(world, "gone"), "vmrt"))
    stopped = run(world.pods.run(pod_config(world, "stopped"), "vmrt"))
    ran = run(world.containers.create(alive, container_config()))
    run(world.containers.start(ran))
    finished = run(world.containers.create(alive, container_config("done")))
    run(world.containers.start(finished))
    lost = run(world.containers.create(gone, container_config()))
    run(world.containers.start(lost))
    run(world.pods.stop(stopped))
    # The container "done" exits while vmrtd is down; its pod's VM stays.
    survivor = world.drivers.made[alive]
    assert survivor.agent is not None
    survivor.agent.processes[finished].state = pb.ProcessInfo.EXITED
    survivor.agent.processes[finished].exit.exit_code = 4
    run(recovery.detach_all(world.rt))
    assert survivor.detached and not survivor.destroyed

    drivers = FakeDrivers(world.journal)
    drivers.alive[alive] = survivor
    drivers.processes = {FakeSandbox.PID: alive[:32], 999: "f" * 32}  # 999: no record claims it
    world.journal.steps.clear()
    after = world.restart(drivers)
    run(recovery.recover(after.rt))

    assert after.rt.pod(alive).state == PodState.READY and alive in after.rt.sandboxes
    assert after.rt.container(ran).state == ContainerState.RUNNING
    done = after.rt.container(finished).status
    assert (done.state, done.exit_code) == (ContainerState.EXITED, 4)
    assert after.rt.pod(gone).state == PodState.NOTREADY
    assert after.rt.container(lost).state == ContainerState.EXITED
    assert after.rt.container(lost).status.exit_code == 255
    assert after.rt.pod(stopped).state == PodState.NOTREADY
    assert drivers.reclaimed == [999]
    # Names survive the restart.
    with pytest.raises(AlreadyExistsError):
        run(after.pods.run(pod_config(after, "alive"), "vmrt"))


async def _no_destroy(self: FakeSandbox) -> None:
    pass


async def _no_undo(self: FakeNetworking, step: str) -> None:
    pass


def test_recovery_removes_a_half_started_pod_and_kills_its_vm(world: World,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    # vmrtd "dies" between the VM's start and the pod becoming ready.
    world.journal.fail_at["agent.configure_network"] = asyncio.CancelledError()
    monkeypatch.setattr(world.rt.store, "remove_pod", lambda pod_id: None)  # the crash
    monkeypatch.setattr(FakeSandbox, "destroy", _no_destroy)
    monkeypatch.setattr(FakeNetworking, "_undo", _no_undo)
    with pytest.raises(asyncio.CancelledError):
        run(world.pods.run(pod_config(world), "vmrt"))
    monkeypatch.undo()
    [pod_id] = list(world.rt.store.pods)
    assert world.rt.store.pods[pod_id].state == PodState.STARTING

    drivers = FakeDrivers(world.journal)
    drivers.processes = {FakeSandbox.PID: pod_id[:32]}
    world.journal.steps.clear()
    after = world.restart(drivers)
    run(recovery.recover(after.rt))
    assert not after.rt.store.pods
    assert drivers.reclaimed == [FakeSandbox.PID]
    assert world.journal.steps == [f"drivers.reclaim {FakeSandbox.PID}", "drivers.clean",
                                   "net.discard"]
    run(after.pods.run(pod_config(after), "vmrt"))  # the name is free


def test_recovery_of_a_vm_that_cannot_be_adopted(world: World) -> None:
    """Unknown: QEMU runs but the driver cannot adopt it (the QEMU driver
    adopts a merely slow agent; this is what remains). The pod is settled as
    lost and its QEMU reclaimed."""
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    run(recovery.detach_all(world.rt))

    class Unanswering(FakeDrivers):
        async def adopt(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.j("drivers.adopt")
            raise TimeoutError("the agent did not answer")

    drivers = Unanswering(world.journal)
    drivers.processes = {FakeSandbox.PID: pod_id[:32]}
    after = world.restart(drivers)
    run(recovery.recover(after.rt))
    assert after.rt.pod(pod_id).state == PodState.NOTREADY
    assert after.rt.container(container_id).state == ContainerState.EXITED
    assert drivers.reclaimed == [FakeSandbox.PID]



# -- names ----------------------------------------------------------------------------

def test_names_have_one_holder_and_a_late_release_frees_nothing() -> None:
    names = NameIndex("container")
    names.reserve("app_0", "c1")
    names.reserve("app_0", "c1")  # the holder again: fine
    with pytest.raises(AlreadyExistsError, match="in use by c1"):
        names.reserve("app_0", "c2")
    names.release("app_0", "c2")  # not the holder: nothing happens
    assert names.holder("app_0") == "c1"
    names.release("app_0", "c1")
    names.reserve("app_0", "c2")
    assert names.holder("app_0") == "c2" and len(names) == 1


# -- records from before the schema had a version --------------------------------------

def test_records_without_a_version_are_read_as_version_1(tmp_path: Path) -> None:
    config = base64.b64encode(api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="old")).SerializeToString()).decode()
    pod_dir = tmp_path / "pods" / "p1"
    (pod_dir / "containers").mkdir(parents=True)
    (pod_dir / "pod.json").write_text(json.dumps({
        "id": "p1", "name": "old", "uid": "u", "namespace": "ns", "attempt": 0,
        "created_at": 1, "runtime_handler": "vmrt", "config_b64": config,
        "vm": {"memory_mib": 384, "vcpus": 1, "machine": "microvm", "accel": "tcg",
               "transport": "serial", "tb_size_mib": 128, "image": "/img",
               "cgroup": "/vmrt/vmrt-p1", "pid": 99, "start_time": 5, "boot_seconds": 2.5},
        "network": {"mode": "cni", "netns": "vmrt-p1", "network_name": "net",
                    "network_config": {"name": "net", "cniVersion": "1.0.0", "plugins": [],
                                       "source": "/etc/cni/net.d/x"},
                    "cni_result": {"ips": []}, "ips": ["10.88.0.2"], "args": {"ifname": "eth0"}},
        "state": "ready", "reason": ""}))
    (pod_dir / "containers" / "c1.json").write_text(json.dumps({
        "id": "c1", "pod_id": "p1", "name": "app", "attempt": 0, "created_at": 2,
        "image": "busybox", "image_ref": "sha256:x", "log_path": "", "config_b64": "",
        "process_json": "{}", "layers": ["sha256:l"], "state": "running", "started_at": 3,
        "finished_at": 0, "exit_code": 0, "reason": "", "message": "", "stdout_offset": 7,
        "stderr_offset": 0}))
    store = RecordStore(tmp_path)
    store.load()
    pod = store.pods["p1"]
    assert pod.state == PodState.READY and pod.vm is not None
    assert (pod.vm.pid, pod.vm.settings.memory_mib, pod.vm.settings.image) == (99, 384, "/img")
    assert pod.vm.settings.cgroup is not None
    assert pod.vm.settings.cgroup.relative == "/vmrt/vmrt-p1"
    assert pod.network.ips == ("10.88.0.2",)
    assert json.loads(pod.network.network_config)["name"] == "net"
    container = store.containers["c1"]
    assert container.state == ContainerState.RUNNING and container.layers == ("sha256:l",)
    assert container.status.stdout_offset == 7
    # The next change writes the current form.
    store.update_pod(pod, lambda s: dataclasses.replace(s, reason="seen"))
    assert json.loads((pod_dir / "pod.json").read_text())["version"] == 1


def test_a_short_write_is_finished_not_taken_for_a_whole_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    real_write = os.write

    def short(fd: int, data: bytes) -> int:  # as a disk that is filling up does
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(persist.os, "write", short)
    persist.write_json(tmp_path / "r.json", {"key": "x" * 100})
    assert json.loads((tmp_path / "r.json").read_text()) == {"key": "x" * 100}


def test_a_stop_cut_short_by_its_deadline_is_finished_by_the_next(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id, container_id, agent = started(world)
    hang = asyncio.Event()
    original = agent.signal_process

    async def hung_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        await hang.wait()  # a guest that does not answer (SIGSTOPped QEMU)

    monkeypatch.setattr(agent, "signal_process", hung_signal)
    with pytest.raises(TimeoutError):
        run(asyncio.wait_for(world.pods.stop(pod_id), 0.05))
    assert world.rt.pod(pod_id).state == PodState.READY  # nothing was finished yet
    monkeypatch.setattr(agent, "signal_process", original)
    hang.set()  # the guest answers again; the first stop's teardown goes on
    world.journal.steps.clear()
    run(world.pods.stop(pod_id))
    assert "vm.destroy" in world.journal.steps and "net.teardown" in world.journal.steps
    assert world.rt.pod(pod_id).state == PodState.NOTREADY
    assert world.rt.container(container_id).state == ContainerState.EXITED
    assert pod_id not in world.rt.sandboxes


def test_a_full_disk_is_resource_exhausted_with_the_path() -> None:


    code, message = status_of(OSError(errno.ENOSPC, "No space left on device",
                                      "/var/lib/vmrt/pods/p/pod.json"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message == "No space left on device: /var/lib/vmrt/pods/p/pod.json"
    assert status_of(OSError(errno.EIO, "I/O error"))[0] == grpc.StatusCode.INTERNAL


def test_an_unreadable_record_is_kept_and_its_vm_left_alone(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    run(recovery.detach_all(world.rt))
    record = world.tmp / "root" / "pods" / pod_id / "pod.json"
    record.write_text(record.read_text()[:50])  # truncated
    drivers = FakeDrivers(world.journal)
    drivers.processes = {FakeSandbox.PID: pod_id[:32]}
    after = world.restart(drivers)
    run(recovery.recover(after.rt))
    assert pod_id not in after.rt.store.pods and pod_id in after.rt.store.unreadable
    assert drivers.reclaimed == [] and record.exists()
    run(after.pods.run(pod_config(after, "other"), "vmrt"))  # vmrtd serves the rest


def test_an_unreadable_image_index_is_kept_and_the_store_starts_empty(world: World) -> None:
    index = next((world.tmp / "root").rglob("index.json"))
    index.write_text('[{"id": "sha')
    # The restart reads the index (it raised ValueError before), finds no
    # images and registers the test image again.
    fresh = world.restart()
    assert len(fresh.rt.images.images()) == 1
    assert list(index.parent.glob("index.json.unreadable-*"))


def test_recovery_sweeps_containers_no_record_claims(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    kept = run(world.containers.create(pod_id, container_config("kept")))
    orphan = run(world.containers.create(pod_id, container_config("orphan")))
    # As if vmrtd died after the agent made it and before its record was written.
    world.rt.store.remove_container(orphan)
    stray_dir = world.rt.container_dir(orphan)
    assert stray_dir.exists()
    survivor = world.drivers.made[pod_id]
    run(recovery.detach_all(world.rt))
    drivers = FakeDrivers(world.journal)
    drivers.alive[pod_id] = survivor
    after = world.restart(drivers)
    world.journal.steps.clear()
    run(recovery.recover(after.rt))
    assert survivor.agent is not None
    assert set(survivor.agent.processes) == {kept}
    assert "agent.remove_container" in world.journal.steps
    assert not stray_dir.exists() and after.rt.container_dir(kept).exists()
    assert not any(p.startswith(f"{orphan}/") for p in survivor.share.placed)
    assert after.rt.container(kept).state == ContainerState.CREATED


def test_a_rollback_that_fails_keeps_the_pod_notready_for_a_retry(world: World) -> None:
    world.journal.fail_at["agent.configure_network"] = StepFailed("configure")
    world.journal.fail_at["net.cni_del"] = StepFailed("CNI DEL failed")
    with pytest.raises(StepFailed, match="configure"):  # the caller sees the first failure
        run(world.pods.run(pod_config(world), "vmrt"))
    [pod_id] = list(world.rt.store.pods)
    pod = world.rt.pod(pod_id)
    assert pod.state == PodState.NOTREADY and "CNI DEL failed" in pod.reason
    assert pod.network.mode == "cni"  # what a retry needs to undo it
    with pytest.raises(AlreadyExistsError):  # the name stays with it, as in containerd
        run(world.pods.run(pod_config(world), "vmrt"))
    world.journal.steps.clear()
    run(world.pods.remove(pod_id))
    assert "net.teardown" in world.journal.steps and not world.rt.store.pods
    run(world.pods.run(pod_config(world), "vmrt"))


def test_a_guest_that_stops_answering_is_declared_dead(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_mod, "WATCHDOG_INTERVAL", 0.01)
    # The handler's watchdog settings reach the pod's watchdog.
    world.rt.config = dataclasses.replace(world.rt.config, runtime_handlers={
        "vmrt": {"watchdog_probe_timeout_s": 0.01, "watchdog_probes": 2}})
    slow = run(world.pods.run(pod_config(world, "slow"), "vmrt"))
    hung = run(world.pods.run(pod_config(world, "hung"), "vmrt"))
    container = run(world.containers.create(hung, container_config()))
    run(world.containers.start(container))
    agent = world.drivers.made[hung].agent
    assert agent is not None
    agent.hung = True
    run(asyncio.sleep(0.3))
    pod = world.rt.pod(hung)
    assert pod.state == PodState.NOTREADY and "stopped answering" in pod.reason
    assert "missed 2 health checks of 0.01 s" in pod.reason
    assert world.rt.container(container).state == ContainerState.EXITED
    assert world.drivers.made[hung].destroyed
    assert world.rt.pod(slow).state == PodState.READY  # an answering guest is left be


def test_recovery_adopts_pods_concurrently(world: World) -> None:
    pods = [run(world.pods.run(pod_config(world, f"p{i}"), "vmrt")) for i in range(5)]
    survivors = {pod_id: world.drivers.made[pod_id] for pod_id in pods}
    run(recovery.detach_all(world.rt))

    class Slow(FakeDrivers):
        async def adopt(self, sandbox_id, image, config, pid, start_time):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.2)  # an agent that takes its time to answer
            return await super().adopt(sandbox_id, image, config, pid, start_time)

    drivers = Slow(world.journal)
    drivers.alive.update(survivors)
    after = world.restart(drivers)
    began = time.monotonic()
    run(recovery.recover(after.rt))
    assert time.monotonic() - began < 0.2 * 5 / 2  # not one after another
    assert all(after.rt.pod(p).state == PodState.READY for p in pods)


def test_a_stop_whose_caller_gave_up_still_finishes(world: World,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id, _, agent = started(world)
    original = agent.signal_process

    async def slow_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.1)
        await original(*args, **kwargs)

    monkeypatch.setattr(agent, "signal_process", slow_signal)
    with pytest.raises(TimeoutError):
        run(asyncio.wait_for(world.pods.stop(pod_id), 0.02))
    run(asyncio.sleep(0.3))  # no second stop
    assert world.rt.pod(pod_id).state == PodState.NOTREADY
    assert world.drivers.made[pod_id].destroyed and "net.teardown" in world.journal.steps


def test_an_image_goes_with_its_last_tag(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    digest = "r.example/app@sha256:" + "b" * 64
    image = store.add_local(["r.example/app:1", "r.example/app:2"], {"rootfs": {"diff_ids": []}},
                            [], digests=(digest,))
    store.remove("r.example/app:1", set())
    assert [(i.repo_tags, i.repo_digests) for i in store.images()] == [
        (["r.example/app:2"], [digest])]
    store.remove("r.example/app:2", set())  # its digest no reason to keep it
    assert store.images() == [] and store.find(image.id) is None
    # Removing a digest leaves an image that still has tags.
    store.add_local(["r.example/app:3"], {"rootfs": {"diff_ids": []}}, [], digests=(digest,))
    store.remove(digest, set())
    assert [(i.repo_tags, i.repo_digests) for i in store.images()] == [(["r.example/app:3"], [])]


def test_records_of_a_later_vmrtd_load_without_its_new_fields(world: World) -> None:
    _, container_id, _ = started(world)
    path = next((world.tmp / "root" / "pods").glob(f"*/containers/{container_id}.json"))
    data = json.loads(path.read_text())
    data["meta"]["from_the_future"] = 1
    data["status"]["also_new"] = "x"
    path.write_text(json.dumps(data))
    store = RecordStore(world.tmp / "root")
    store.load()
    assert store.containers[container_id].state == ContainerState.RUNNING


def test_an_unreadable_image_index_collects_no_garbage(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    layer = store.layers / ("a" * 64)
    layer.mkdir()
    (store.dir / "index.json").write_text('[{"id": "sha')
    assert store.images() == []
    store.collect_garbage(set())  # kubelet's image GC, through RemoveImage
    assert layer.exists()  # the layers of images the index no longer names stay
    assert (store.dir / "index.json").exists()  # read, not renamed, outside the lock


# -- CreateContainer's intent, and calls during recovery ----------------------------

def test_create_writes_its_intent_before_anything_and_drops_it_after(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    agent = world.drivers.made[pod_id].agent
    assert agent is not None
    seen: list[tuple[set[str], list[str]]] = []
    original = agent.create_container

    async def create_container(container_id, *args):  # type: ignore[no-untyped-def]
        on_disk = [p.stem for p in (world.tmp / "root/pods" / pod_id / "creating").glob("*")]
        seen.append((set(world.rt.store.intents), on_disk))
        await original(container_id, *args)

    monkeypatch.setattr(agent, "create_container", create_container)
    container_id = run(world.containers.create(pod_id, container_config()))
    assert seen == [({container_id}, [container_id])]
    assert not world.rt.store.intents
    assert not list((world.tmp / "root/pods" / pod_id / "creating").glob("*"))
    # A create that fails drops its intent too.
    world.journal.fail_at["agent.create_container"] = StepFailed("no")
    with pytest.raises(StepFailed):
        run(world.containers.create(pod_id, container_config("other")))
    assert not world.rt.store.intents


def test_recovery_finishes_creates_that_a_crash_cut_short(world: World) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    recorded = run(world.containers.create(pod_id, container_config("recorded")))
    cut = run(world.containers.create(pod_id, container_config("cut")))
    # As a vmrtd killed after the agent made "cut" (no record yet) and after
    # "recorded" had its record (its intent not yet dropped) leaves them.
    world.rt.store.add_intent(pod_id, recorded)
    world.rt.store.remove_container(cut)
    world.rt.store.add_intent(pod_id, cut)
    survivor = world.drivers.made[pod_id]
    run(recovery.detach_all(world.rt))
    drivers = FakeDrivers(world.journal)
    drivers.alive[pod_id] = survivor
    after = world.restart(drivers)
    recovery.load(after.rt)
    assert set(after.rt.store.intents) == {recorded, cut}
    run(recovery.settle(after.rt))
    run(recovery.adopt(after.rt))
    assert survivor.agent is not None and set(survivor.agent.processes) == {recorded}
    assert not after.rt.container_dir(cut).exists()
    assert not any(p.startswith(f"{cut}/") for p in survivor.share.placed)
    assert after.rt.container(recorded).state == ContainerState.CREATED
    assert not after.rt.store.intents
    assert not list((world.tmp / "root/pods" / pod_id / "creating").glob("*"))


def test_calls_on_a_pod_being_adopted_wait_for_it(world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = run(world.pods.run(pod_config(world), "vmrt"))
    container_id = run(world.containers.create(pod_id, container_config()))
    survivor = world.drivers.made[pod_id]
    run(recovery.detach_all(world.rt))
    release = asyncio.Event()

    class Slow(FakeDrivers):
        async def adopt(self, *args):  # type: ignore[no-untyped-def]
            await release.wait()
            return await super().adopt(*args)

    drivers = Slow(world.journal)
    drivers.alive[pod_id] = survivor
    after = world.restart(drivers)
    recovery.load(after.rt)

    async def scenario() -> None:
        adoption = asyncio.create_task(recovery.adopt(after.rt))
        waiting = asyncio.create_task(after.rt.settled(container_id=container_id[:12]))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # Calls on other objects (and on none) do not wait.
        await asyncio.wait_for(after.rt.settled(pod_id="f" * 64), 0.05)
        await asyncio.wait_for(after.rt.settled(), 0.05)
        monkeypatch.setattr(core, "ADOPTION_WAIT", 0.01)
        with pytest.raises(UnavailableError, match="still being recovered"):
            await after.rt.settled(pod_id=pod_id)
        release.set()
        await asyncio.wait_for(waiting, 1)
        assert pod_id in after.rt.sandboxes  # adopted by the time the call goes on
        await adoption

    run(scenario())
    assert not after.rt.adoptions


def test_recovery_leaves_the_vms_of_pods_started_meanwhile(world: World) -> None:
    """CRI is served while recovery runs: a pod that a new RunPodSandbox is
    starting has a VM that no adopted pod claims, and it is not a leak."""
    after = world.restart()
    recovery.load(after.rt)
    config = pod_config(after, "new")
    starting = PodRecord.new("a" * 64, config, "vmrt", time.time_ns(),
                             vm=VMState(settings=after.rt.vm_config("vmrt", config)))
    after.rt.store.add_pod(starting)
    after.drivers.processes = {4242: "a" * 32, 999: "b" * 32}
    run(recovery.adopt(after.rt))
    assert after.drivers.reclaimed == [999]


def test_a_log_pump_outlives_a_full_disk(tmp_path: Path) -> None:
    """Saving the offsets fails with ENOSPC: the pump goes on, the guest's
    spool is still trimmed (the bytes are in the file), and the offsets are
    saved once the disk has room again."""
    trimmed: list[tuple[int, int]] = []
    saved: list[dict[str, int]] = []
    full = [True]

    class Agent:
        async def follow_output(self, container_id, exec_id, stream, offset=0,  # type: ignore[no-untyped-def]
                                trim_sent=False):
            if stream == pb.STDOUT:
                yield pb.OutputChunk(offset=0, data=b"hello\n")
                await asyncio.sleep(3600)  # the container runs on

        async def trim_output(self, container_id, stream, offset, exec_id=""):  # type: ignore[no-untyped-def]
            trimmed.append((stream, offset))

    def save(offsets: dict[str, int]) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device", "/root/pods/p/c.json")
        saved.append(offsets)

    async def scenario() -> None:
        pump = LogPump(Agent(), "c" * 64, CRILogWriter(str(tmp_path), "c.log"),  # type: ignore[arg-type]
                       {"stdout": 0, "stderr": 0}, save)
        pump.start()
        await asyncio.sleep(0.5)  # two flushes against a full disk
        assert trimmed == [(pb.STDOUT, 6)] and not saved
        assert pump._task is not None and not pump._task.done()
        full[0] = False
        await asyncio.sleep(0.5)
        assert saved and saved[-1] == {"stdout": 6, "stderr": 0}
        full[0] = True
        await pump.stop()  # the last save fails too, and is only logged

    run(scenario())
    assert (tmp_path / "c.log").read_text().endswith(" stdout F hello\n")


def test_a_line_the_stream_ended_without_a_newline_is_partial(tmp_path: Path) -> None:
    writer = CRILogWriter(str(tmp_path), "c.log")
    writer.write("stdout", b"one\ntw")
    writer.write("stdout", b"o\nthree")
    writer.write("stderr", b"err")
    assert writer.pending("stdout") == 5 and writer.pending("stderr") == 3
    writer.finish("stdout")
    writer.finish("stderr")
    writer.close()
    lines = [line.split(" ", 1)[1] for line in (tmp_path / "c.log").read_text().splitlines()]
    # containerd's tags: a newline completes a line (F); what the stream ended on is P.
    assert lines == ["stdout F one", "stdout F two", "stdout P three", "stderr P err"]


def test_admission_counts_full_vm_sizes(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod is refused (RESOURCE_EXHAUSTED, saying why) when the node
    cannot hold its VM at full size next to the others."""
    figures = {"MemTotal": 600, "MemAvailable": 500}
    monkeypatch.setattr(sizing, "meminfo_mib", lambda key: figures[key])
    first = run(world.pods.run(pod_config(world, "first"), "vmrt"))  # 256 of 600
    run(world.pods.run(pod_config(world, "second"), "vmrt"))  # 512 of 600
    with pytest.raises(ResourceExhaustedError,
                       match=r"VMs already take 512 MiB of the node's 600 MiB "
                             r"\(hypervisor.memory_overcommit = 1\)"):
        run(world.pods.run(pod_config(world, "third"), "vmrt"))
    assert len(world.rt.store.pods) == 2  # nothing of it was made
    # A stopped pod's VM no longer counts.
    run(world.pods.stop(first))
    third = run(world.pods.run(pod_config(world, "third"), "vmrt"))
    assert world.rt.pod(third).state == PodState.READY
    # MemAvailable bounds the new VM alone.
    run(world.pods.stop(third))
    figures["MemAvailable"] = 200
    with pytest.raises(ResourceExhaustedError, match="only 200 MiB of memory is available"):
        run(world.pods.run(pod_config(world, "fourth"), "vmrt"))
    # A VM template kept for later pods counts at its full size too.
    figures["MemAvailable"] = 500
    world.drivers.reserved_mib = 256
    with pytest.raises(ResourceExhaustedError, match="VMs already take 512 MiB"):
        run(world.pods.run(pod_config(world, "fourth"), "vmrt"))


def test_overhead_is_not_guest_memory(world: World) -> None:
    config = pod_config(world)
    config.linux.resources.memory_limit_in_bytes = 64 << 20
    config.linux.overhead.memory_limit_in_bytes = 32 << 20
    config.linux.overhead.cpu_quota, config.linux.overhead.cpu_period = 100_000, 100_000
    vm = world.rt.vm_config("vmrt", config)
    assert (vm.memory_mib, vm.vcpus) == (256 + 64, 1)


def test_stats_asked_twice_in_a_moment_cost_the_guest_one_answer(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """kubelet's ListPodSandboxStats and ListContainerStats of one sweep ask
    the same guest for the same containers: the second is the first answer
    (its own timestamp kept), and a later one asks again."""
    from vmrt.runtime import sandbox as sandbox_mod

    pod_id, container_id, agent = started(world)
    asked: list[str] = []
    answer = agent.container_stats

    async def counted(cid: str):  # type: ignore[no-untyped-def]
        asked.append(cid)
        return await answer(cid)

    monkeypatch.setattr(agent, "container_stats", counted)
    sandbox = world.rt.sandboxes[pod_id]
    first = run(sandbox.usage(container_id))
    assert run(sandbox.usage(container_id)) is first
    run(sandbox.usage(""))
    assert asked == [container_id, ""]
    monkeypatch.setattr(sandbox_mod, "STATS_TTL", 0.0)
    run(sandbox.usage(container_id))
    assert asked == [container_id, "", container_id]


def test_warm_starts_one_template_per_distinct_handler_that_uses_them(tmp_path: Path) -> None:
    """At start-up (after adoption), vmrtd asks for the base-size template of
    every handler with ``template`` on; handlers with the same VM share one,
    and a handler that turned templates off, or cannot run, gets none."""
    journal = Journal()
    world = make_world(tmp_path, journal, FakeDrivers(journal))
    world.rt.config = dataclasses.replace(world.rt.config, runtime_handlers={
        "vmrt": {}, "same": {}, "big": {"memory_mib": 512}, "private": {"template": False},
        "broken": {"image": str(tmp_path / "no-such-image")}})
    world.rt.warm()
    assert sorted(world.drivers.warmed) == [(tmp_path / "guest", 256, True),
                                            (tmp_path / "guest", 512, True)]
