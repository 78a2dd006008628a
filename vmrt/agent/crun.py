"""A thin driver for the crun OCI runtime.

Every call goes through the process table so the agent, as PID 1, stays the
only reaper. crun's own diagnostics go to a log file per container (JSON
lines) rather than to stderr: stderr of ``crun create`` *is* the container's
stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence

from vmrt.agent.errors import CommandFailed, InvalidArgument, NotFound
from vmrt.agent.proctable import ProcessTable
from vmrt.agent.stdio import ChildStdio

log = logging.getLogger(__name__)

CRUN = "/usr/bin/crun"
# crun's words when the process to run is not there or cannot be run.
_NO_EXECUTABLE = re.compile(r"executable file .* not found|not found in \$PATH|"
                            r"open executable: |"
                            r"exec(ve)? .*(No such file or directory|Permission denied|"
                            r"Exec format error)")
STATE_ROOT = "/run/crun"
TIMEOUT = 60.0


class Crun:
    def __init__(self, table: ProcessTable, binary: str = CRUN, root: str = STATE_ROOT) -> None:
        self._table = table
        self._binary = binary
        self._root = root

    def _global_args(self, log_path: str | None) -> list[str]:
        args = [self._binary, f"--root={self._root}"]
        if log_path:
            args += [f"--log=file:{log_path}", "--log-format=json"]
        return args

    def _check(self, what: str, argv: Sequence[str], log_path: str | None) -> bytes:
        log_start = _size(log_path)
        code, output = self._table.run(argv, timeout=TIMEOUT)
        if code != 0:
            message = (_last_log_message(log_path, log_start)
                       or output.decode(errors="replace").strip())
            # crun's words for "no container of that id".
            if "does not exist" in message and "container" in message:
                raise NotFound(f"crun {what}: {message}")
            raise CommandFailed(f"crun {what} failed (exit {code}): {message}")
        return output

    def create(
        self,
        container_id: str,
        bundle: str,
        stdio: ChildStdio,
        console_socket: str | None,
        log_path: str,
    ) -> int:
        """Create the container; returns the container init's pid."""
        pid_file = os.path.join(bundle, "init.pid")
        argv = [
            *self._global_args(log_path),
            "create",
            f"--bundle={bundle}",
            f"--pid-file={pid_file}",
        ]
        if console_socket:
            argv.append(f"--console-socket={console_socket}")
        argv.append(container_id)
        self._spawn_and_check("create", argv, stdio, log_path)
        return _read_pid(pid_file)

    def exec(
        self,
        container_id: str,
        process_file: str,
        pid_file: str,
        stdio: ChildStdio,
        console_socket: str | None,
        log_path: str,
    ) -> int:
        argv = [
            *self._global_args(log_path),
            "exec",
            "--detach",
            f"--process={process_file}",
            f"--pid-file={pid_file}",
        ]
        if console_socket:
            argv.append(f"--console-socket={console_socket}")
        argv.append(container_id)
        self._spawn_and_check("exec", argv, stdio, log_path)
        return _read_pid(pid_file)

    def _spawn_and_check(
        self, what: str, argv: Sequence[str], stdio: ChildStdio, log_path: str
    ) -> None:
        log_start = _size(log_path)
        pid = self._table.spawn(argv, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr)
        info = self._table.wait(pid, TIMEOUT)
        if info is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            self._table.wait(pid, 5.0)
            self._table.release(pid)
            raise CommandFailed(f"crun {what} did not finish within {TIMEOUT} s")
        self._table.release(pid)
        if info.exit_code != 0:
            message = _last_log_message(log_path, log_start) or "no message in crun's log"
            if _NO_EXECUTABLE.search(message):
                # The caller named a program the container does not have.
                raise InvalidArgument(f"command: {message}")
            raise CommandFailed(f"crun {what} failed (exit {info.exit_code}): {message}")

    def start(self, container_id: str, log_path: str) -> None:
        self._check("start", [*self._global_args(log_path), "start", container_id], log_path)

    def update(self, container_id: str, resources_file: str, log_path: str) -> None:
        try:
            self._check("update", [*self._global_args(log_path), "update",
                                   f"--resources={resources_file}", container_id], log_path)
        except CommandFailed as exc:
            # The container is there (NotFound otherwise): crun refused the values.
            raise InvalidArgument(f"linux: the resources were refused: {exc}") from None

    def kill(self, container_id: str, signal: int, all_processes: bool, log_path: str) -> None:
        argv = [*self._global_args(log_path), "kill"]
        if all_processes:
            argv.append("--all")
        argv += [container_id, str(signal)]
        self._check("kill", argv, log_path)

    def delete(self, container_id: str, force: bool, log_path: str | None) -> None:
        argv = [*self._global_args(log_path), "delete"]
        if force:
            argv.append("--force")
        argv.append(container_id)
        with contextlib.suppress(NotFound):
            self._check("delete", argv, log_path)

    def state(self, container_id: str) -> dict[str, object]:
        output = self._check("state", [*self._global_args(None), "state", container_id], None)
        state: dict[str, object] = json.loads(output)
        return state


def _read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def _size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except FileNotFoundError:
        return 0


def _last_log_message(log_path: str | None, start: int = 0) -> str:
    """The last error crun wrote to its JSON log since byte ``start``, if any."""
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    for line in reversed(lines):
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        if isinstance(entry, dict):
            return str(entry.get("msg", line))
        return line
    return ""
