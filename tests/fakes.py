"""In-memory stand-ins for the sandbox driver, the agent and the pod network.

They implement the same Protocols as the real parts (``vmrt.sandbox.driver``,
``vmrt.agentapi``, ``vmrt.network.pod.Networking``), so the runtime's logic
(rollback, recovery, state changes) runs unchanged and in milliseconds.
Every call is written to one shared ``Journal``, so a test can assert the
exact order of steps and of their undoing; ``Journal.fail_at`` makes a
named step raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as api

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import AgentError
from vmrt.guest.image import GuestImage
from vmrt.hypervisor.spec import NetSpec
from vmrt.network.cni import NetworkConfig, PodNetworkArgs
from vmrt.network.link import GuestInterface
from vmrt.network.pod import PodNetworkState, PodNIC, PreparedNetwork
from vmrt.sandbox.settings import VMConfig


class StepFailed(Exception):
    """What a step named in ``Journal.fail_at`` raises."""


class Journal:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.fail_at: dict[str, BaseException] = {}

    def __call__(self, step: str) -> None:
        self.steps.append(step)
        failure = self.fail_at.pop(step, None)
        if failure is not None:
            raise failure

    def after(self, step: str) -> list[str]:
        """The steps after the first ``step`` (what happened once it was reached)."""
        return self.steps[self.steps.index(step) + 1:]


# -- the agent ----------------------------------------------------------------

class FakeAgent:
    def __init__(self, journal: Journal) -> None:
        self.j = journal
        self.processes: dict[str, pb.ProcessInfo] = {}
        self.exits: asyncio.Queue[pb.Event] = asyncio.Queue()
        self.closed = False
        self.hung = False  # a guest that stopped answering

    async def close(self) -> None:
        self.closed = True

    def connected(self) -> bool:
        return not self.hung

    async def probe(self, timeout: float) -> pb.HealthResponse:
        if self.hung:
            await asyncio.sleep(timeout)
            raise AgentError("Health", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return pb.HealthResponse(agent_version="fake")

    async def wait_ready(self, timeout: float, vm_exited: Awaitable[object]) -> pb.HealthResponse:
        return pb.HealthResponse(agent_version="fake")

    async def wait_connected(self, timeout: float, vm_exited: Awaitable[object]) -> None:
        pass

    async def setup_sandbox(self, request: pb.SetupSandboxRequest) -> pb.SetupSandboxResponse:
        self.j("agent.setup_sandbox")
        return pb.SetupSandboxResponse()

    async def set_clock(self, host_time_ns: int) -> None:
        self.j("agent.set_clock")

    async def configure_network(self, request: pb.ConfigureNetworkRequest) -> None:
        self.j("agent.configure_network")

    async def create_container(self, container_id: str, oci_spec: bytes, rootfs: pb.Rootfs,
                               stdio: pb.StdioOptions) -> None:
        self.j("agent.create_container")
        self.processes[container_id] = pb.ProcessInfo(container_id=container_id,
                                                      state=pb.ProcessInfo.CREATED)

    async def start_container(self, container_id: str) -> None:
        self.j("agent.start_container")
        self._process(container_id).state = pb.ProcessInfo.RUNNING

    async def exec_process(self, container_id: str, exec_id: str, process: bytes,
                           stdio: pb.StdioOptions) -> None:
        self.j("agent.exec_process")

    async def signal_process(self, container_id: str, signal: int, *, exec_id: str = "",
                             all_processes: bool = False,
                             timeout: float | None = 60.0) -> None:
        self.j(f"agent.signal_process {signal}")
        self.exit(container_id, 128 + signal)

    async def wait_process(self, container_id: str, exec_id: str = "",
                           timeout: float | None = None) -> pb.ExitStatus:
        self.j("agent.wait_process")
        proc = self._process(container_id)
        return proc.exit

    async def remove_container(self, container_id: str, force: bool = False) -> None:
        self.j("agent.remove_container")
        self.processes.pop(container_id, None)

    async def remove_exec(self, container_id: str, exec_id: str) -> None:
        self.j("agent.remove_exec")

    async def update_container(self, container_id: str, resources: bytes) -> None:
        self.j("agent.update_container")

    async def list_processes(self) -> Sequence[pb.ProcessInfo]:
        self.j("agent.list_processes")
        return list(self.processes.values())

    async def container_stats(self, container_id: str) -> pb.ContainerStatsResponse:
        return pb.ContainerStatsResponse(timestamp_ns=1, cpu_usage_ns=1)

    async def follow_output(self, container_id: str, exec_id: str, stream: pb.Stream,
                            offset: int = 0, trim_sent: bool = False
                            ) -> AsyncIterator[pb.OutputChunk]:
        return
        yield  # an empty stream

    async def trim_output(self, container_id: str, stream: pb.Stream, offset: int,
                          exec_id: str = "") -> None:
        pass

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes,
                          close: bool = False) -> None:
        pass

    async def resize_tty(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        pass

    async def connect_port(self, port: int) -> FakePortStream:
        return FakePortStream()

    async def events(self) -> AsyncIterator[pb.Event]:
        while True:
            yield await self.exits.get()

    # -- what tests do to it ----------------------------------------------

    def exit(self, container_id: str, code: int) -> None:
        """The container's main process ends with ``code`` (an event follows)."""
        proc = self.processes.get(container_id)
        if proc is None or proc.state == pb.ProcessInfo.EXITED:
            return
        proc.state = pb.ProcessInfo.EXITED
        proc.exit.CopyFrom(pb.ExitStatus(exit_code=code, finished_at_ns=1))
        self.exits.put_nowait(pb.Event(container_id=container_id, kind=pb.Event.EXIT,
                                       exit=proc.exit))

    def _process(self, container_id: str) -> pb.ProcessInfo:
        proc = self.processes.get(container_id)
        if proc is None:
            raise AgentError("fake", grpc.StatusCode.NOT_FOUND,
                             f"container {container_id} not found")
        return proc


