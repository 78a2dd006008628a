"""Running one QEMU process and talking QMP to it.

The QMP and agent sockets are bound *by us* in the sandbox directory and
handed to QEMU as listening fds: nothing races QEMU's start-up, and a
restarted vmrtd can reconnect to the same paths (QEMU's own socketpair
trick cannot be reconnected). Shutdown asks politely (QMP quit), then
sends SIGTERM, then SIGKILL; cleanup always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from pathlib import Path

from qemu.qmp import QMPClient

from vmrt.errors import VmrtError
from vmrt.hypervisor.confine import Jail
from vmrt.hypervisor.console import ConsoleLog, connect_early
from vmrt.hypervisor.console import pump as console_pump
from vmrt.hypervisor.console import reconnect as reconnect_console
from vmrt.hypervisor.spec import VMEndpoints, VMSpec, build_argv

log = logging.getLogger(__name__)

QMP_CONNECT_TIMEOUT = 30.0
CONSOLE_TAIL_LINES = 25
PR_SET_PDEATHSIG = 1


class VMError(VmrtError):
    pass


class VMLaunchFailure(VMError):
    """QEMU did not come up: carries the argv, its exit code and its own words."""

    def __init__(self, message: str, argv: list[str], exitcode: int | None, qemu_output: str,
                 console_tail: str) -> None:
        self.argv = argv
        self.exitcode = exitcode
        self.qemu_output = qemu_output
        self.console_tail = console_tail
        detail = qemu_output.strip().splitlines()
        super().__init__(message + (f": {detail[-1]}" if detail else ""))


class VMDied(VMError):
    """The VM went away while something needed it."""

    def __init__(self, message: str, console_tail: str) -> None:
        self.console_tail = console_tail
        super().__init__(message)


def _die_with_parent() -> None:
    # For the CLI: if vmrt itself is killed, its VM must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (clock ticks since boot); 0 if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    return int(text.rsplit(")", 1)[1].split()[19])


MAX_SOCKET_PATH = 107  # sun_path is 108 bytes, NUL included


def _listen(path: Path) -> socket.socket:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise VMError(f"socket path {path} is {len(os.fsencode(path))} bytes, more than a unix "
                      f"socket allows ({MAX_SOCKET_PATH}); use a shorter state directory")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(4)
    return sock


class QemuVM:
    """One QEMU process, its QMP connection and its files in ``directory``."""

    def __init__(self, spec: VMSpec, directory: Path, name: str,
                 qemu_binary: str = "qemu-system-x86_64", jail: Jail | None = None) -> None:
        self.spec = spec
        self.jail = jail
        self.directory = directory
        self.name = name
        self.qemu_binary = qemu_binary
        self.qmp_path = directory / "qmp.sock"
        self.agent_path = directory / "agent.sock"
        self.console_path = directory / "console.log"
        self.console_socket_path = directory / "console.sock"
        self.console = ConsoleLog(self.console_path)
        self.qemu_log_path = directory / "qemu.log"
        self.pid: int | None = None
        self.exitcode: int | None = None
        self.shutdown_reason: str | None = None
        self.panicked = False
        self.argv: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self._exit_task: asyncio.Task[None] | None = None
        self._console_task: asyncio.Task[None] | None = None
        self._pidfd = -1

    # -- launch ---------------------------------------------------------

    async def launch(self, die_with_parent: bool = False) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        qmp_sock = _listen(self.qmp_path)
        console_sock = _listen(self.console_socket_path)
        agent_sock = None
        console_client = None
        try:
            if self.spec.agent_transport == "serial":
                agent_sock = _listen(self.agent_path)
            console_client = connect_early(self.console_socket_path)
            endpoints = VMEndpoints(
                console_fd=console_sock.fileno(),
                qmp_fd=qmp_sock.fileno(),
                agent_fd=agent_sock.fileno() if agent_sock else None,
            )
            self.argv = build_argv(self.spec, endpoints, self.name, self.qemu_binary)
            self.console_path.touch()
            with self.qemu_log_path.open("wb") as qemu_log:
                try:
                    argv = self.jail.wrap(self.argv) if self.jail else self.argv
                    self._proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log,
                        pass_fds=[s.fileno() for s in (qmp_sock, console_sock, agent_sock) if s]
                        + ([self.spec.net.tap_fd] if self.spec.net and self.spec.net.tap_fd >= 0
                           else [])
                        + ([self.spec.memory.fd] if self.spec.memory else []),
                        start_new_session=True,
                        preexec_fn=_die_with_parent if die_with_parent else None,
                    )
                except OSError as exc:
                    raise VMLaunchFailure(f"cannot start {self.qemu_binary}: {exc.strerror}",
                                          self.argv, None, "", "") from exc
        except BaseException:
            if console_client is not None:
                console_client.close()
            raise
        finally:
            # QEMU has its own copies now; ours would keep the sockets alive
            # after QEMU dies and hide the death from clients.
            for sock in (qmp_sock, console_sock, agent_sock):
                if sock is not None:
                    sock.close()
        self.pid = self._proc.pid
        self._console_task = asyncio.create_task(console_pump(console_client, self.console))
        self._exit_task = asyncio.create_task(self._watch_exit())
        try:
            await self._connect_qmp()
        except BaseException:
            await self.kill()
            raise

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        self.exitcode = await self._proc.wait()
        self._exited.set()

    @classmethod
    async def adopt(cls, spec: VMSpec, directory: Path, name: str, pid: int,
                    start_time: int) -> QemuVM:
        """Take over a QEMU started by an earlier vmrtd (after a daemon restart).

        ``start_time`` (from /proc/PID/stat) guards against a recycled pid.
        The process is not our child: its exit is watched through a pidfd
        and its exit code is unknown.
        """
        vm = cls(spec, directory, name)
        if process_start_time(pid) != start_time:
            raise VMError(f"{name}: QEMU (pid {pid}) is no longer running")
        vm.pid = pid
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise VMError(f"{name}: QEMU (pid {pid}) is no longer running") from None
        vm._pidfd = pidfd
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(pidfd)
            vm._exited.set()

        loop.add_reader(pidfd, exited)
        try:
            await vm._connect_qmp()
        except BaseException:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            raise
        client = await reconnect_console(vm.console_socket_path)
        if client is not None:
            vm._console_task = asyncio.create_task(console_pump(client, vm.console))
        return vm

    async def _connect_qmp(self) -> None:
        qmp = QMPClient(self.name)
        connect = asyncio.create_task(qmp.connect(str(self.qmp_path)))
        exited = asyncio.create_task(self._exited.wait())
        done, _ = await asyncio.wait({connect, exited}, timeout=QMP_CONNECT_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if connect in done and connect.exception() is None:
            exited.cancel()
            self._qmp = qmp
            self._events_task = asyncio.create_task(self._watch_events(qmp))
            return
        connect.cancel()
        exited.cancel()
        with contextlib.suppress(BaseException):
            await connect
        if not self._exited.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._exited.wait(), 2.0)
        await self.console_drained()
        raise self.launch_failure("QEMU failed to start")

    def launch_failure(self, message: str) -> VMLaunchFailure:
        output = self.qemu_output()
        if self.exitcode is not None and self.exitcode < 0:
            message += f" (killed by signal {-self.exitcode})"
        elif self.exitcode is not None:
            message += f" (exit code {self.exitcode})"
        return VMLaunchFailure(message, self.argv, self.exitcode, output, self.console_tail())

    async def _watch_events(self, qmp: QMPClient) -> None:
        with contextlib.suppress(Exception):
            async for event in qmp.events:
                name = event["event"]
                data = event.get("data", {})
                assert isinstance(data, dict)
                if name == "SHUTDOWN":
                    self.shutdown_reason = str(data.get("reason", "unknown"))
                elif name == "GUEST_PANICKED":
                    self.panicked = True
                log.debug("%s: QMP event %s %s", self.name, name, data)

    # -- state ----------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self._exited.is_set()

    @property
    def start_time(self) -> int:
        return process_start_time(self.pid) if self.pid else 0

    async def wait_exit(self) -> int | None:
        await self._exited.wait()
        return self.exitcode

    def qemu_output(self) -> str:
        try:
            return self.qemu_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return self.console.tail(lines)

    async def console_drained(self, timeout: float = 2.0) -> None:
        """Once QEMU is gone: wait (briefly) until its last console output is on disk."""
        if self._console_task is not None and not self.alive:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._console_task), timeout)

    def death_message(self) -> str:
        """One line on how the VM ended, for errors."""
        if self.exitcode is not None and self.exitcode < 0:
            how = f"QEMU was killed by signal {-self.exitcode}"
        elif self.shutdown_reason:
            how = f"the guest shut down ({self.shutdown_reason})"
        elif self.exitcode is not None:
            how = f"QEMU exited with code {self.exitcode}"
        else:
            how = "QEMU is gone"
        if self.panicked or "Kernel panic" in self.console_tail(60):
            how += "; the guest kernel panicked"
        return how

    # -- saved state (templates) ---------------------------------------

    async def _migration_setup(self, fd: int, name: str) -> None:
        qmp = self._require_qmp()
        # RAM in a shared file is not in the stream: it is the file.
        await qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": True}]})
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": name})

    async def _migration_done(self, timeout: float) -> dict[str, object]:
        qmp = self._require_qmp()
        deadline = time.monotonic() + timeout
        while True:
            info = await qmp.execute("query-migrate")
            assert isinstance(info, dict)
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise VMError(f"{self.name}: migration {status}: "
                              f"{info.get('error-desc', 'no reason given')}")
            if not self.alive:
                raise VMError(f"{self.name}: QEMU exited during the migration")
            if time.monotonic() > deadline:
                raise VMError(f"{self.name}: the migration did not finish in {timeout:.0f} s")
            await asyncio.sleep(0.005)

    async def save_state(self, fd: int, timeout: float = 60.0) -> None:
        """Pause the guest and write its device state to ``fd`` (the RAM is
        the shared file it runs in). The VM stays paused."""
        qmp = self._require_qmp()
        await qmp.execute("stop")
        await self._migration_setup(fd, "state")
        await qmp.execute("migrate-set-parameters", {"max-bandwidth": 8 << 30})
        await qmp.execute("migrate", {"uri": "fd:state"})
        await self._migration_done(timeout)

    async def restore_state(self, fd: int, timeout: float = 60.0) -> None:
        """Load a saved state from ``fd`` into a VM started with ``incoming``,
        then run it."""
        qmp = self._require_qmp()
        await self._migration_setup(fd, "state")
        await qmp.execute("migrate-incoming", {"uri": "fd:state"})
        await self._migration_done(timeout)
        await qmp.execute("cont")

    # -- size -------------------------------------------------------------

    async def balloon(self, target_bytes: int, timeout: float = 15.0) -> int:
        """Ask the guest, through its virtio-balloon, to hold ``target_bytes``
        of RAM (never more than it booted with), and wait until it does or
        ``timeout`` passes; returns what it holds then. The guest may be slow
        or refuse (it is the guest's driver that gives pages back)."""
        qmp = self._require_qmp()
        await qmp.execute("balloon", {"value": target_bytes})
        deadline = time.monotonic() + timeout
        while True:
            info = await qmp.execute("query-balloon")
            assert isinstance(info, dict)
            actual = int(info.get("actual", 0))
            # The driver moves in pages of 4 KiB, in batches: 1 MiB is there.
            if abs(actual - target_bytes) < 1 << 20 or time.monotonic() > deadline:
                return actual
            await asyncio.sleep(0.1)

    def _require_qmp(self) -> QMPClient:
        if self._qmp is None:
            raise VMError(f"{self.name}: no QMP connection")
        return self._qmp

    # -- shutdown -------------------------------------------------------

    async def shutdown(self, timeout: float = 5.0) -> None:
        """QMP quit, then SIGTERM, then SIGKILL; always cleans up."""
        try:
            if self.alive and self._qmp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._qmp.execute("quit"), timeout)
                await self._wait(timeout)
            if self.alive:
                self._signal(signal.SIGTERM)
                await self._wait(timeout)
            if self.alive:
                self._signal(signal.SIGKILL)
                await self._wait(None)
        finally:
            await self._cleanup()

    async def kill(self) -> None:
        if self.alive:
            self._signal(signal.SIGKILL)
            await self._wait(None)
        await self._cleanup()

    def _signal(self, signo: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._proc is not None:
                self._proc.send_signal(signo)
            elif self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, signo)

    async def _wait(self, timeout: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited.wait()), timeout)

    async def _drop_qmp(self) -> None:
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await self._qmp.disconnect()
            self._qmp = None
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(BaseException):
                await self._events_task
            self._events_task = None

    async def _stop_console(self) -> None:
        if self._console_task is not None:
            await self.console_drained()
            self._console_task.cancel()
            with contextlib.suppress(BaseException):
                await self._console_task
            self._console_task = None

    async def _cleanup(self) -> None:
        await self._drop_qmp()
        await self._stop_console()
        for path in (self.qmp_path, self.agent_path, self.console_socket_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._pidfd >= 0 and not self.alive:
            os.close(self._pidfd)
            self._pidfd = -1

    async def detach(self) -> None:
        """Let go of a running VM without stopping it (vmrtd is shutting down)."""
        await self._drop_qmp()
        await self._stop_console()
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

