"""Containers: create (with rollback), start, stop, remove, update, exec, logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal as signals
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as api

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError
from vmrt.aio import push_cleanup
from vmrt.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    about,
)
from vmrt.images.store import ImageRecord
from vmrt.runtime import ocispec
from vmrt.runtime.core import LivePod, Runtime, container_key
from vmrt.runtime.records import ContainerRecord
from vmrt.safefs import remove_tree_async as remove_tree
from vmrt.sandbox.share import SandboxShare

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ContainerFilter:
    id: str = ""
    pod_id: str = ""
    state: str | None = None  # created | running | exited | unknown
    labels: tuple[tuple[str, str], ...] = ()


def _stop_signal(config: api.ContainerConfig, image_config: dict[str, object]) -> int:
    if config.stop_signal:
        name = api.Signal.Name(config.stop_signal)
        name = name.replace("RTMINPLUS", "RTMIN+").replace("RTMAXMINUS", "RTMAX-")
        if name.startswith("SIGRTMIN+"):
            return int(signals.SIGRTMIN) + int(name.split("+")[1])
        if name.startswith("SIGRTMAX-"):
            return int(signals.SIGRTMAX) - int(name.split("-")[1])
        return int(getattr(signals, name, signals.SIGTERM))
    image_signal = str(image_config.get("StopSignal", ""))
    if image_signal:
        if image_signal.isdigit():
            return int(image_signal)
        name = image_signal if image_signal.startswith("SIG") else f"SIG{image_signal}"
        return int(getattr(signals, name, signals.SIGTERM))
    return int(signals.SIGTERM)


async def _agent_create(live: LivePod, container_id: str, oci_spec: bytes, rootfs: pb.Rootfs,
                        stdio: pb.StdioOptions) -> None:
    try:
        await live.agent.create_container(container_id, oci_spec, rootfs, stdio)
    except AgentError as exc:
        if exc.code.name == "INVALID_ARGUMENT":
            # The agent names the part at fault ("command: ..."); the CRI
            # layer puts "config." in front.
            raise InvalidArgumentError(exc.details) from None
        raise


class ContainerService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # -- create ---------------------------------------------------------------

    async def create(self, pod_id: str, config: api.ContainerConfig) -> str:
        """``config`` has passed ``vmrt.cri.validate.container_config``."""
        pod = self.rt.pod(pod_id)
        live = self.rt.live_pod(pod)
        pod_config = pod.config()
        with about("image.image"):
            image = self.rt.images.resolve(config.image.image)
        container_id = secrets.token_hex(32)
        log_path = ""
        if config.log_path:
            log_path = os.path.join(pod_config.log_directory, config.log_path)
        record = ContainerRecord.new(container_id, pod.id, config, image.id, log_path,
                                     time.time_ns())
        key = container_key(record, pod)
        self.rt.reserve_container_name(key, container_id)
        # Until the record lists them, nothing else keeps the layers in use.
        with self.rt.images.pinned(image.layers):
            try:
                # The pod's lock: a StopPodSandbox cannot tear the VM and its
                # share down while this adds mounts to it.
                async with live.lock:
                    self.rt.live_pod(pod)
                    await self._create_in_vm(live, record, config, pod_config, image)
            except BaseException:
                self.rt.release_container_name(key, container_id)
                raise
        self.rt.events.publish(container_id, pod.id, "created")
        return container_id

    async def _create_in_vm(self, live: LivePod, record: ContainerRecord,
                            config: api.ContainerConfig, pod_config: api.PodSandboxConfig,
                            image: ImageRecord) -> None:
        """Root filesystem, mounts, OCI spec, agent create: each undone if a later step fails."""
        container_id = record.id
        async with contextlib.AsyncExitStack() as undo:
            share = live.vm.share
            undo.callback(share.release, container_id)
            push_cleanup(undo, remove_tree, self.rt.container_dir(container_id))
            record.layers = list(image.layers)
            rootfs = self._rootfs(container_id, self.rt.images.layer_dirs(image), share)
            shared = self._mounts(config.mounts, share, container_id)
            spec = ocispec.build(
                config=config, pod_config=pod_config, image_config=image.config,
                image_file=lambda path: self.rt.images.read_file(image, path), mounts=shared)
            record.process_json = json.dumps(spec["process"])
            await _agent_create(
                live, container_id, json.dumps(spec).encode(), pb.Rootfs(share_path=rootfs),
                # With a log the host takes the output; without one nobody
                # does, and the guest keeps only the latest.
                pb.StdioOptions(terminal=config.tty, open_stdin=config.stdin,
                                stdin_once=config.stdin_once,
                                acked_output=bool(record.log_path)))
            push_cleanup(undo, self._agent_remove, live, container_id)
            self.rt.store.add_container(record)
            undo.pop_all()

    def _rootfs(self, container_id: str, layers: list[Path], share: SandboxShare) -> str:
        """overlayfs on the host: the image's layers read-only below, a private upper dir."""
        base = self.rt.container_dir(container_id)
        upper, work = base / "upper", base / "work"
        for path in (upper, work):
            path.mkdir(parents=True, exist_ok=True)
        return share.mount_overlay(f"{container_id}/rootfs", lower=layers, upper=upper,
                                   work=work)

    def _mounts(self, cri_mounts: Sequence[api.Mount], share: SandboxShare,
                container_id: str) -> list[ocispec.SharedMount]:
        shared = []
        for index, mount in enumerate(cri_mounts):
            source = Path(mount.host_path)
            if not source.exists():
                # As containerd does: a missing host directory is created.
                source.mkdir(parents=True, exist_ok=True)
            rel = share.bind(f"{container_id}/mounts/{index}", source, mount.readonly,
                             follow_host=mount.propagation != api.PROPAGATION_PRIVATE)
            shared.append(ocispec.SharedMount(mount.container_path, rel, mount.readonly,
                                              mount.propagation))
        return shared

    async def _agent_remove(self, live: LivePod, container_id: str) -> None:
        with contextlib.suppress(AgentError):
            await live.agent.remove_container(container_id, force=True)

    # -- start / stop / remove ---------------------------------------------

    async def start(self, container_id: str) -> None:
        container = self.rt.container(container_id)
        if container.state != "created":
            raise FailedPreconditionError(
                f"container {container.id} is {container.state}, not created")
        live = self.rt.live_pod(self.rt.pod(container.pod_id))
        self.rt.start_log_pump(live, container)
        started_at = time.time_ns()
        await live.agent.start_container(container.id)
        if container.state == "created":
            self.rt.store.update_container(container, state="running", started_at=started_at)
        else:
            # It ran and exited while StartContainer was still on its way back.
            self.rt.store.update_container(container, started_at=started_at)
        self.rt.events.publish(container.id, container.pod_id, "started")

    async def stop(self, container_id: str, timeout: int) -> None:
        container = self.rt.container(container_id)
        if container.state in ("exited", "unknown"):
            return
        live = self.rt.live.get(container.pod_id)
        if live is None:
            return
        image = self.rt.images.find(container.image_ref)
        stop_signal = _stop_signal(container.config(), image.config if image else {})
        try:
            if timeout > 0:
                await live.agent.signal_process(container.id, stop_signal)
                if await self._wait(live, container, timeout):
                    return
            await live.agent.signal_process(container.id, 9, all_processes=True)
            await self._wait(live, container, None)
        except AgentError as exc:
            if exc.code.name != "NOT_FOUND":
                raise

    async def _wait(self, live: LivePod, container: ContainerRecord,
                    timeout: float | None) -> bool:
        try:
            status = await live.agent.wait_process(container.id, timeout=timeout)
        except AgentError as exc:
            if exc.code.name == "DEADLINE_EXCEEDED":
                return False
            raise
        self.rt.container_exited(container, status.exit_code, status.finished_at_ns,
                                 status.oom_killed)
        pump = live.pumps.get(container.id)
        if pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump.wait(), 10)
        return True

    async def remove(self, container_id: str) -> None:
        try:
            container = self.rt.container(container_id)
        except NotFoundError:
            return
        live = self.rt.live.get(container.pod_id)
        if live is not None:
            if container.state in ("created", "running"):
                await self.stop(container.id, 0)
            await self._agent_remove(live, container.id)
            pump = live.pumps.pop(container.id, None)
            if pump is not None:
                await pump.stop()
            live.vm.share.release(container.id)
        await remove_tree(self.rt.container_dir(container.id))
        pod = self.rt.store.pods.get(container.pod_id)
        if pod is not None:
            self.rt.release_container_name(container_key(container, pod), container.id)
        self.rt.store.remove_container(container.id)
        self.rt.events.publish(container.id, container.pod_id, "deleted")

    # -- update, logs ----------------------------------------------------------

    async def update_resources(self, container_id: str,
                               resources: api.LinuxContainerResources) -> None:
        container = self.rt.container(container_id)
        if container.state not in ("created", "running"):
            raise FailedPreconditionError(f"container {container.id} is {container.state}")
        live = self.rt.live_pod(self.rt.pod(container.pod_id))
        try:
            await live.agent.update_container(
                container.id, json.dumps(ocispec.resources(resources)).encode())
        except AgentError as exc:
            if exc.code.name == "INVALID_ARGUMENT":
                raise InvalidArgumentError(exc.details) from None  # "linux: ..."
            raise

    def reopen_log(self, container_id: str) -> None:
        container = self.rt.container(container_id)
        if container.state != "running":
            raise FailedPreconditionError(f"container {container.id} is not running")
        live = self.rt.live_pod(self.rt.pod(container.pod_id))
        pump = live.pumps.get(container.id)
        if pump is None:
            raise FailedPreconditionError(f"container {container.id} has no log file")
        pump.writer.reopen()

    # -- queries ----------------------------------------------------------------

    def list(self, flt: ContainerFilter) -> list[ContainerRecord]:
        found = []
        for container in self.rt.store.containers.values():
            if flt.id and not container.id.startswith(flt.id):
                continue
            if flt.pod_id and not container.pod_id.startswith(flt.pod_id):
                continue
            if flt.state and container.state != flt.state:
                continue
            labels = container.config().labels
            if any(labels.get(k) != v for k, v in flt.labels):
                continue
            found.append(container)
        return found
