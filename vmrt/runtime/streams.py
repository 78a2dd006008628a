"""The runtime's side of streaming: exec, attach and port-forward sessions.

These are what the streaming server (``vmrt.streaming``) drives, and what
``ExecSync`` is built on. They know the agent and the records; they know
nothing of WebSocket or SPDY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError, PortStream
from vmrt.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from vmrt.runtime.core import Runtime
from vmrt.runtime.records import ContainerRecord, ContainerState
from vmrt.runtime.sandbox import PodSandbox

log = logging.getLogger(__name__)

EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
MAX_SESSIONS_PER_POD = 128


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass
class ProcessSession:
    """Stdio and exit of one process: an exec, or (attach) a container's main process."""

    live: PodSandbox
    container_id: str
    exec_id: str  # "" for the main process
    tty: bool
    stdin_open: bool
    stdin_once: bool = False
    stdout_offset: int = 0
    stderr_offset: int = 0
    release: Callable[[], None] = lambda: None

    @property
    def is_exec(self) -> bool:
        return bool(self.exec_id)

    async def output(self, stream: pb.Stream) -> AsyncIterator[bytes]:
        """Output from the session's start until the process has exited."""
        offset = self.stdout_offset if stream == pb.STDOUT else self.stderr_offset
        # An exec's output is this session's alone: what it has sent, the
        # guest may forget. The main process's belongs to its log.
        async for chunk in self.live.agent.follow_output(self.container_id, self.exec_id,
                                                         stream, offset,
                                                         trim_sent=self.is_exec):
            yield chunk.data

    async def write_stdin(self, data: bytes, close: bool = False) -> None:
        await self.live.agent.write_stdin(self.container_id, self.exec_id, data, close)

    async def resize(self, rows: int, cols: int) -> None:
        await self.live.agent.resize_tty(self.container_id, self.exec_id, rows, cols)

    async def wait(self) -> int:
        status = await self.live.agent.wait_process(self.container_id, self.exec_id)
        return status.exit_code

    async def close(self) -> None:
        """An exec is killed if it still runs and forgotten; the main process is left be.

        Shielded: this is what runs when the client has gone away, often
        inside a task that is being cancelled.
        """
        self.release()
        if not self.is_exec:
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(self.live.agent.remove_exec(self.container_id, self.exec_id))


