"""A real vmrtd on a real unix socket, and CRI clients for it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc

from tests.conftest import ARTIFACTS
from tests.helpers import leaks
from tests.helpers.network import TestNetwork


class Daemon:
    """One vmrtd process with its own socket, root and state directories."""

    def __init__(self, base: Path, image_dir: Path, extra_config: str = "",
                 cri_config: str = "", hypervisor_config: str = "",
                 python: str = sys.executable) -> None:
        self.base = base
        self.python = python  # the interpreter (and so the vmrt) vmrtd runs with
        self.image_dir = image_dir
        self.socket = base / "vmrt.sock"
        self.root = base / "root"
        self.state = base / "state"
        self.logs = base / "logs"
        self.config = base / "config.toml"
        self.log_file = base / "vmrtd.log"
        self.cni_dir = base / "cni"
        self.network = TestNetwork(base)
        self.network.write(self.cni_dir)
        self.pod_ids: list[str] = []
        # Its pods' cgroups go under a parent of its own: a leak is its leak.
        self.cgroup_parent = f"/vmrt-test-{base.name}"
        if "[cgroups]" not in extra_config:
            extra_config += f'[cgroups]\ndefault_parent = "{self.cgroup_parent}"\n'
        else:
            self.cgroup_parent = "/vmrt.slice"
        if "template" not in hypervisor_config:
            # Templates are on by default; the suite boots its pods cold
            # unless a test asks (a background template build per daemon
            # would cost each of them a VM's boot and RAM): the template
            # tests and critest run vmrtd's default.
            hypervisor_config += "template = false\n"
        self.config.write_text(
            f'[cri]\nsocket = "{self.socket}"\n{cri_config}'
            f'[storage]\nroot = "{self.root}"\nstate = "{self.state}"\n'
            f'[hypervisor]\nimage = "{image_dir}"\n{hypervisor_config}'
            f'[cni]\nconf_dir = "{self.cni_dir}"\nbin_dirs = ["/usr/lib/cni"]\n'
            f"[runtime_handlers.vmrt]\n[runtime_handlers.tiny]\nmemory_mib = 96\n"
            f"boot_timeout = 60.0\n"
            # A tight watchdog (the defaults take about a minute for a hung guest).
            f"[runtime_handlers.watchful]\nagent_keepalive_s = 2.0\nagent_ping_timeout_s = 5.0\n"
            f"watchdog_probe_timeout_s = 3.0\nwatchdog_probes = 2\n{extra_config}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # added to vmrtd's environment at the next start
        self.prefix: list[str] = []  # vmrtd's command runs under it (ip netns exec NS)
        self.channel: grpc.Channel | None = None
        self.runtime: api_grpc.RuntimeServiceStub
        self.images: api_grpc.ImageServiceStub

    def start(self) -> None:
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, self.python, "-m", "vmrt.daemon.main", "--config", str(self.config),
             "--debug"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env})
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmrtd exited: {self.log_file.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("vmrtd did not create its socket")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = api_grpc.RuntimeServiceStub(self.channel)
        self.images = api_grpc.ImageServiceStub(self.channel)
        self.runtime.Version(api.VersionRequest(), timeout=30, wait_for_ready=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        # Signal first: closing the channel first would cancel in-flight
        # calls, and a cancelled RunPodSandbox rolls itself back.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    # -- CRI helpers ---------------------------------------------------------

    def pod_config(self, name: str = "", **fields: Any) -> api.PodSandboxConfig:
        name = name or "pod-" + secrets.token_hex(3)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid="uid-" + name, namespace="test"),
            hostname=name, log_directory=str(self.logs / name), **fields)
        return config

    def run_pod(self, config: api.PodSandboxConfig | None = None, handler: str = "") -> str:
        config = config or self.pod_config()
        reply = self.runtime.RunPodSandbox(
            api.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=180)
        self.pod_ids.append(reply.pod_sandbox_id)
        return reply.pod_sandbox_id

    def create(self, pod_id: str, pod_config: api.PodSandboxConfig, command: list[str],
               name: str = "", image: str = "busybox", **fields: Any) -> str:
        name = name or "c-" + secrets.token_hex(3)
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=image),
            command=command, log_path=f"{name}.log", **fields)
        reply = self.runtime.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config), timeout=60)
        return reply.container_id

    def run_container(self, pod_id: str, pod_config: api.PodSandboxConfig,
                      command: list[str], **fields: Any) -> str:
        container_id = self.create(pod_id, pod_config, command, **fields)
        self.runtime.StartContainer(api.StartContainerRequest(container_id=container_id),
                                    timeout=60)
        return container_id

    def pod_info(self, pod_id: str) -> dict[str, Any]:
        """The pod's verbose PodSandboxStatus info (vmrt's JSON)."""
        reply = self.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True), timeout=30)
        info: dict[str, Any] = json.loads(reply.info["info"])
        return info

    def qemu_pid(self, pod_id: str) -> int:
        return int(self.pod_info(pod_id)["vm"]["pid"])

    def notready_reason(self, pod_id: str) -> str:
        """Why the pod is NOTREADY; "" while it is READY."""
        info = self.pod_info(pod_id)
        return str(info["reason"]) if info["state"] == "notready" else ""

    def status(self, container_id: str) -> api.ContainerStatus:
        return self.runtime.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=30).status

    def wait_exited(self, container_id: str, timeout: float = 60) -> api.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(container_id)
            if status.state == api.CONTAINER_EXITED or time.monotonic() > deadline:
                return status
            time.sleep(0.1)

    def exec(self, container_id: str, cmd: list[str], timeout: int = 30) -> api.ExecSyncResponse:
        return self.runtime.ExecSync(api.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                         timeout=timeout), timeout=timeout + 30)

    def cleanup(self) -> None:
        """Remove every pod through CRI, then kill whatever is left."""
        with contextlib.suppress(Exception):
            if self.proc is None:
                self.start()
            assert self.runtime is not None
            for pod in self.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items:
                self.runtime.RemovePodSandbox(
                    api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        self.stop()
        leaks.clean(self.state)
        self.network.remove_bridge()

    def network_leaks(self) -> dict[str, object]:
        return leaks.network_leaks(self.pod_ids, self.network.ipam_dir, self.network.name)

    def dump(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        (ARTIFACTS / f"{name}.vmrtd.log").write_text(text)
        print(f"\n----- vmrtd log ({name}) -----\n{text[-6000:]}", file=sys.stderr)
        for console in self.state.glob("sandboxes/*/console.log"):
            body = console.read_text(errors="replace")
            (ARTIFACTS / f"{name}.{console.parent.name[:12]}.console.log").write_text(body)
            print(f"----- console of {console.parent.name[:12]} -----\n{body[-3000:]}",
                  file=sys.stderr)


def expect_error(code: grpc.StatusCode, call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return str(info.value.details())


def _daemon(base: Path, guest_image: Any, request: pytest.FixtureRequest, *,
            name: str = "", check_leaks: bool = True, prefix: Sequence[str] = (),
            **settings: str) -> Iterator[Daemon]:
    """A started vmrtd in ``base``; afterwards its log and consoles are
    dumped (as ``name``, by default the fixture's) if any test failed, every
    pod is removed and, with ``check_leaks``, nothing may be left behind."""
    daemon = Daemon(base, guest_image.directory, **settings)
    daemon.prefix = list(prefix)
    daemon.start()
    try:
        yield daemon
    finally:
        if request.session.testsfailed:
            daemon.dump(name or request.node.name)
        daemon.cleanup()
        if check_leaks:
            found = {**leaks.find(daemon.state), **daemon.network_leaks()}
            left = leaks.cgroup_leaks(daemon.cgroup_parent)
            if left:
                found["cgroups"] = left
            if found:
                daemon.dump(f"{name or request.node.name}.leak")
            leaks.remove_cgroup_parent(daemon.cgroup_parent)
            assert not found, f"vmrtd left resources behind: {found}"


def _short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes and sandbox directories are
    # named by 64-character pod ids: pytest's tmp paths are too long.
    base = Path(tempfile.mkdtemp(prefix="vd-", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def vmrtd(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    """One daemon shared by a test module."""
    for base in _short_dir():
        yield from _daemon(base, guest_image, request)


@pytest.fixture
def own_vmrtd(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    """A daemon of the test's own, for tests that kill or restart it."""
    for base in _short_dir():
        yield from _daemon(base, guest_image, request)


@pytest.fixture(scope="module")
def pod(vmrtd: Daemon) -> tuple[str, api.PodSandboxConfig]:
    """A ready pod shared by the tests of a module."""
    config = vmrtd.pod_config(
        labels={"app": "shared"},
        dns_config=api.DNSConfig(servers=["10.96.0.10"], searches=["test.svc.cluster.local"],
                                 options=["ndots:5"]),
        linux=api.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_forward": "1",
                                                 "kernel.shm_rmid_forced": "1"}))
    return vmrtd.run_pod(config), config


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)