class FakePortStream:
    async def send(self, data: bytes) -> None:
        pass

    async def close_write(self) -> None:
        pass

    async def received(self) -> AsyncIterator[bytes]:
        return
        yield

    def cancel(self) -> None:
        pass


# -- the sandbox --------------------------------------------------------------

class FakeShare:
    def __init__(self, journal: Journal) -> None:
        self.j = journal
        self.placed: set[str] = set()

    def mount_overlay(self, rel: str, lower: list[Path], upper: Path, work: Path) -> str:
        self.j("share.mount_overlay")
        self.placed.add(rel)
        return rel

    def mount_image(self, rel: str, layers: list[Path], sub_path: str = "") -> str:
        self.j("share.mount_image")
        self.placed.add(rel)
        return f"{rel}/{sub_path}" if sub_path else rel

    def bind(self, rel: str, source: Path, readonly: bool, follow_host: bool = False,
             recursive_readonly: bool = False) -> str:
        self.j("share.bind")
        self.placed.add(rel)
        return rel

    def release(self, name: str) -> None:
        self.j("share.release")
        self.placed = {p for p in self.placed if not p.startswith(f"{name}/")}


class FakeSandbox:
    PID = 4242  # every fake QEMU's, unless told otherwise

    def __init__(self, sandbox_id: str, journal: Journal, config: VMConfig,
                 pid: int = PID) -> None:
        self.id = sandbox_id
        self.j = journal
        self.config = config
        self.share = FakeShare(journal)
        self.agent: FakeAgent | None = None
        self.pid = pid
        self.start_time = 77
        self.alive = False
        self.timings: dict[str, float] = {}
        self.from_template = ""
        self._gone = asyncio.Event()
        self.destroyed = False
        self.detached = False

    async def start(self, *, hostname: str = "", dns: pb.DnsConfig | None = None,
                    sysctls: Iterable[tuple[str, str]] = (),
                    network: Awaitable[pb.ConfigureNetworkRequest] | None = None) -> None:
        self.j("vm.start")
        self.alive = True
        self.agent = FakeAgent(self.j)
        if network is not None:
            # The real one awaits it once the guest is up and sends it with
            # SetupSandbox; a failure of either undoes the start.
            try:
                await self.agent.configure_network(await network)
            except BaseException:
                await self.destroy()
                raise
        self.timings["setup"] = 0.001

    def adopted(self) -> FakeSandbox:
        """Found again by a restarted vmrtd: the guest (its agent's state) carried on."""
        self.alive = True
        if self.agent is None:
            self.agent = FakeAgent(self.j)
        self.detached = False
        return self

    async def wait_gone(self) -> None:
        await self._gone.wait()

    def death_message(self) -> str:
        return "QEMU was killed by signal 9"

    async def destroy(self) -> None:
        self.j("vm.destroy")
        self.destroyed = True
        self.die()

    async def detach(self) -> None:
        self.j("vm.detach")
        self.detached = True

    def die(self) -> None:
        """QEMU is gone (the watcher notices)."""
        self.alive = False
        self._gone.set()


