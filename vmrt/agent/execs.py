"""Exec processes in a running container: admitting, starting and removing them.

Each exec gets a directory ``exec-<id>`` in the container's bundle for its
process.json, pid file and stdio. The caller has checked the exec id and
that the container is live; the container's lock is taken here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from vmrt.agent import cgroups
from vmrt.agent.crun import Crun
from vmrt.agent.errors import AlreadyExists, InvalidArgument
from vmrt.agent.launch import KILL_GRACE, Launcher, kill
from vmrt.agent.model import Container, Process
from vmrt.agent.stdio import ProcessIO

log = logging.getLogger(__name__)


def parse_process(process_json: bytes, terminal: bool) -> dict[str, Any]:
    """The OCI process object of an exec, with its terminal setting applied."""
    try:
        process = json.loads(process_json)
    except ValueError as exc:
        raise InvalidArgument(f"the process is not valid JSON: {exc}") from None
    if not isinstance(process, dict) or not process.get("args"):
        raise InvalidArgument("the process has no args")
    process["terminal"] = terminal
    return process


def start(
    ctr: Container, exec_id: str, process: dict[str, Any], terminal: bool, open_stdin: bool,
    acked_output: bool, crun: Crun, launcher: Launcher,
) -> int:
    """Start ``process`` in ``ctr`` as exec ``exec_id``; returns its pid."""
    container_id = ctr.id
    with ctr.lock:
        ctr.check_init("running", "; exec needs it running")
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
            proc.pid = launcher.spawn(
                proc,
                lambda child, console: crun.exec(
                    container_id, process_file, pid_file, child, console, ctr.log_path),
            )
        except BaseException:
            ctr.execs.pop(exec_id, None)
            proc.io.destroy()
            raise
        launcher.watch(ctr, proc)
        return proc.pid


def remove(ctr: Container, exec_id: str) -> None:
    """Kill the exec if it still runs and forget it, once it has exited."""
    with ctr.lock:
        proc = ctr.execs.get(exec_id)
        if proc is None:
            return
        if proc.pid > 0 and not proc.reaped:
            kill(proc.pid)
        if proc.pid > 0 and not proc.done.wait(KILL_GRACE):
            log.warning("%s/%s did not exit after SIGKILL", ctr.id, exec_id)
            return
        del ctr.execs[exec_id]
    proc.io.destroy()
