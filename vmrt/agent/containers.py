"""Containers and their processes inside the guest.

One ``Container`` per crun container; its init and every exec are a
``Process`` with spooled stdio and an exit status filled in by the reaper.

Locking: the manager's lock guards the id -> container map; each
container's lock is held across create, start, exec admission and remove,
so those never interleave on one container. A container being removed is
marked first and leaves the map at once, so later calls see NOT_FOUND.
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
from vmrt.agent.stdio import ChildStdio, ProcessIO

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
    # Set the moment the reaper has the status: the pid may be reused from
    # then on, so nothing may signal it any more.
    reaped: bool = False
    exit: ExitInfo | None = None
    oom_killed: bool = False
    oom_kills_at_start: int = 0
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
    removed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log_path(self) -> str:
        return os.path.join(self.bundle, "crun.log")

    @property
    def cgroup(self) -> str:
        return cgroups.cgroup_dir(self.cgroups_path)

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        with self.lock:
            try:
                return self.execs[exec_id]
            except KeyError:
                raise NotFound(f"container {self.id} has no exec {exec_id!r}") from None

    def processes(self) -> list[Process]:
        with self.lock:
            return [self.init, *self.execs.values()]


def _check_id(kind: str, value: str) -> None:
    if not value or "/" in value or value in (".", "..") or len(value) > 128:
        raise InvalidArgument(f"invalid {kind} {value!r}")


def _mounts_under(directory: str) -> list[str]:
    prefix = directory.rstrip("/")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


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
        acked_output: bool = True,
    ) -> int:
        _check_id("container id", container_id)
        spec = _parse_spec(spec_json)
        source = os.path.normpath(os.path.join(self._share, share_path.lstrip("/")))
        if not source.startswith(self._share + "/"):
            raise InvalidArgument(f"rootfs path {share_path!r} leaves the sandbox share")
        if not os.path.isdir(source):
            raise InvalidArgument(f"rootfs {share_path!r} is not a directory in the sandbox share")

        bundle = os.path.join(self._base, container_id)
        with self._lock:
            if container_id in self._containers:
                raise AlreadyExists(f"container {container_id!r} already exists")
            self._clear_stale_bundle(bundle)
            # Creates the bundle directory, with the io directory in it.
            io = ProcessIO(os.path.join(bundle, "io"), terminal, open_stdin, acked_output)
            ctr = Container(id=container_id, bundle=bundle, cgroups_path=f"/vmrt/{container_id}",
                            init=Process(container_id, "", io))
            self._containers[container_id] = ctr
        with ctr.lock:
            try:
                self._prepare_rootfs(ctr, source, guest_overlay)
                spec["root"] = {"path": os.path.join(bundle, "rootfs"),
                                "readonly": bool(spec["root"].get("readonly", False))}
                spec["process"]["terminal"] = terminal
                spec["linux"]["cgroupsPath"] = ctr.cgroups_path
                specfix.resolve(spec, self._share, self._pod_ns, self._init_pid,
                                self._ensure_pod_shm)
                with open(os.path.join(bundle, "config.json"), "w") as f:
                    json.dump(spec, f)
                ctr.init.pid = self._spawn(
                    ctr.init,
                    lambda child, console: self._crun.create(
                        container_id, bundle, child, console, ctr.log_path),
                )
            except BaseException:
                ctr.removed = True
                self._destroy(ctr)
                raise
            ctr.init.oom_kills_at_start = cgroups.oom_kills(ctr.cgroup)
            self._watch(ctr, ctr.init)
            return ctr.init.pid

    def _clear_stale_bundle(self, bundle: str) -> None:
        """A bundle left by an earlier attempt whose cleanup failed."""
        if not os.path.exists(bundle):
            return
        if _mounts_under(bundle):
            raise FailedPrecondition(f"{bundle} still has mounts from an earlier container")
        shutil.rmtree(bundle)

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

    def _spawn(self, proc: Process, launch: Callable[[ChildStdio, str | None], int]) -> int:
        """Run crun with the process's stdio; returns the new process's pid."""
        child = proc.io.child_fds()
        console = proc.io.console_socket_path if proc.io.terminal else None
        try:
            pid = launch(child, console)
        finally:
            child.close()
        self._table.claim(pid)
        if console:
            try:
                proc.io.receive_console(timeout=10.0)
            except BaseException:
                # crun already started it; nothing would ever reap or stop it.
                _kill(pid)
                self._table.wait(pid, KILL_GRACE)
                self._table.release(pid)
                raise
        return pid

    # -- lifecycle ------------------------------------------------------

    def _live(self, container_id: str) -> Container:
        ctr = self.get(container_id)
        if ctr.removed:
            raise NotFound(f"container {container_id!r} not found")
        return ctr

    def start(self, container_id: str) -> None:
        ctr = self._live(container_id)
        with ctr.lock:
            if ctr.removed:
                raise NotFound(f"container {container_id!r} not found")
            if ctr.init.state != "created":
                raise FailedPrecondition(
                    f"container {container_id} is {ctr.init.state}, not created")
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
        _check_id("exec id", exec_id)
        ctr = self._live(container_id)
        try:
            process = json.loads(process_json)
        except ValueError as exc:
            raise InvalidArgument(f"the process is not valid JSON: {exc}") from None
        if not isinstance(process, dict) or not process.get("args"):
            raise InvalidArgument("the process has no args")
        process["terminal"] = terminal
        with ctr.lock:
            if ctr.removed:
                raise NotFound(f"container {container_id!r} not found")
            if ctr.init.state != "running":
                raise FailedPrecondition(
                    f"container {container_id} is {ctr.init.state}; exec needs it running")
            if exec_id in ctr.execs:
                raise AlreadyExists(f"exec {exec_id!r} already exists in {container_id}")
            directory = os.path.join(ctr.bundle, f"exec-{exec_id}")
            proc = Process(container_id, exec_id,
                           ProcessIO(directory, terminal, open_stdin, acked_output))
            ctr.execs[exec_id] = proc
            process_file = os.path.join(directory, "process.json")
            try:
                with open(process_file, "w") as f:
                    json.dump(process, f)
                proc.started_at_ns = time.time_ns()
                proc.oom_kills_at_start = cgroups.oom_kills(ctr.cgroup)
                pid_file = os.path.join(directory, "pid")
                proc.pid = self._spawn(
                    proc,
                    lambda child, console: self._crun.exec(
                        container_id, process_file, pid_file, child, console, ctr.log_path),
                )
            except BaseException:
                ctr.execs.pop(exec_id, None)
                proc.io.destroy()
                raise
            self._watch(ctr, proc)
            return proc.pid

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
        proc.reaped = True
        # Like kubelet's OOMKilled: the OOM killer struck the container's
        # cgroup while this process lived (not necessarily this process:
        # a shell's child may be the victim). Earlier kills do not count.
        proc.oom_killed = cgroups.oom_kills(ctr.cgroup) > proc.oom_kills_at_start
        # Output written just before exit is still in the FIFOs; let the
        # drains finish so "exited" implies "all output spooled".
        proc.io.join(timeout=5.0)
        proc.exit = info
        proc.done.set()
        self._events.publish(
            ExitEvent(ctr.id, proc.exec_id, info, proc.started_at_ns, proc.oom_killed))
        log.info("%s%s exited with %d", ctr.id, f"/{proc.exec_id}" if proc.exec_id else "",
                 info.exit_code)

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
            _kill(proc.pid, signal)
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
        _check_id("exec id", exec_id)
        try:
            ctr = self.get(container_id)
        except NotFound:
            return
        with ctr.lock:
            proc = ctr.execs.get(exec_id)
            if proc is None:
                return
            if proc.pid > 0 and not proc.reaped:
                _kill(proc.pid)
            if proc.pid > 0 and not proc.done.wait(KILL_GRACE):
                log.warning("%s/%s did not exit after SIGKILL", ctr.id, exec_id)
                return
            del ctr.execs[exec_id]
        proc.io.destroy()

    def _destroy(self, ctr: Container) -> None:
        """Tear a container down completely (removal, or a create that failed).

        Called with ``ctr.lock`` held and ``ctr.removed`` set.
        """
        procs = [ctr.init, *ctr.execs.values()]
        if ctr.init.pid and not ctr.init.reaped:
            _kill(ctr.init.pid)
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
            except CommandFailed:
                try:
                    self._mount(["-u", "-l", path])
                except CommandFailed as exc:
                    log.warning("unmount %s: %s", path, exc)
        for proc in procs:
            proc.io.destroy()
        left = _mounts_under(ctr.bundle)
        if left:
            # Deleting through a mount would delete what it shows: for a
            # bind of the share, the host's files. Leave the bundle.
            log.error("not deleting %s: still mounted: %s", ctr.bundle, ", ".join(left))
        else:
            shutil.rmtree(ctr.bundle, ignore_errors=True)
        with self._lock:
            if self._containers.get(ctr.id) is ctr:
                del self._containers[ctr.id]

    # -- stdio ----------------------------------------------------------

    def read_output(
        self, container_id: str, exec_id: str, stream: int, offset: int, follow: bool,
        keep_going: Callable[[], bool], trim_sent: bool = False,
    ) -> Iterator[tuple[int, bytes]]:
        spool = self.get(container_id).process(exec_id).io.spool(stream)
        for chunk_offset, data in spool.read_from(offset, follow, keep_going):
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

    def stats(self, container_id: str) -> cgroups.CgroupStats:
        if not container_id:
            return cgroups.read_stats(cgroups.cgroup_dir("/vmrt"))
        return cgroups.read_stats(self.get(container_id).cgroup)


def _kill(pid: int, signal: int = 9) -> None:
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal)


def _parse_spec(spec_json: bytes) -> dict[str, Any]:
    try:
        spec = json.loads(spec_json)
    except ValueError as exc:
        raise InvalidArgument(f"the OCI spec is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise InvalidArgument("the OCI spec has no process object")
    for key in ("root", "linux"):
        spec.setdefault(key, {})
        if not isinstance(spec[key], dict):
            raise InvalidArgument(f"the OCI spec's {key!r} must be an object")
    if not isinstance(spec.get("mounts", []), list):
        raise InvalidArgument("the OCI spec's 'mounts' must be a list")
    return spec
