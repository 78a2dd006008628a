"""Containers: create (with rollback), start, stop, remove, update, exec, logs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as api

from vmrt import crashpoint
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
from vmrt.runtime import ocispec, stopsignal
from vmrt.runtime.core import Runtime, container_key, name_key
from vmrt.runtime.records import (
    ContainerRecord,
    ContainerState,
    ContainerStatus,
    with_resources,
)
from vmrt.runtime.sandbox import PodSandbox
from vmrt.safefs import remove_tree_async as remove_tree
from vmrt.sandbox import userns
from vmrt.sandbox.driver import Share
from vmrt.sandbox.mounts import has_submounts

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ContainerFilter:
    id: str = ""
    pod_id: str = ""
    state: ContainerState | None = None
    labels: tuple[tuple[str, str], ...] = ()


async def _agent_create(live: PodSandbox, container_id: str, oci_spec: bytes, rootfs: pb.Rootfs,
                        stdio: pb.StdioOptions) -> None:
    try:
        await live.agent.create_container(container_id, oci_spec, rootfs, stdio)
    except AgentError as exc:
        if exc.code.name == "INVALID_ARGUMENT":
            # The agent names the part at fault ("command: ..."); the CRI
            # layer puts "config." in front.
            raise InvalidArgumentError(exc.details) from None
        raise


MAX_START_ERROR = 1024


class ContainerService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # -- create ---------------------------------------------------------------

    async def create(self, pod_id: str, config: api.ContainerConfig) -> str:
        """``config`` has passed ``vmrt.cri.validate.container_config``."""
        pod = self.rt.pod(pod_id)
        live = self.rt.ready_sandbox(pod)
        pod_config = pod.config()
        with about("image.image"):
            image = self.rt.images.resolve(config.image.image)
        # Image volumes: present already (kubelet pulls them first, as containerd expects).
        volumes = {index: self.rt.images.resolve(mount.image.image)
                   for index, mount in enumerate(config.mounts) if mount.image.image}
        layers = tuple(dict.fromkeys(
            [*image.layers, *(layer for v in volumes.values() for layer in v.layers)]))
        container_id = secrets.token_hex(32)
        log_path = ""
        if config.log_path:
            log_path = os.path.join(pod_config.log_directory, config.log_path)
        key = name_key(config.metadata.name, config.metadata.attempt, pod)
        self.rt.container_names.reserve(key, container_id)
        # Until the record lists them, nothing else keeps the layers in use.
        with self.rt.images.pinned(layers):
            try:
                # The pod's lock: a StopPodSandbox cannot tear the VM and its
                # share down while this adds mounts to it.
                async with live.lock:
                    self.rt.ready_sandbox(pod)
                    await self._create_in_vm(live, container_id, log_path, config, pod_config,
                                             image, volumes, layers)
            except BaseException:
                self.rt.container_names.release(key, container_id)
                raise
        self.rt.events.publish(container_id, pod.id, "created")
        return container_id

    async def _create_in_vm(self, live: PodSandbox, container_id: str, log_path: str,
                            config: api.ContainerConfig, pod_config: api.PodSandboxConfig,
                            image: ImageRecord, volumes: dict[int, ImageRecord],
                            layers: tuple[str, ...]) -> None:
        """Root filesystem, mounts, OCI spec, agent create: each undone if a later step fails."""
        store = self.rt.store
        # The intent first, on disk: whatever a crash leaves from here on,
        # a restarted vmrtd finds by it and removes.
        store.add_intent(live.id, container_id)
        crashpoint.reached("create", "intent")
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(store.drop_intent, container_id)  # undone last
            share = live.share
            undo.callback(share.release, container_id)
            push_cleanup(undo, remove_tree, self.rt.container_dir(container_id))
            rootfs = self._rootfs(container_id, self.rt.images.layer_dirs(image), share,
                                  ocispec.pod_user_namespace(pod_config))
            shared = self._mounts(config.mounts, share, container_id, volumes)
            crashpoint.reached("create", "rootfs")
            spec = ocispec.build(
                config=config, pod_config=pod_config, image_config=image.config,
                image_file=lambda path: self.rt.images.read_file(image, path), mounts=shared)
            # Before the call: a create cut short (the caller's deadline) may
            # still have made the container in the guest.
            push_cleanup(undo, self._agent_remove, live, container_id)
            start_error = ""
            try:
                await _agent_create(
                    live, container_id, json.dumps(spec).encode(), pb.Rootfs(share_path=rootfs),
                    # With a log the host takes the output; without one nobody
                    # does, and the guest keeps only the latest.
                    pb.StdioOptions(terminal=config.tty, open_stdin=config.stdin,
                                    stdin_once=config.stdin_once,
                                    acked_output=bool(log_path)))
            except InvalidArgumentError as exc:
                if not str(exc).startswith("command: "):
                    raise
                # As containerd: a command the image lacks fails StartContainer,
                # not CreateContainer (kubelet's back-off and events depend on
                # which). The agent undid its side; the record is kept, and so
                # are its root filesystem and mounts, until RemoveContainer.
                # The guest wrote it: kept short and printable (record, status, gRPC).
                start_error = re.sub(r"[\x00-\x1f\x7f]", " ",
                                     str(exc).removeprefix("command: "))[:MAX_START_ERROR]
            crashpoint.reached("create", "agent-created")
            record = ContainerRecord.new(container_id, live.id, config, image.id, log_path,
                                         time.time_ns(), process_json=json.dumps(spec["process"]),
                                         layers=layers,
                                         stop_signal=stopsignal.of(config, image.config),
                                         start_error=start_error)
            store.add_container(record)
            crashpoint.reached("create", "recorded")
            undo.pop_all()
        store.drop_intent(container_id)

    def _rootfs(self, container_id: str, layers: list[Path], share: Share,
                userns_options: api.UserNamespace | None = None) -> str:
        """overlayfs on the host: the image's layers read-only below, a private
        upper dir. In a pod with a user namespace of its own, id-mapped
        (``Share.mount_overlay``): the pod's root owns its files."""
        base = self.rt.container_dir(container_id)
        upper, work = base / "upper", base / "work"
        for path in (upper, work):
            path.mkdir(parents=True, exist_ok=True)
        rel = f"{container_id}/rootfs"
        if userns_options is None:
            return share.mount_overlay(rel, lower=layers, upper=upper, work=work)
        (uids,), (gids,) = userns_options.uids, userns_options.gids
        return share.mount_overlay(rel, lower=layers, upper=upper, work=work, idmap=(
            userns.layer_map(uids.host_id, uids.length),
            userns.layer_map(gids.host_id, gids.length)))

    def _mounts(self, cri_mounts: Sequence[api.Mount], share: Share, container_id: str,
                volumes: dict[int, ImageRecord]) -> list[ocispec.SharedMount]:
        shared = []
        for index, mount in enumerate(cri_mounts):
            if index in volumes:
                rel = share.mount_image(f"{container_id}/images/{index}",
                                        self.rt.images.layer_dirs(volumes[index]),
                                        mount.image_sub_path)
                shared.append(ocispec.SharedMount(mount.container_path, rel, True,
                                                  api.PROPAGATION_PRIVATE))
                continue
            source = Path(mount.host_path)
            if not source.exists():
                # As containerd does: a missing host directory is created.
                source.mkdir(parents=True, exist_ok=True)
            rel = share.bind(f"{container_id}/mounts/{index}", source, mount.readonly,
                             follow_host=mount.propagation != api.PROPAGATION_PRIVATE,
                             recursive_readonly=mount.recursive_read_only)
            # The host holds the mode of each mount of the bind. In the guest
            # the whole bind is one 9p mount, so "ro" there would cover the
            # mounts below too: only when that is what was asked, or there
            # are none (a plain readonly keeps its submounts' own mode).
            guest_readonly = mount.readonly and (
                mount.recursive_read_only or not has_submounts(source))
            shared.append(ocispec.SharedMount(mount.container_path, rel, guest_readonly,
                                              mount.propagation))
        return shared

    async def _agent_remove(self, live: PodSandbox, container_id: str) -> None:
        with contextlib.suppress(AgentError):
            await live.agent.remove_container(container_id, force=True)

    # -- start / stop / remove ---------------------------------------------

    async def start(self, container_id: str) -> None:
        container = self.rt.container(container_id)
        if container.state != ContainerState.CREATED:
            raise FailedPreconditionError(
                f"container {container.id} is {container.state}, not created")
        live = self.rt.ready_sandbox(self.rt.pod(container.pod_id))
        if container.meta.start_error:
            # containerd's outcome: exited with 128, StartError, and why.
            self.rt.container_exited(container, 128, time.time_ns(), reason="StartError",
                                     message=container.meta.start_error)
            raise FailedPreconditionError(f"container {container.id} cannot start: "
                                          f"{container.meta.start_error}")
        live.start_log_pump(container)
        started_at = time.time_ns()
        await live.agent.start_container(container.id)

        def started(status: ContainerStatus) -> ContainerStatus:
            if status.state == ContainerState.CREATED:
                return dataclasses.replace(status, state=ContainerState.RUNNING,
                                           started_at=started_at)
            # It ran and exited while StartContainer was still on its way back.
            return dataclasses.replace(status, started_at=started_at)

        # Refused (NOT_FOUND) if a RemoveContainer came in meanwhile: the
        # record stays removed.
        self.rt.store.update_container(container, started)
        self.rt.events.publish(container.id, container.pod_id, "started")

    async def stop(self, container_id: str, timeout: int) -> None:
        container = self.rt.container(container_id)
        if container.state == ContainerState.EXITED:
            return
        live = self.rt.sandboxes.get(container.pod_id)
        if live is None:
            return
        stop_signal = container.meta.stop_signal
        if not stop_signal:  # a record from before stop_signal was kept
            image = self.rt.images.find(container.image_ref)
            stop_signal = stopsignal.of(container.config(), image.config if image else {})
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

    async def _wait(self, live: PodSandbox, container: ContainerRecord,
                    timeout: float | None) -> bool:
        try:
            status = await live.agent.wait_process(container.id, timeout=timeout)
        except AgentError as exc:
            if exc.code.name == "DEADLINE_EXCEEDED":
                return False
            raise
        self.rt.container_exited(container, status.exit_code, status.finished_at_ns,
                                 status.oom_killed)
        await live.drain_log(container.id)
        return True

    async def remove(self, container_id: str) -> None:
        try:
            container = self.rt.container(container_id)
        except NotFoundError:
            return
        live = self.rt.sandboxes.get(container.pod_id)
        if live is not None:
            if container.state != ContainerState.EXITED:
                await self.stop(container.id, 0)
            await self._agent_remove(live, container.id)
            await live.drop_log(container.id)
            live.share.release(container.id)
        await remove_tree(self.rt.container_dir(container.id))
        pod = self.rt.store.pods.get(container.pod_id)
        if pod is not None:
            self.rt.container_names.release(container_key(container, pod), container.id)
        self.rt.store.remove_container(container.id)
        self.rt.events.publish(container.id, container.pod_id, "deleted")

    # -- update, logs ----------------------------------------------------------

    async def update_resources(self, container_id: str,
                               resources: api.LinuxContainerResources) -> None:
        container = self.rt.container(container_id)
        if container.state == ContainerState.EXITED:
            raise FailedPreconditionError(f"container {container.id} is {container.state}")
        live = self.rt.ready_sandbox(self.rt.pod(container.pod_id))
        try:
            await live.agent.update_container(
                container.id, json.dumps(ocispec.resources(resources)).encode())
        except AgentError as exc:
            if exc.code.name == "INVALID_ARGUMENT":
                raise InvalidArgumentError(exc.details) from None  # "linux: ..."
            raise
        # ContainerStatus.resources reports what the guest's cgroup now has.
        self.rt.store.update_container(container, lambda s: with_resources(s, resources))

    def reopen_log(self, container_id: str) -> None:
        container = self.rt.container(container_id)
        if container.state != ContainerState.RUNNING:
            raise FailedPreconditionError(f"container {container.id} is not running")
        self.rt.ready_sandbox(self.rt.pod(container.pod_id)).reopen_log(container.id)

    # -- queries ----------------------------------------------------------------

    async def usage(self, container: ContainerRecord) -> pb.ContainerStatsResponse | None:
        """CPU and memory as the guest accounts them; None unless the container runs."""
        sandbox = self.rt.sandboxes.get(container.pod_id)
        if sandbox is None or container.state != ContainerState.RUNNING:
            return None
        return await sandbox.usage(container.id)

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
