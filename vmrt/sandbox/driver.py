"""The seam between the runtime and whatever runs a pod's sandbox.

``Sandbox`` is one sandbox as the runtime sees it: started or adopted, its
agent, the share it puts containers' files in, its death. ``Drivers`` makes
and finds them. ``vmrt.sandbox.vm`` implements both with QEMU; the unit
tests' ``tests.fakes`` implements them in memory. A pod VM restored from a
template (vmrt.sandbox.template) is the same driver's other way to start one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Protocol

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentapi import Agent
from vmrt.guest.image import GuestImage
from vmrt.hypervisor.spec import NetSpec
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.userns import Range


class Share(Protocol):
    """Where a sandbox's containers' files appear to the guest."""

    def mount_overlay(self, rel: str, lower: list[Path], upper: Path, work: Path,
                      idmap: tuple[list[Range], list[Range]] | None = None) -> str: ...

    def mount_image(self, rel: str, layers: list[Path], sub_path: str = "") -> str: ...

    def bind(self, rel: str, source: Path, readonly: bool, follow_host: bool = False,
             recursive_readonly: bool = False) -> str: ...

    def release(self, name: str) -> None: ...


class Sandbox(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def share(self) -> Share: ...

    @property
    def config(self) -> VMConfig:
        """The settings it was started (or adopted) with."""
        ...

    @property
    def timings(self) -> dict[str, float]:
        """Seconds from the start to each step of it ("setup": ready for containers)."""
        ...

    @property
    def agent(self) -> Agent | None: ...

    @property
    def from_template(self) -> str:
        """The key of the template it was restored from; "": it booted."""
        ...

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    @property
    def start_time(self) -> int: ...

    async def start(self, *, hostname: str = "", dns: pb.DnsConfig | None = None,
                    sysctls: Iterable[tuple[str, str]] = (),
                    network: Awaitable[pb.ConfigureNetworkRequest] | None = None) -> None:
        """Until the guest is set up (hostname, DNS, sysctls) and its
        ``network`` configured; a failure undoes everything it did.
        ``network`` is awaited once the guest is up (CNI ADD runs meanwhile);
        its first interface's MAC becomes the NIC's."""
        ...

    async def wait_gone(self) -> None:
        """Until the sandbox has ended and the last it said is read."""
        ...

    async def resize(self, memory_mib: int, vcpus: int) -> tuple[int, int]:
        """Hold this much guest RAM and this many online vCPUs, at most what it
        started with; returns (MiB, vCPUs) the guest has then."""
        ...

    def death_message(self) -> str: ...

    async def destroy(self) -> None:
        """Stop it and delete everything of it on the host; idempotent."""
        ...

    async def detach(self) -> None:
        """Let go without stopping it: vmrtd is going away, the pod is not."""
        ...


class Drivers(Protocol):
    def load(self) -> None:
        """What an earlier vmrtd kept for new sandboxes (VM templates)."""
        ...

    async def close(self) -> None:
        """vmrtd is stopping: let go of what ``load`` and new sandboxes use."""
        ...

    def warm(self, wanted: list[tuple[GuestImage, VMConfig, bool]]) -> None:
        """Get ready, in the background, to create sandboxes of these
        settings (image, VM, with a NIC) fast, and let go of what was kept
        for others (VM templates); nothing if that is not how this driver works."""
        ...

    def reserved_memory_mib(self) -> int:
        """Memory held for sandboxes to come (VM templates), at its full size."""
        ...

    def create(self, sandbox_id: str, image: GuestImage, config: VMConfig,
               net: NetSpec | None) -> Sandbox:
        """``net``: the NIC's backend (a tap's fd); its MAC comes with ``start``'s network."""
        ...

    async def adopt(self, sandbox_id: str, image: GuestImage, config: VMConfig, pid: int,
                    start_time: int) -> Sandbox: ...

    async def clean(self, sandbox_id: str) -> None:
        """Delete what a sandbox that is not running left on the host."""
        ...

    def running(self) -> dict[int, str]:
        """pid -> sandbox directory name of every sandbox process on the host."""
        ...

    async def reclaim(self, pid: int) -> None:
        """Kill a sandbox process that no record claims, and free what it held."""
        ...
