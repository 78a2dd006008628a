"""Starting a container's processes through crun, and reaping them.

``Launcher.spawn`` runs crun with the process's stdio and claims the new
pid; ``Launcher.watch`` waits for its exit on a thread of its own, records
it on the ``Process`` and publishes an ``ExitEvent``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

from vmrt.agent import cgroups
from vmrt.agent.events import EventBus
from vmrt.agent.model import Container, ExitEvent, Process
from vmrt.agent.proctable import ProcessTable
from vmrt.agent.stdio import ChildStdio

log = logging.getLogger(__name__)

KILL_GRACE = 10.0


def kill(pid: int, signal: int = 9) -> None:
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal)


class Launcher:
    def __init__(self, table: ProcessTable, events: EventBus) -> None:
        self._table = table
        self._events = events

    def spawn(self, proc: Process, launch: Callable[[ChildStdio, str | None], int]) -> int:
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
                kill(pid)
                self._table.wait(pid, KILL_GRACE)
                self._table.release(pid)
                raise
        return pid

    def watch(self, ctr: Container, proc: Process) -> None:
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
