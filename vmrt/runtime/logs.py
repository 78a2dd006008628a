"""Container logs in the CRI format, fed from the guest's output spools.

Each line is ``<RFC 3339 nano timestamp> <stream> <P|F> <message>``: F ends
a line, P marks a piece of a line longer than MAX_LINE (kubelet joins them).
The pump reads the guest spools from the offsets stored in the container
record, and stores how far it has *written*, so a daemon that restarts
carries on without losing output (it may repeat a fraction of a second of
it if killed between a write and the offset update).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from vmrt import safefs
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import Agent, AgentError

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
OFFSET_SAVE_INTERVAL = 0.2


def timestamp(now_ns: int | None = None) -> str:
    ns = time.time_ns() if now_ns is None else now_ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


class CRILogWriter:
    """Writes both streams of one container into its CRI log file.

    The file is ``relative`` inside the pod's ``log_directory`` and is opened
    from a descriptor of that directory, never through a symlink or ``..``:
    whoever can write in the log directory cannot make vmrtd append to a
    file elsewhere.
    """

    def __init__(self, log_directory: str, relative: str) -> None:
        self.directory = log_directory
        self.relative = relative
        self.path = os.path.join(log_directory, relative)
        self._fd = -1
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.reopen()

    def reopen(self) -> None:
        """Start a new file at ``path`` (after kubelet rotated the old one away)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        parent = os.path.dirname(self.relative)
        if parent:
            safefs.make_dirs(Path(self.directory), parent)
        self._fd = safefs.open_beneath(
            Path(self.directory), self.relative,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            self._fd = -1
            raise safefs.UnsafePathError(f"container log {self.path} is not a regular file")
        os.set_blocking(self._fd, True)

    def write(self, stream: str, data: bytes) -> None:
        """Write every complete line; an unfinished one waits in ``pending``."""
        buffer = self._partial[stream] + data
        out = []
        consumed = 0
        stamp = timestamp().encode()
        tag = stream.encode()
        while True:
            newline = buffer.find(b"\n", consumed)
            if newline < 0 or newline - consumed > MAX_LINE:
                if len(buffer) - consumed <= MAX_LINE:
                    break
                # A line longer than MAX_LINE goes out in P pieces.
                out.append(b"%s %s P %s\n" % (stamp, tag, buffer[consumed:consumed + MAX_LINE]))
                consumed += MAX_LINE
                continue
            out.append(b"%s %s F %s\n" % (stamp, tag, buffer[consumed:newline]))
            consumed = newline + 1
        self._emit(out)
        self._partial[stream] = buffer[consumed:]

    def finish(self, stream: str) -> None:
        """End of stream: a trailing line without a newline is written as a partial
        line (``P``), as containerd does; no newline ever completed it."""
        rest = self._partial[stream]
        if rest:
            self._emit([b"%s %s P %s\n" % (timestamp().encode(), stream.encode(), rest)])
            self._partial[stream] = b""

    def pending(self, stream: str) -> int:
        return len(self._partial[stream])

    def _emit(self, lines: list[bytes]) -> None:
        if lines and self._fd >= 0:
            os.write(self._fd, b"".join(lines))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LogPump:
    """Follows a container's two output streams into its CRI log.

    Every OFFSET_SAVE_INTERVAL it records how far the log file has got and
    then tells the agent it may forget what came before (TrimOutput): the
    guest keeps only output the host does not have yet, and a process that
    writes faster than the host takes it waits instead of filling the VM.
    """

    def __init__(self, agent: Agent, container_id: str, writer: CRILogWriter,
                 offsets: dict[str, int], save: Callable[[dict[str, int]], None]) -> None:
        self._agent = agent
        self._id = container_id
        self.writer = writer
        self.offsets = dict(offsets)
        self._save = save
        self._saved = dict(offsets)
        self._trimmed = {"stdout": 0, "stderr": 0}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"logs-{self._id}")

    async def _run(self) -> None:
        flusher = asyncio.create_task(self._flush_every(OFFSET_SAVE_INTERVAL))
        try:
            await asyncio.gather(self._follow("stdout", pb.STDOUT),
                                 self._follow("stderr", pb.STDERR))
        finally:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
            try:
                self._save(dict(self.offsets))
            except OSError as exc:
                log.warning("log of %s: cannot save its offsets: %s", self._id[:12], exc)

    async def _flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except AgentError as exc:
                if exc.code.name != "NOT_FOUND":
                    log.warning("log of %s: cannot trim the guest's spool: %s",
                                self._id[:12], exc)
            except OSError as exc:  # a full disk: the offsets are saved at a later try
                log.warning("log of %s: cannot save its offsets: %s", self._id[:12], exc)

    async def flush(self) -> None:
        """Record the offsets, then let the guest forget what is in the file."""
        offsets = dict(self.offsets)
        try:
            if offsets != self._saved:
                self._save(offsets)
                self._saved = offsets
        finally:
            # The bytes are in the log file, saved offsets or not: a restart
            # that resumes from older offsets finds them trimmed and skips on.
            await self._trim(offsets)

    async def _trim(self, offsets: dict[str, int]) -> None:
        for name, stream in (("stdout", pb.STDOUT), ("stderr", pb.STDERR)):
            if offsets[name] > self._trimmed[name]:
                await self._agent.trim_output(self._id, stream, offsets[name])
                self._trimmed[name] = offsets[name]

    async def _follow(self, name: str, stream: pb.Stream) -> None:
        # ``offsets`` counts bytes on disk; what sits in the writer's partial
        # buffer is read again after a restart rather than lost.
        read_from = self.offsets[name]
        backoff = 0.5
        while True:
            try:
                async for chunk in self._agent.follow_output(self._id, "", stream, read_from):
                    if chunk.offset < read_from:
                        continue  # the guest repeating itself; offsets only go forward
                    if chunk.offset > read_from:
                        log.warning("log of %s (%s): the guest no longer had bytes %d-%d",
                                    self._id[:12], name, read_from, chunk.offset)
                    self.writer.write(name, chunk.data)
                    read_from = chunk.offset + len(chunk.data)
                    self.offsets[name] = read_from - self.writer.pending(name)
                break
            except AgentError as exc:
                if exc.code.name in ("NOT_FOUND", "CANCELLED"):
                    break  # the container is gone; nothing more will come
                # A broken connection: resume from where the log stands.
                log.warning("log of %s (%s): %s; resuming", self._id[:12], name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self.writer.finish(name)
        self.offsets[name] = read_from

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.writer.close()
