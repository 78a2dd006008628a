"""The agent's containers: creating, starting, signalling and removing them.

``ContainerManager`` is what the gRPC service calls. The pieces it uses
live apart: the records of containers and processes in ``model``, the
bundle and its rootfs mounts in ``bundles``, starting and reaping crun's
processes in ``launch``, exec processes in ``execs``.

Locking: the manager's lock guards the id -> container map; each
container's lock is held across create, start, exec admission and remove,
so those never interleave on one container. A container being removed is
marked first and leaves the map at once, so later calls see NOT_FOUND.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from vmrt.agent import bundles, cgroups, execs, specfix
from vmrt.agent.crun import Crun
from vmrt.agent.errors import (
    AlreadyExists,
    CommandFailed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from vmrt.agent.events import EventBus
from vmrt.agent.launch import KILL_GRACE, Launcher, kill
from vmrt.agent.model import Container, Process, check_id
from vmrt.agent.proctable import ProcessTable
from vmrt.agent.stdio import ProcessIO

if TYPE_CHECKING:
    from vmrt.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

CONTAINERS_DIR = "/run/vmrt/containers"
SHARE_DIR = "/run/vmrt/share"


class ContainerManager:
    def __init__(
        self,
        table: ProcessTable,
        crun: Crun,
        events: EventBus,
        mount: Callable[[list[str]], None],
        base_dir: str = CONTAINERS_DIR,
        share_dir: str = SHARE_DIR,
    ) -> None:
        self._crun = crun
        self._launcher = Launcher(table, events)
        self._mount = mount
        self._base = base_dir
        self._share = share_dir
        self._lock = threading.Lock()
        self._containers: dict[str, Container] = {}
        self._pod_ns = specfix.PodNamespaces(table)
        self._shm_lock = threading.Lock()

    def get(self, container_id: str) -> Container:
        with self._lock:
            try:
                return self._containers[container_id]
            except KeyError:
                raise NotFound(f"container {container_id!r} not found") from None

    def containers(self) -> list[Container]:
        with self._lock:
            return list(self._containers.values())

    # -- create ---------------------------------------------------------

    def create(
        self,
        container_id: str,
        spec_json: bytes,
        share_path: str,
        guest_overlay: bool,
        terminal: bool,
        open_stdin: bool,
        acked_output: bool = True,
    ) -> int:
        check_id("container id", container_id)
        spec = bundles.parse_spec(spec_json)
        source = bundles.rootfs_source(self._share, share_path)

        bundle = os.path.join(self._base, container_id)
        with self._lock:
            if container_id in self._containers:
                raise AlreadyExists(f"container {container_id!r} already exists")
            bundles.clear_stale(bundle)
            # Creates the bundle directory, with the io directory in it.
            io = ProcessIO(os.path.join(bundle, "io"), terminal, open_stdin, acked_output)
            ctr = Container(id=container_id, bundle=bundle, cgroups_path=f"/vmrt/{container_id}",
                            init=Process(container_id, "", io))
            self._containers[container_id] = ctr
        with ctr.lock:
            try:
                bundles.prepare_rootfs(bundle, source, guest_overlay, self._mount, ctr.mounts)
                spec["root"] = {"path": os.path.join(bundle, "rootfs"),
                                "readonly": bool(spec["root"].get("readonly", False))}
                spec["process"]["terminal"] = terminal
                spec["linux"]["cgroupsPath"] = ctr.cgroups_path
                specfix.resolve(spec, self._share, self._pod_ns, self._init_pid,
                                self._ensure_pod_shm)
                with open(os.path.join(bundle, "config.json"), "w") as f:
                    json.dump(spec, f)
                ctr.init.pid = self._launcher.spawn(
                    ctr.init,
                    lambda child, console: self._crun.create(
                        container_id, bundle, child, console, ctr.log_path),
                )
            except BaseException:
                ctr.removed = True
                self._destroy(ctr)
                raise
            ctr.init.oom_kills_at_start = cgroups.oom_kills(ctr.cgroup)
            self._launcher.watch(ctr, ctr.init)
            return ctr.init.pid

    def set_pod_ipc_sysctls(self, sysctls: list[tuple[str, str]]) -> None:
        self._pod_ns.ipc_sysctls = [(k, v) for k, v in sysctls
                                    if k.startswith(specfix.IPC_SYSCTL_PREFIXES)]

    def _init_pid(self, container_id: str) -> int:
        ctr = self.get(container_id)
        if not ctr.init.pid or ctr.init.reaped:
            raise FailedPrecondition(f"container {container_id} is not running")
        return ctr.init.pid

    def _ensure_pod_shm(self) -> None:
        path = os.path.join(specfix.POD_DIR, "shm")
        with self._shm_lock:
            if os.path.ismount(path):
                return
            os.makedirs(path, exist_ok=True)
            self._mount(["-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k",
                         "shm", path])

    # -- lifecycle ------------------------------------------------------

    def _live(self, container_id: str) -> Container:
        ctr = self.get(container_id)
        ctr.check_present()
        return ctr

    def start(self, container_id: str) -> None:
        ctr = self._live(container_id)
        with ctr.lock:
            ctr.check_init("created", ", not created")
            ctr.init.started_at_ns = time.time_ns()
            try:
                self._crun.start(container_id, ctr.log_path)
            except BaseException:
                ctr.init.started_at_ns = 0
                raise

    def exec(
        self, container_id: str, exec_id: str, process_json: bytes, terminal: bool,
        open_stdin: bool, acked_output: bool = True,
    ) -> int:
        check_id("exec id", exec_id)
        ctr = self._live(container_id)
        process = execs.parse_process(process_json, terminal)
        return execs.start(ctr, exec_id, process, terminal, open_stdin, acked_output,
                           self._crun, self._launcher)

    def update(self, container_id: str, resources_json: bytes) -> None:
        ctr = self._live(container_id)
        try:
            resources = json.loads(resources_json)
        except ValueError as exc:
            raise InvalidArgument(f"resources are not valid JSON: {exc}") from None
        if not isinstance(resources, dict):
            raise InvalidArgument("resources must be a JSON object")
        with ctr.lock:
            if ctr.init.reaped:
                raise FailedPrecondition(f"container {container_id} has exited")
            path = os.path.join(ctr.bundle, "resources.json")
            with open(path, "w") as f:
                json.dump(resources, f)
            self._crun.update(container_id, path, ctr.log_path)

    def signal(self, container_id: str, exec_id: str, signal: int, all_processes: bool) -> None:
        ctr = self._live(container_id)
        proc = ctr.process(exec_id)
        if proc.reaped:
            return
        if proc.pid <= 0:
            raise FailedPrecondition(f"{container_id} is still being created")
        if exec_id or proc.state == "created":
            # crun refuses to signal a created container; its init runs no
            # user code yet, so signalling it directly is equivalent.
            kill(proc.pid, signal)
            return
        try:
            self._crun.kill(container_id, signal, all_processes, ctr.log_path)
        except (CommandFailed, NotFound):
            if not proc.done.wait(0.5):
                raise

    def wait(self, container_id: str, exec_id: str, timeout: float | None = None) -> Process:
        proc = self.get(container_id).process(exec_id)
        proc.done.wait(timeout)
        return proc

    def remove(self, container_id: str, force: bool) -> None:
        try:
            ctr = self.get(container_id)
        except NotFound:
            return
        with ctr.lock:
            if ctr.removed:
                return
            if not ctr.init.reaped and not force:
                raise FailedPrecondition(f"container {container_id} is still {ctr.init.state}")
            ctr.removed = True
            self._destroy(ctr)

    def remove_exec(self, container_id: str, exec_id: str) -> None:
        check_id("exec id", exec_id)
        try:
            ctr = self.get(container_id)
        except NotFound:
            return
        execs.remove(ctr, exec_id)

    def _destroy(self, ctr: Container) -> None:
        """Tear a container down completely (removal, or a create that failed).

        Called with ``ctr.lock`` held and ``ctr.removed`` set.
        """
        procs = [ctr.init, *ctr.execs.values()]
        if ctr.init.pid and not ctr.init.reaped:
            kill(ctr.init.pid)
        for proc in procs:
            if proc.pid and not proc.done.wait(KILL_GRACE):
                log.warning("%s/%s did not exit after SIGKILL", ctr.id, proc.exec_id)
        try:
            self._crun.delete(ctr.id, force=True, log_path=None)
        except CommandFailed as exc:
            log.warning("%s", exc)
        bundles.unmount_all(ctr.mounts, self._mount)
        for proc in procs:
            proc.io.destroy()
        bundles.remove(ctr.bundle)
        with self._lock:
            if self._containers.get(ctr.id) is ctr:
                del self._containers[ctr.id]

    # -- stdio ----------------------------------------------------------

    def read_output(
        self, container_id: str, exec_id: str, stream: int, offset: int, follow: bool,
        keep_going: Callable[[], bool], trim_sent: bool = False,
        on_cancel: Callable[[Callable[[], None]], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        spool = self.get(container_id).process(exec_id).io.spool(stream)
        for chunk_offset, data in spool.read_from(offset, follow, keep_going, on_cancel):
            yield chunk_offset, data
            # The caller asked for the next chunk: it has this one.
            if trim_sent:
                spool.trim(chunk_offset + len(data))

    def trim_output(self, container_id: str, exec_id: str, stream: int, offset: int) -> None:
        self.get(container_id).process(exec_id).io.spool(stream).trim(offset)

    def write_stdin(self, container_id: str, exec_id: str, data: bytes, close: bool) -> None:
        proc = self._live(container_id).process(exec_id)
        try:
            proc.io.write_stdin(data, close)
        except BrokenPipeError as exc:
            raise FailedPrecondition(f"stdin of {container_id}: {exc}") from None
        except TimeoutError as exc:
            raise FailedPrecondition(f"stdin of {container_id}: {exc}") from None

    def resize(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        if not (0 < rows <= 0xFFFF and 0 < cols <= 0xFFFF):
            raise InvalidArgument(f"terminal size {rows}x{cols} is out of range")
        proc = self._live(container_id).process(exec_id)
        try:
            proc.io.resize(rows, cols)
        except ValueError as exc:
            raise FailedPrecondition(str(exc)) from None

    def stats(self, container_id: str) -> pb.ContainerStatsResponse:
        if not container_id:
            return cgroups.read_stats(cgroups.cgroup_dir("/vmrt"))
        return cgroups.read_stats(self.get(container_id).cgroup)
