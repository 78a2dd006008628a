"""What the agent records of each container and its processes.

One ``Container`` per crun container; its init and every exec are a
``Process`` with spooled stdio and an exit status filled in by the reaper.
An ``ExitEvent`` is published when a process has exited.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from vmrt.agent import cgroups
from vmrt.agent.errors import FailedPrecondition, InvalidArgument, NotFound
from vmrt.agent.proctable import ExitInfo
from vmrt.agent.stdio import ProcessIO


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

    def check_present(self) -> None:
        if self.removed:
            raise NotFound(f"container {self.id!r} not found")

    def check_init(self, state: str, refusal: str) -> None:
        """Under ``lock``: still here, and its main process in ``state`` (else
        FAILED_PRECONDITION, "container ID is STATE" + ``refusal``)."""
        self.check_present()
        if self.init.state != state:
            raise FailedPrecondition(f"container {self.id} is {self.init.state}{refusal}")

    def processes(self) -> list[Process]:
        with self.lock:
            return [self.init, *self.execs.values()]


def check_id(kind: str, value: str) -> None:
    """A container or exec id names a directory: no slashes, no dot names, not too long."""
    if not value or "/" in value or value in (".", "..") or len(value) > 128:
        raise InvalidArgument(f"invalid {kind} {value!r}")
