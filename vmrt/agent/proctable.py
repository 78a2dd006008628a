"""Spawning processes and collecting their exit statuses.

The agent is PID 1 (or a child subreaper), so orphans of crun -- every
container init and detached exec -- become its children. A single reaper
thread calls ``waitpid(-1)`` and files every status in one table. Anything
that wants a particular child's status *claims* its pid in the same table;
a status that arrives before its claim is kept until claimed, so a process
that exits instantly is never lost.

Nothing here may use ``subprocess.Popen.wait``: the reaper would steal the
status from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vmrt.agent import slack

log = logging.getLogger(__name__)


@dataclass
class ExitInfo:
    exit_code: int
    signal: int
    finished_at_ns: int

    @classmethod
    def from_wait_status(cls, status: int) -> ExitInfo:
        now = time.time_ns()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return cls(exit_code=128 + sig, signal=sig, finished_at_ns=now)
        return cls(exit_code=os.waitstatus_to_exitcode(status), signal=0, finished_at_ns=now)


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    info: ExitInfo | None = None


class ProcessTable:
    """Owns every child of this process. Thread-safe."""

    # Statuses nobody claimed are dropped after this many, oldest first:
    # orphans we never heard of (for example a container's grandchildren
    # re-parented to us) must not grow the table without bound.
    MAX_UNCLAIMED = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._have_children = threading.Condition(self._lock)
        self._waiters: dict[int, _Waiter] = {}
        self._unclaimed: dict[int, ExitInfo] = {}
        self._reaper: threading.Thread | None = None

    def start(self) -> None:
        self._reaper = threading.Thread(target=self._reap_forever, name="reaper", daemon=True)
        self._reaper.start()

    # -- claiming -------------------------------------------------------

    def claim(self, pid: int) -> _Waiter:
        """Register interest in ``pid``'s exit; safe even if it already exited."""
        with self._lock:
            return self._claim_locked(pid)

    def _claim_locked(self, pid: int) -> _Waiter:
        waiter = self._waiters.get(pid)
        if waiter is None:
            waiter = _Waiter()
            self._waiters[pid] = waiter
            info = self._unclaimed.pop(pid, None)
            if info is not None:
                self._finish(pid, waiter, info)
        self._have_children.notify_all()
        return waiter

    def wait(self, pid: int, timeout: float | None = None) -> ExitInfo | None:
        waiter = self.claim(pid)
        if not waiter.event.wait(timeout):
            return None
        return waiter.info

    def release(self, pid: int) -> None:
        with self._lock:
            self._waiters.pop(pid, None)

    # -- spawning -------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        env: Mapping[str, str] | None = None,
        setsid: bool = False,
    ) -> int:
        """Start ``argv`` with the given fds as its stdio; returns the pid, already claimed."""
        actions = [
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        # Holding the lock across the spawn means the reaper cannot file the
        # status as unclaimed between the fork and the claim.
        with self._lock, slack.default_for_children():
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                dict(env if env is not None else os.environ),
                file_actions=actions,
                setsid=setsid,
            )
            # The reaper could not have filed this child's status yet (we
            # hold the lock), so anything filed under its pid belongs to an
            # earlier process that had the same pid.
            self._unclaimed.pop(pid, None)
            self._claim_locked(pid)
        return pid

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """Run a short command to completion; returns (exit code, stdout+stderr).

        Output goes to an anonymous file, not a pipe, so a grandchild that
        inherits it (crun's container init does) can never block us.
        """
        out_fd = os.memfd_create("vmrt-run-output")
        null_fd = os.open(os.devnull, os.O_RDONLY) if stdin is None else -1
        try:
            pid = self.spawn(
                argv,
                stdin=stdin if stdin is not None else null_fd,
                stdout=out_fd,
                stderr=out_fd,
            )
            info = self.wait(pid, timeout)
            if info is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                info = self.wait(pid)
                assert info is not None
                self.release(pid)
                raise TimeoutError(f"{argv[0]} did not finish within {timeout} s")
            self.release(pid)
            size = os.fstat(out_fd).st_size
            output = os.pread(out_fd, size, 0) if size else b""
            return info.exit_code, output
        finally:
            os.close(out_fd)
            if null_fd >= 0:
                os.close(null_fd)

    # -- reaping --------------------------------------------------------

    def _reap_forever(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # No children right now; sleep until a spawn or claim says
                # there may be some. The timeout covers orphans that arrive
                # without either.
                with self._lock:
                    self._have_children.wait(timeout=0.5)
                continue
            except InterruptedError:
                continue
            self._record(pid, ExitInfo.from_wait_status(status))

    def _record(self, pid: int, info: ExitInfo) -> None:
        with self._lock:
            waiter = self._waiters.get(pid)
            if waiter is not None:
                self._finish(pid, waiter, info)
                return
            self._unclaimed[pid] = info
            while len(self._unclaimed) > self.MAX_UNCLAIMED:
                self._unclaimed.pop(next(iter(self._unclaimed)))

    @staticmethod
    def _finish(pid: int, waiter: _Waiter, info: ExitInfo) -> None:
        if waiter.info is None:
            waiter.info = info
            waiter.event.set()
            log.debug("pid %d exited: code %d", pid, info.exit_code)