class PortConnection:
    """One TCP connection to a port in a pod, through the agent."""

    def __init__(self, stream: PortStream, port: int, release: Callable[[], None]) -> None:
        self._stream = stream
        self.port = port
        self._release = release

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except AgentError as exc:
            raise UnavailableError(exc.details) from None

    async def close_write(self) -> None:
        await self._stream.close_write()

    async def received(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._stream.received():
                yield data
        except AgentError as exc:
            raise UnavailableError(exc.details) from None

    def abort(self) -> None:
        """End the connection (if it has not ended) and give back its slot."""
        self._stream.cancel()
        self._release()


class Slots:
    """Streaming sessions per pod, capped: each holds agent threads in the guest
    (an exec three, a forwarded connection two), and the agent's pool is finite.
    Health checks and container operations must never queue behind them."""

    def __init__(self, limit: int = MAX_SESSIONS_PER_POD) -> None:
        self.limit = limit
        self.used: dict[str, int] = {}

    def take(self, pod_id: str) -> Callable[[], None]:
        if self.used.get(pod_id, 0) >= self.limit:
            raise ResourceExhaustedError(
                f"pod {pod_id[:12]} already has {self.limit} exec, attach and port-forward "
                f"sessions open; close some first")
        self.used[pod_id] = self.used.get(pod_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used[pod_id] -= 1
                if not self.used[pod_id]:
                    del self.used[pod_id]

        return release


class StreamService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.slots = Slots()

    def running_container(self, container_id: str) -> tuple[ContainerRecord, PodSandbox]:
        container = self.rt.container(container_id)
        if container.state != ContainerState.RUNNING:
            raise FailedPreconditionError(
                f"container {container.id} is {container.state}, not running")
        return container, self.rt.ready_sandbox(self.rt.pod(container.pod_id))

    async def start_exec(self, container_id: str, cmd: Sequence[str], tty: bool,
                         stdin: bool) -> ProcessSession:
        if not cmd:
            raise InvalidArgumentError("cmd: is required")
        container, live = self.running_container(container_id)
        meta = container.meta
        process = json.loads(meta.process_json) if meta.process_json else {}
        process["args"] = list(cmd)
        exec_id = secrets.token_hex(8)
        session = ProcessSession(live, container.id, exec_id, tty, stdin,
                                 release=self.slots.take(container.pod_id))
        try:
            await live.agent.exec_process(
                container.id, exec_id, json.dumps(process).encode(),
                pb.StdioOptions(terminal=tty, open_stdin=stdin, acked_output=True))
        except AgentError as exc:
            await session.close()
            if exc.code.name == "INVALID_ARGUMENT":
                raise InvalidArgumentError(
                    f"cmd: {exc.details.removeprefix('command: ')}") from None
            raise
        except BaseException:
            # Failed, or cancelled mid-call: the exec may exist in the guest.
            await session.close()
            raise
        return session

    async def exec_sync(self, container_id: str, cmd: Sequence[str],
                        timeout: int) -> ExecResult:
        if timeout < 0:
            raise InvalidArgumentError(f"timeout: {timeout} is negative")
        session = await self.start_exec(container_id, cmd, tty=False, stdin=False)

        async def collect(stream: pb.Stream) -> bytes:
            data = bytearray()
            async for chunk in session.output(stream):
                data += chunk
                if len(data) > EXEC_OUTPUT_LIMIT:
                    raise InvalidArgumentError(
                        f"cmd: its output exceeds {EXEC_OUTPUT_LIMIT >> 20} MiB")
            return bytes(data)

        async def run() -> ExecResult:
            # A TaskGroup: if one part fails, the others are cancelled too.
            try:
                async with asyncio.TaskGroup() as group:
                    out = group.create_task(collect(pb.STDOUT))
                    err = group.create_task(collect(pb.STDERR))
                    code = group.create_task(session.wait())
            except ExceptionGroup as group_error:
                raise group_error.exceptions[0] from None
            return ExecResult(code.result(), out.result(), err.result())

        try:
            return await asyncio.wait_for(run(), timeout or None)
        except TimeoutError:
            raise DeadlineExceededError(
                f"command {list(cmd)!r} did not finish within {timeout} s") from None
        finally:
            # Timed out, too much output, or the caller went away: the command
            # must not go on running in the guest. Done or not, it is forgotten.
            await session.close()

    async def attach(self, container_id: str) -> ProcessSession:
        """The main process from now on: output already written is in the log, not here."""
        container, live = self.running_container(container_id)
        config = container.config()
        for proc in await live.agent.list_processes():
            if proc.container_id == container.id and not proc.exec_id:
                return ProcessSession(live, container.id, "", config.tty, config.stdin,
                                      config.stdin_once, proc.stdout_size, proc.stderr_size,
                                      release=self.slots.take(container.pod_id))
        raise FailedPreconditionError(f"container {container.id} is gone from its VM")

    async def connect_port(self, pod_id: str, port: int) -> PortConnection:
        """Connect to localhost:PORT in the pod; errors say why, as the agent saw it."""
        if not 0 < port < 65536:
            raise InvalidArgumentError(f"port: {port} is not a port number")
        pod = self.rt.pod(pod_id)
        live = self.rt.ready_sandbox(pod)
        release = self.slots.take(pod.id)
        try:
            stream = await live.agent.connect_port(port)
        except AgentError as exc:
            release()
            raise UnavailableError(exc.details) from None
        except asyncio.InvalidStateError:
            release()
            raise UnavailableError("the connection to the pod's agent ended") from None
        except BaseException:
            release()
            raise
        return PortConnection(stream, port, release)
