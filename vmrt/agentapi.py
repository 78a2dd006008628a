"""What the host asks of a sandbox's agent: one typed method per RPC.

``AgentClient`` speaks it over gRPC to a real guest; ``tests.fakes`` has an
in-memory one for unit tests of the runtime's logic. Requests and replies
are the protocol's own messages (``vmrt.agent.v1``); an agent's refusal is
an ``AgentError`` carrying the gRPC status the agent chose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Protocol

import grpc

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.errors import VmrtError

# The longest the host waits for an agent's answer unless a caller says otherwise.
DEFAULT_TIMEOUT = 60.0


class AgentError(VmrtError):
    """The agent answered with an error; ``code`` is its gRPC status."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"agent {method}: {details}")


class AgentUnreachable(VmrtError):
    pass


class PortStream(Protocol):
    """One TCP connection to a port inside the guest."""

    async def send(self, data: bytes) -> None: ...
    async def close_write(self) -> None: ...
    def received(self) -> AsyncIterator[bytes]: ...
    def cancel(self) -> None: ...


class Agent(Protocol):
    async def close(self) -> None: ...

    def connected(self) -> bool: ...

    async def probe(self, timeout: float) -> pb.HealthResponse: ...

    async def wait_ready(self, timeout: float,
                         vm_exited: Awaitable[object]) -> pb.HealthResponse: ...

    async def wait_connected(self, timeout: float, vm_exited: Awaitable[object]) -> None: ...

    async def setup_sandbox(self, request: pb.SetupSandboxRequest) -> pb.SetupSandboxResponse: ...

    async def set_clock(self, host_time_ns: int) -> None: ...

    async def configure_network(self, request: pb.ConfigureNetworkRequest) -> None: ...

    async def create_container(self, container_id: str, oci_spec: bytes, rootfs: pb.Rootfs,
                               stdio: pb.StdioOptions) -> None: ...

    async def start_container(self, container_id: str) -> None: ...

    async def exec_process(self, container_id: str, exec_id: str, process: bytes,
                           stdio: pb.StdioOptions) -> None: ...

    async def signal_process(self, container_id: str, signal: int, *, exec_id: str = "",
                             all_processes: bool = False,
                             timeout: float | None = DEFAULT_TIMEOUT) -> None: ...

    async def wait_process(self, container_id: str, exec_id: str = "",
                           timeout: float | None = None) -> pb.ExitStatus: ...

    async def remove_container(self, container_id: str, force: bool = False) -> None: ...

    async def remove_exec(self, container_id: str, exec_id: str) -> None: ...

    async def update_container(self, container_id: str, resources: bytes) -> None: ...

    async def list_processes(self) -> Sequence[pb.ProcessInfo]: ...

    async def container_stats(self, container_id: str) -> pb.ContainerStatsResponse: ...

    async def set_online_cpus(self, count: int) -> int: ...

    def follow_output(self, container_id: str, exec_id: str, stream: pb.Stream,
                      offset: int = 0, trim_sent: bool = False
                      ) -> AsyncIterator[pb.OutputChunk]: ...

    async def trim_output(self, container_id: str, stream: pb.Stream, offset: int,
                          exec_id: str = "") -> None: ...

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes,
                          close: bool = False) -> None: ...

    async def resize_tty(self, container_id: str, exec_id: str, rows: int,
                         cols: int) -> None: ...

    async def connect_port(self, port: int) -> PortStream: ...

    def events(self) -> AsyncIterator[pb.Event]: ...