class FakeDrivers:
    def load(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def __init__(self, journal: Journal) -> None:
        self.j = journal
        self.made: dict[str, FakeSandbox] = {}
        # What adopt finds: sandbox id -> a live fake (absent: the VM is gone).
        self.alive: dict[str, FakeSandbox] = {}
        # pid -> directory name: sandbox processes on the "host".
        self.processes: dict[int, str] = {}
        self.reclaimed: list[int] = []
        self.warmed: list[tuple[Path, int, bool]] = []
        self.reserved_mib = 0

    def reserved_memory_mib(self) -> int:
        return self.reserved_mib

    def warm(self, wanted: list[tuple[GuestImage, VMConfig, bool]]) -> None:
        self.warmed = [(image.directory, config.memory_mib, net) for image, config, net in wanted]

    def create(self, sandbox_id: str, image: GuestImage, config: VMConfig,
               net: NetSpec | None) -> FakeSandbox:
        self.j("drivers.create")
        sandbox = FakeSandbox(sandbox_id, self.j, config)
        self.made[sandbox_id] = sandbox
        return sandbox

    async def adopt(self, sandbox_id: str, image: GuestImage, config: VMConfig, pid: int,
                    start_time: int) -> FakeSandbox:
        self.j("drivers.adopt")
        sandbox = self.alive.get(sandbox_id)
        if sandbox is None or sandbox.pid != pid:
            raise ProcessLookupError(f"no sandbox process {pid}")
        return sandbox.adopted()

    async def clean(self, sandbox_id: str) -> None:
        self.j("drivers.clean")

    def running(self) -> dict[int, str]:
        return dict(self.processes)

    async def reclaim(self, pid: int) -> None:
        self.j(f"drivers.reclaim {pid}")
        self.reclaimed.append(pid)
        self.processes.pop(pid, None)


# -- the network ----------------------------------------------------------------

class FakeNetworking:
    def __init__(self, journal: Journal) -> None:
        self.j = journal

    async def create_nic(self, pod_id: str, config: api.PodSandboxConfig,
                         undo: contextlib.AsyncExitStack,
                         remember: Callable[[PodNetworkState], None],
                         network_name: str = "") -> PodNIC:
        state = PodNetworkState(mode="cni", netns=f"vmrt-{pod_id[:32]}",
                                network_name=network_name or "fake")
        remember(state)
        self.j("net.netns")
        undo.push_async_callback(self._undo, "net.remove_netns")
        net = NetworkConfig(name=state.network_name, cni_version="1.0.0", plugins=[],
                            source=Path("<fake>"))
        args = PodNetworkArgs(container_id=pod_id, netns_path="/dev/null", ifname="eth0",
                              pod_namespace="", pod_name="", pod_uid="")
        return PodNIC(state, NetSpec("tap", ""), net, args, "vmrtapfake")

    async def connect(self, nic: PodNIC, undo: contextlib.AsyncExitStack) -> PreparedNetwork:
        self.j("net.cni_add")
        undo.push_async_callback(self._undo, "net.cni_del")
        state = dataclasses.replace(nic.state, ips=("10.88.0.9",))
        return PreparedNetwork(state, NetSpec("tap", "02:00:00:00:00:01"),
                               GuestInterface(mac="02:00:00:00:00:01", name="eth0", mtu=1500,
                                              addresses=["10.88.0.9/16"]), [])

    async def _undo(self, step: str) -> None:
        self.j(step)

    async def teardown(self, state: PodNetworkState) -> None:
        self.j("net.teardown")

    async def discard(self, pod_id: str, state: PodNetworkState) -> None:
        self.j("net.discard")
