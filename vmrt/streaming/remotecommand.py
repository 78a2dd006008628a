"""Exec and attach sessions, whatever carries them (WebSocket or SPDY).

A transport hands ``serve_process`` a ``CommandIO``: where stdin comes
from, where output goes, terminal sizes, a way to report the final status,
and an event that fires when the client has gone. The status is the
Kubernetes ``metav1.Status`` that remote-command clients read from the
error stream; exit codes other than zero travel in it as kubelet sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError
from vmrt.runtime.streams import ProcessSession, StreamService
from vmrt.streaming.tokens import AttachRequest, ExecRequest

log = logging.getLogger(__name__)

Write = Callable[[bytes], Awaitable[None]]

# The agent takes messages of up to 4 MiB; stdin goes in smaller pieces.
STDIN_CHUNK = 256 * 1024
MAX_RESIZE_MESSAGE = 4096


@dataclass
class CommandIO:
    stdin: AsyncIterator[bytes] | None = None  # ends when the client half-closes
    stdout: Write | None = None
    stderr: Write | None = None
    resize: AsyncIterator[tuple[int, int]] | None = None  # (width, height)
    gone: asyncio.Event = field(default_factory=asyncio.Event)


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def failure_status(message: str, reason: str = "InternalError",
                   code: int = 500) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": reason,
            "code": code}


def exit_status(cmd: Sequence[str], exit_code: int) -> dict[str, Any]:
    if exit_code == 0:
        return success_status()
    status = failure_status(
        f"command terminated with non-zero exit code: error executing command "
        f"{list(cmd)}, exit code {exit_code}", reason="NonZeroExitCode")
    del status["code"]
    status["details"] = {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}
    return status


def encode_status(status: dict[str, Any]) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()


def parse_resize(message: bytes) -> tuple[int, int] | None:
    """{"Width": W, "Height": H} as client-go sends it; None if malformed."""
    if len(message) > MAX_RESIZE_MESSAGE:
        return None
    try:
        return resize_of(json.loads(message))
    except (ValueError, RecursionError):
        return None


def resize_of(value: object) -> tuple[int, int] | None:
    """(width, height) from a decoded size message; None if it is not one."""
    if not isinstance(value, dict):
        return None
    try:
        width, height = int(value["Width"]), int(value["Height"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        return None
    return width, height


async def _pump_output(proc: ProcessSession, stream: pb.Stream, write: Write) -> None:
    async for data in proc.output(stream):
        await write(data)


async def _pump_stdin(proc: ProcessSession, stdin: AsyncIterator[bytes],
                      detached: asyncio.Event) -> None:
    try:
        async for data in stdin:
            for start in range(0, len(data), STDIN_CHUNK):
                await proc.write_stdin(data[start:start + STDIN_CHUNK])
        # The client closed its stdin. An exec sees EOF (a terminal, EOT).
        # As in containerd, an attached client that closes stdin closes the
        # container's stdin only for stdin_once without a terminal, and
        # otherwise detaches.
        if proc.is_exec or (proc.stdin_once and not proc.tty):
            await proc.write_stdin(b"", close=True)
        else:
            detached.set()
    except AgentError as exc:
        # The process is gone or closed its stdin: nothing more to deliver,
        # but the client's input is still read so it never backs up.
        log.debug("stdin of %s/%s: %s", proc.container_id[:12], proc.exec_id, exc)
        await _discard(stdin)


async def _pump_resize(proc: ProcessSession, sizes: AsyncIterator[tuple[int, int]]) -> None:
    async for width, height in sizes:
        try:
            await proc.resize(rows=height, cols=width)
        except AgentError as exc:
            # (A process that has just exited; later sizes may still matter.)
            log.debug("resize of %s/%s: %s", proc.container_id[:12], proc.exec_id, exc)


async def _discard(source: AsyncIterator[Any]) -> None:
    async for _ in source:
        pass


async def serve_process(proc: ProcessSession, io: CommandIO) -> int | None:
    """Connect ``io`` to the process until it exits; its exit code, or None if the client left.

    (An attached client also leaves by closing its stdin; see ``_pump_stdin``.)

    The process's output is delivered completely before this returns. A
    client that goes away takes an exec with it (the exec is killed and
    forgotten); an attached container's main process runs on.
    """
    tasks: list[asyncio.Future[Any]] = []

    def start(work: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        tasks.append(task)
        return task

    detached = asyncio.Event()
    try:
        # Input the process cannot take is still read (and dropped), so that
        # it never backs up the connection it shares with the output.
        if io.stdin is not None:
            start(_pump_stdin(proc, io.stdin, detached) if proc.stdin_open
                  else _discard(io.stdin))
        if io.resize is not None:
            start(_pump_resize(proc, io.resize) if proc.tty else _discard(io.resize))
        outputs = []
        if io.stdout is not None:
            outputs.append(start(_pump_output(proc, pb.STDOUT, io.stdout)))
        if io.stderr is not None and not proc.tty:
            outputs.append(start(_pump_output(proc, pb.STDERR, io.stderr)))
        waiter = start(proc.wait())
        finished = start(asyncio.gather(waiter, *outputs))
        gone = start(io.gone.wait())
        left = start(detached.wait())
        await asyncio.wait({finished, gone, left}, return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            return None
        finished.result()  # the first failure, if any
        return int(waiter.result())
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await proc.close()


async def start_process(service: StreamService,
                        request: ExecRequest | AttachRequest) -> ProcessSession:
    if isinstance(request, ExecRequest):
        return await service.start_exec(request.container_id, request.cmd, tty=request.tty,
                                        stdin=request.stdin)
    return await service.attach(request.container_id)
