"""Containers and their processes inside the guest.

One ``Container`` per crun container; its init and every exec are a
``Process`` with spooled stdio and an exit status filled in by the reaper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vmrt.agent import cgroups, specfix
from vmrt.agent.crun import Crun
from vmrt.agent.errors import (
    AlreadyExists,
    CommandFailed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from vmrt.agent.events import EventBus
from vmrt.agent.proctable import ExitInfo, ProcessTable
from vmrt.agent.stdio import ProcessIO

log = logging.getLogger(__name__)

CONTAINERS_DIR = "/run/vmrt/containers"
SHARE_DIR = "/run/vmrt/share"
KILL_GRACE = 10.0


@dataclass(frozen=True)
class ExitEvent:
    container_id: str
    exec_id: str
    exit: ExitInfo
    started_at_ns: int
    oom_killed: bool


@dataclass
class Process:
    container_id: str
    exec_id: str
    io: ProcessIO
    pid: int = 0
    started_at_ns: int = 0
    exit: ExitInfo | None = None
    oom_killed: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def state(self) -> str:
        if self.exit is not None:
            return "exited"
        return "running" if self.started_at_ns else "created"


@dataclass
class Container:
    id: str
    bundle: str
    cgroups_path: str
    init: Process
    execs: dict[str, Process] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log_path(self) -> str:
        return os.path.join(self.bundle, "crun.log")

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"container {self.id} has no exec {exec_id!r}") from None


def _check_id(kind: str, value: str) -> None:
    if not value or "/" in value or value in (".", "..") or len(value) > 128:
        raise InvalidArgument(f"invalid {kind} {value!r}")


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
        self._table = table
        self._crun = crun
        self._events = events
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
    ) -> int:
        _check_id("container id", container_id)
        try:
            spec: dict[str, Any] = json.loads(spec_json)
        except ValueError as exc:
            raise InvalidArgument(f"the OCI spec is not valid JSON: {exc}") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
            raise InvalidArgument("the OCI spec has no process object")
        source = os.path.normpath(os.path.join(self._share, share_path.lstrip("/")))
        if not source.startswith(self._share + "/"):
            raise InvalidArgument(f"rootfs path {share_path!r} leaves the sandbox share")
        if not os.path.isdir(source):
            raise InvalidArgument(f"rootfs {share_path!r} is not a directory in the sandbox share")

        bundle = os.path.join(self._base, container_id)
        with self._lock:
            if container_id in self._containers:
                raise AlreadyExists(f"container {container_id!r} already exists")
            os.makedirs(bundle)
            ctr = Container(
                id=container_id,
                bundle=bundle,
                cgroups_path=f"/vmrt/{container_id}",
                init=Process(container_id, "", ProcessIO(os.path.join(bundle, "io"), terminal,
                                                          open_stdin)),
            )
            self._containers[container_id] = ctr
        try:
            self._prepare_rootfs(ctr, source, guest_overlay)
            spec["root"] = {"path": os.path.join(bundle, "rootfs"),
                            "readonly": bool(spec.get("root", {}).get("readonly", False))}
            spec["process"]["terminal"] = terminal
            spec.setdefault("linux", {})["cgroupsPath"] = ctr.cgroups_path
            specfix.resolve(spec, self._share, self._pod_ns, self._init_pid, self._ensure_pod_shm)
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(spec, f)
            ctr.init.pid = self._spawn(
                ctr.init,
                lambda child, console: self._crun.create(
                    container_id, bundle, child, console, ctr.log_path
                ),
            )
        except BaseException:
            self._destroy(ctr, kill=True)
            raise
        self._watch(ctr, ctr.init)
        return ctr.init.pid

    def _init_pid(self, container_id: str) -> int:
        ctr = self.get(container_id)
        if not ctr.init.pid or ctr.init.exit is not None:
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

    def update(self, container_id: str, resources_json: bytes) -> None:
        ctr = self.get(container_id)
        try:
            resources = json.loads(resources_json)
        except ValueError as exc:
            raise InvalidArgument(f"resources are not valid JSON: {exc}") from None
        if ctr.init.exit is not None:
            raise FailedPrecondition(f"container {container_id} has exited")
        path = os.path.join(ctr.bundle, "resources.json")
        with open(path, "w") as f:
            json.dump(resources, f)
        self._crun.update(container_id, path, ctr.log_path)

    def _prepare_rootfs(self, ctr: Container, source: str, guest_overlay: bool) -> None:
        rootfs = os.path.join(ctr.bundle, "rootfs")
        os.mkdir(rootfs)
        if not guest_overlay:
            self._mount(["--bind", source, rootfs])
            ctr.mounts.append(rootfs)
            return
        # The container may write; the host's directory must not change.
        scratch = os.path.join(ctr.bundle, "scratch")
        os.mkdir(scratch)
        self._mount(["-t", "tmpfs", "-o", "mode=0700", "tmpfs", scratch])
        ctr.mounts.append(scratch)
        os.mkdir(os.path.join(scratch, "upper"))
        os.mkdir(os.path.join(scratch, "work"))
        options = f"lowerdir={source},upperdir={scratch}/upper,workdir={scratch}/work"
        self._mount(["-t", "overlay", "-o", options, "overlay", rootfs])
        ctr.mounts.append(rootfs)

    def _spawn(self, proc: Process, launch: Callable[[Any, str | None], int]) -> int:
        """Run crun with the process's stdio; returns the new process's pid."""
        child = proc.io.child_fds()
        console = proc.io.console_socket_path if proc.io.terminal else None
        try:
            pid = launch(child, console)
        finally:
            child.close()
        if console:
            proc.io.receive_console(timeout=10.0)
        self._table.claim(pid)
        return pid

    # -- lifecycle ------------------------------------------------------

    def start(self, container_id: str) -> None:
        ctr = self.get(container_id)
        with ctr.lock:
            if ctr.init.state != "created":
                raise FailedPrecondition(
                    f"container {container_id} is {ctr.init.state}, not created"
                )
            ctr.init.started_at_ns = time.time_ns()
            try:
                self._crun.start(container_id, ctr.log_path)
            except BaseException:
                ctr.init.started_at_ns = 0
                raise

    def exec(
        self, container_id: str, exec_id: str, process_json: bytes, terminal: bool,
        open_stdin: bool,
    ) -> int:
        _check_id("exec id", exec_id)
        ctr = self.get(container_id)
        try:
            process = json.loads(process_json)
        except ValueError as exc:
            raise InvalidArgument(f"the process is not valid JSON: {exc}") from None
        if not isinstance(process, dict) or not process.get("args"):
            raise InvalidArgument("the process has no args")
        process["terminal"] = terminal
        with ctr.lock:
            if ctr.init.state != "running":
                raise FailedPrecondition(
                    f"container {container_id} is {ctr.init.state}; exec needs it running"
                )
            if exec_id in ctr.execs:
                raise AlreadyExists(f"exec {exec_id!r} already exists in {container_id}")
            proc = Process(container_id, exec_id,
                           ProcessIO(os.path.join(ctr.bundle, f"exec-{exec_id}"), terminal,
                                     open_stdin))
            ctr.execs[exec_id] = proc
        process_file = os.path.join(proc.io.directory, "process.json")
        with open(process_file, "w") as f:
            json.dump(process, f)
        try:
            proc.started_at_ns = time.time_ns()
            proc.pid = self._spawn(
                proc,
                lambda child, console: self._crun.exec(
                    container_id, process_file,
                    os.path.join(proc.io.directory, "pid"), child, console, ctr.log_path,
                ),
            )
        except BaseException:
            with ctr.lock:
                ctr.execs.pop(exec_id, None)
            proc.io.destroy()
            raise
        self._watch(ctr, proc)
        return proc.pid

    def _watch(self, ctr: Container, proc: Process) -> None:
        thread = threading.Thread(
            target=self._await_exit, args=(ctr, proc), daemon=True,
            name=f"wait-{ctr.id}-{proc.exec_id or 'init'}",
        )
        thread.start()

    def _await_exit(self, ctr: Container, proc: Process) -> None:
        info = self._table.wait(proc.pid)
        self._table.release(proc.pid)
        assert info is not None
        if not proc.exec_id:
            proc.oom_killed = cgroups.oom_kills(cgroups.cgroup_dir(ctr.cgroups_path)) > 0
        # Output written just before exit is still in the pipes; let the
        # drains finish so "exited" implies "all output spooled".
        proc.io.join(timeout=5.0)
        proc.exit = info
        proc.done.set()
        event = ExitEvent(ctr.id, proc.exec_id, info, proc.started_at_ns, proc.oom_killed)
        self._events.publish(event)
        log.info("%s%s exited with %d", ctr.id, f"/{proc.exec_id}" if proc.exec_id else "",
                 info.exit_code)

    def signal(self, container_id: str, exec_id: str, signal: int, all_processes: bool) -> None:
        ctr = self.get(container_id)
        proc = ctr.process(exec_id)
        if proc.exit is not None:
            return
        if exec_id:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal)
            return
        if proc.state == "created":
            # crun refuses to signal a created container; it has no user code
            # running yet, so killing its init directly is equivalent.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal)
            return
        try:
            self._crun.kill(container_id, signal, all_processes, ctr.log_path)
        except (CommandFailed, NotFound):
            if proc.exit is None and not proc.done.wait(0.5):
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
        if ctr.init.exit is None and not force:
            raise FailedPrecondition(f"container {container_id} is still {ctr.init.state}")
        self._destroy(ctr, kill=True)

    def _destroy(self, ctr: Container, kill: bool) -> None:
        """Tear a container down completely; used by remove and by failed creates."""
        procs = [ctr.init, *ctr.execs.values()]
        if kill and ctr.init.pid and ctr.init.exit is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ctr.init.pid, 9)
        for proc in procs:
            if proc.pid and not proc.done.wait(KILL_GRACE):
                log.warning("%s/%s did not exit after SIGKILL", ctr.id, proc.exec_id)
        try:
            self._crun.delete(ctr.id, force=True, log_path=None)
        except CommandFailed as exc:
            log.warning("%s", exc)
        for path in reversed(ctr.mounts):
            try:
                self._mount(["-u", path])
            except CommandFailed as exc:
                log.warning("unmount %s: %s", path, exc)
        for proc in procs:
            proc.io.destroy()
        shutil.rmtree(ctr.bundle, ignore_errors=True)
        with self._lock:
            self._containers.pop(ctr.id, None)

    # -- stdio ----------------------------------------------------------

    def read_output(
        self, container_id: str, exec_id: str, stream: int, offset: int, follow: bool,
        keep_going: Callable[[], bool],
    ) -> Iterator[tuple[int, bytes]]:
        proc = self.get(container_id).process(exec_id)
        return proc.io.spool(stream).read_from(offset, follow, keep_going)

    def write_stdin(self, container_id: str, exec_id: str, data: bytes, close: bool) -> None:
        proc = self.get(container_id).process(exec_id)
        try:
            proc.io.write_stdin(data, close)
        except BrokenPipeError as exc:
            raise FailedPrecondition(f"stdin of {container_id}: {exc}") from None

    def resize(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        proc = self.get(container_id).process(exec_id)
        try:
            proc.io.resize(rows, cols)
        except ValueError as exc:
            raise FailedPrecondition(str(exc)) from None

    def stats(self, container_id: str) -> cgroups.CgroupStats:
        if not container_id:
            return cgroups.read_stats(cgroups.cgroup_dir("/vmrt"))
        ctr = self.get(container_id)
        return cgroups.read_stats(cgroups.cgroup_dir(ctr.cgroups_path))
