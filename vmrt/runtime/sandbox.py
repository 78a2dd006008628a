"""``PodSandbox``: one ready pod's running parts, and the only code that drives them.

It owns the sandbox (a ``vmrt.sandbox.driver.Sandbox``: the VM, its agent
and share), the log pumps of its containers, the tasks that follow the
agent's events and the VM's death, and the lock that orders operations on
the pod. What it learns it reports to its ``Ledger`` (the runtime, which
keeps the records); it never changes a record itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import Protocol

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import Agent, AgentError
from vmrt.errors import FailedPreconditionError
from vmrt.runtime.logs import CRILogWriter, LogPump
from vmrt.runtime.records import ContainerRecord, ContainerState, PodRecord, is_object_id
from vmrt.sandbox.driver import Sandbox, Share

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
PUMP_DRAIN_TIMEOUT = 10.0
# The watchdog: while the connection is up (kept honest by keepalive pings)
# nothing is sent; once it is down, Health probes of the VM's
# watchdog_probe_timeout_s, and watchdog_probes failed ones in a row while
# QEMU runs make the guest dead. With the defaults a hung guest is declared
# dead about a minute after it stopped: keepalive (10 s) and its PING
# timeout (20 s), then three missed probes of 10 s (handler settings).
WATCHDOG_INTERVAL = 2.0
MAX_SWEEP = 256
# Stats of one container (or the pod, "") asked again within this long are
# the last answer, with its own timestamp: kubelet asks ListPodSandboxStats
# and ListContainerStats for the same containers moments apart, and each
# guest answer costs an idle guest a wake-up under TCG.
STATS_TTL = 2.0


class Ledger(Protocol):
    """What a pod sandbox tells the runtime, and asks it."""

    def containers_of(self, pod_id: str) -> list[ContainerRecord]: ...

    def find_container(self, container_id: str) -> ContainerRecord | None: ...

    def container_exited(self, container: ContainerRecord, exit_code: int, finished_at: int,
                         oom_killed: bool = False, message: str = "") -> None: ...

    def save_offsets(self, container: ContainerRecord, stdout: int, stderr: int) -> None: ...

    async def sandbox_lost(self, sandbox: PodSandbox, message: str) -> None: ...


class PodSandbox:
    def __init__(self, record: PodRecord, vm: Sandbox, ledger: Ledger) -> None:
        self.record = record
        self.vm = vm
        self.ledger = ledger
        self._usage: dict[str, tuple[float, pb.ContainerStatsResponse]] = {}
        # Orders CreateContainer, StopPodSandbox and the VM's death.
        self.lock = asyncio.Lock()
        self._pumps: dict[str, LogPump] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._exits: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._warnings = 0

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def agent(self) -> Agent:
        agent = self.vm.agent
        if agent is None:
            raise FailedPreconditionError(f"pod {self.id} has no agent connection")
        return agent

    @property
    def share(self) -> Share:
        return self.vm.share

    @property
    def stopping(self) -> bool:
        """Being stopped (or gone): no new work, and its VM's end is expected."""
        return self._stopping

    def warn_once(self, problem: str) -> None:
        """Log what the guest did wrong, without letting a guest flood the log."""
        self._warnings += 1
        if self._warnings <= 10 or self._warnings % 1000 == 0:
            log.warning("pod %s: %s (%d such warnings)", self.id[:12], problem, self._warnings)

    # -- following the guest ------------------------------------------------

    def watch(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow_events(), name=f"events-{self.id}"))
        self._tasks.append(asyncio.create_task(self._watch_vm(), name=f"vm-{self.id}"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name=f"watchdog-{self.id}"))

    async def _follow_events(self) -> None:
        """Container exits from the agent, for as long as the VM lives."""
        backoff = 0.5
        while self.vm.alive:
            try:
                async for event in self.agent.events():
                    backoff = 0.5
                    if not event.exec_id and event.kind == pb.Event.EXIT:
                        self._exited(event.container_id, event.exit)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event stream of pod %s broke (%s); resubscribing",
                            self.id[:12], exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            # Exits that happened while the stream was down.
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod %s: cannot reconcile containers: %s", self.id[:12], exc)

    def _exited(self, container_id: str, status: pb.ExitStatus) -> None:
        """Recorded once the log holds all the container wrote (or the drain
        timed out), as containerd waits for a task's I/O: whoever sees EXITED
        can read the whole log. The wait is a task of its own, so that one
        container's slow log holds up neither the pod's other events nor a
        stop, which cancels it (a stop records exits itself)."""
        container = self.ledger.find_container(container_id)
        # A guest speaks for its own pod only: an id of another pod's
        # container (or none at all) is a lie or a bug.
        if container is None or container.pod_id != self.id:
            self.warn_once(f"its agent reported an exit of container {container_id[:64]!r}, "
                           "which is not in this pod; ignored")
            return

        async def record() -> None:
            await self.drain_log(container.id)
            if not self._stopping:
                self.ledger.container_exited(container, status.exit_code,
                                             sane_time(status.finished_at_ns),
                                             status.oom_killed)

        task = asyncio.create_task(record(), name=f"exit-{container.id}")
        self._exits.add(task)
        task.add_done_callback(self._exits.discard)

    async def reconcile(self) -> None:
        """Bring container records in line with what the agent knows."""
        processes = await self.agent.list_processes()
        known = {p.container_id: p for p in processes if not p.exec_id}
        for container in self.ledger.containers_of(self.id):
            proc = known.get(container.id)
            if container.state == ContainerState.EXITED or container.meta.start_error:
                continue  # a container that cannot start is not in the guest
            if proc is None:
                self.ledger.container_exited(container, 255, time.time_ns(),
                                             message="the container is gone from the VM")
            elif proc.state == pb.ProcessInfo.EXITED:
                self.ledger.container_exited(container, proc.exit.exit_code,
                                             sane_time(proc.exit.finished_at_ns),
                                             proc.exit.oom_killed)

    async def sweep_unclaimed(self) -> list[str]:
        """Remove the containers the guest has and no record claims: what a
        vmrtd that died in the middle of a CreateContainer left. Only while
        nothing creates containers in this pod (recovery)."""
        claimed = {c.id for c in self.ledger.containers_of(self.id)}
        swept: list[str] = []
        for proc in await self.agent.list_processes():
            if proc.exec_id or proc.container_id in claimed or proc.container_id in swept:
                continue
            if len(swept) >= MAX_SWEEP:
                self.warn_once("its agent lists more unclaimed containers than vmrt sweeps")
                break
            with contextlib.suppress(AgentError):
                await self.agent.remove_container(proc.container_id, force=True)
            if is_object_id(proc.container_id):  # one of ours: its share entry too
                self.share.release(proc.container_id)
            swept.append(proc.container_id)
        if swept:
            log.warning("pod %s: removed %d container(s) that no record claims: %s",
                        self.id[:12], len(swept), ", ".join(c[:12] for c in swept[:10]))
        return swept

    async def usage(self, container_id: str) -> pb.ContainerStatsResponse:
        """The agent's stats of a container ("": the whole pod), at most
        STATS_TTL old."""
        now = time.monotonic()
        cached = self._usage.get(container_id)
        if cached is not None and now - cached[0] < STATS_TTL:
            return cached[1]
        reply = await self.agent.container_stats(container_id)
        # Only fresh answers are kept (a removed container's goes with time).
        self._usage = {k: v for k, v in self._usage.items() if now - v[0] < STATS_TTL}
        self._usage[container_id] = (now, reply)
        return reply

    async def _watchdog(self) -> None:
        """A guest that stops answering (hung kernel, stopped QEMU, dead agent)
        is declared dead: NOTREADY is final for a sandbox, so only after
        several misses on a generous deadline."""
        misses = 0
        probe_timeout = self.vm.config.watchdog_probe_timeout_s
        probes = self.vm.config.watchdog_probes
        while self.vm.alive:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            agent = self.vm.agent
            if agent is None or agent.connected():
                misses = 0
                continue
            try:
                await agent.probe(probe_timeout)
                misses = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                misses += 1
                log.warning("pod %s: its agent did not answer (%d of %d): %s", self.id[:12],
                            misses, probes, exc)
            if misses >= probes:
                if self.vm.alive:  # else its death is _watch_vm's to report
                    await self._lost(f"the guest stopped answering: its agent missed {misses} "
                                     f"health checks of {probe_timeout:g} s in a row")
                return

    async def _watch_vm(self) -> None:
        await self.vm.wait_gone()
        await self._lost(f"the pod's VM exited: {self.vm.death_message()}")

    async def _lost(self, message: str) -> None:
        """The sandbox is gone, unless a stop got there first (its end was expected)."""
        async with self.lock:
            if not self._stopping:
                log.error("pod %s: %s", self.id, message)
                await self.ledger.sandbox_lost(self, message)

    # -- logs -----------------------------------------------------------------

    def start_log_pump(self, container: ContainerRecord) -> None:
        if container.id in self._pumps or not container.log_path:
            return
        status = container.status
        offsets = {"stdout": status.stdout_offset, "stderr": status.stderr_offset}

        def save(offsets: dict[str, int]) -> None:
            self.ledger.save_offsets(container, offsets["stdout"], offsets["stderr"])

        log_directory = self.record.config().log_directory
        relative = os.path.relpath(container.log_path, log_directory) if log_directory else ""
        if not log_directory or relative.startswith(".."):
            log.error("container %s: log path %s is outside its pod's log directory; no log",
                      container.id[:12], container.log_path)
            return
        pump = LogPump(self.agent, container.id, CRILogWriter(log_directory, relative),
                       offsets, save)
        self._pumps[container.id] = pump
        pump.start()

    def reopen_log(self, container_id: str) -> None:
        pump = self._pumps.get(container_id)
        if pump is None:
            raise FailedPreconditionError(f"container {container_id} has no log file")
        pump.writer.reopen()

    async def drain_log(self, container_id: str, timeout: float = PUMP_DRAIN_TIMEOUT) -> None:
        """Until the log has all the container wrote (it has exited), or ``timeout``."""
        pump = self._pumps.get(container_id)
        if pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump.wait(), timeout)

    async def drop_log(self, container_id: str) -> None:
        pump = self._pumps.pop(container_id, None)
        if pump is not None:
            await pump.stop()

    async def _stop_pumps(self) -> None:
        for pump in self._pumps.values():
            await pump.stop()

    # -- containers -----------------------------------------------------------

    async def kill_containers(self, containers: Iterable[ContainerRecord]) -> None:
        """SIGKILL every process of these containers, wait for them, drain their logs."""
        containers = list(containers)
        for container in containers:
            with contextlib.suppress(Exception):
                await self.agent.signal_process(container.id, 9, all_processes=True,
                                                timeout=STOP_TIMEOUT)
        for container in containers:
            with contextlib.suppress(Exception):
                status = await self.agent.wait_process(container.id, timeout=STOP_TIMEOUT)
                self.ledger.container_exited(container, status.exit_code,
                                             status.finished_at_ns, status.oom_killed)
        for container in containers:
            await self.drain_log(container.id, timeout=STOP_TIMEOUT)

    # -- the end --------------------------------------------------------------

    async def _quiesce(self) -> None:
        """No more watching or log writing (the caller holds the lock or is the watcher)."""
        self._stopping = True
        await self._stop_pumps()
        current = asyncio.current_task()
        others = [t for t in [*self._tasks, *self._exits] if t is not current]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()

    def begin_stop(self) -> None:
        """The pod is being stopped: its VM's end is expected from now on."""
        self._stopping = True

    async def destroy(self) -> None:
        """Stop watching, close the logs, and end the VM with everything of it on the host."""
        await self._quiesce()
        await self.vm.destroy()

    async def detach(self) -> None:
        """vmrtd is stopping: save log offsets and let go of the VM, leaving it running."""
        await self._quiesce()
        await self.vm.detach()


def sane_time(ns: int) -> int:
    """A guest's timestamp, or now when it is not a plausible one."""
    now = time.time_ns()
    return ns if 0 < ns <= now + 86_400 * 10**9 else now
