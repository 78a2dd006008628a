"""Mixed runtimes: a real containerd 1.6 + runc as the delegate of the
``runc`` handler and of pods that ask for the node's namespaces, beside VM
pods, through one vmrt socket."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error, wait_for
from tests.helpers import streamclient as sc
from tests.helpers.containerd import Containerd
from tests.helpers.oci import Entry, Image, Layer, Layout, push
from tests.helpers.registry import Registry
from vmrt.delegate.router import UNAVAILABLE_ANNOTATION

pytestmark = [pytest.mark.vm, pytest.mark.skipif(shutil.which("containerd") is None,
                                                 reason="containerd is not installed")]

IMAGE = "registry.invalid/test/busybox:1"
APPLETS = ("sh", "sleep", "cat", "echo", "nc", "ip", "uname", "hostname", "ls", "true")


@dataclass
class Mixed:
    vmrtd: Daemon
    containerd: Containerd
    registry: Registry


def busybox(rootfs: Path) -> Layer:
    entries = [Entry("bin", kind="dir", mode=0o755),
               Entry("bin/busybox", (rootfs / "bin" / "busybox").read_bytes(), mode=0o755),
               Entry("tmp", kind="dir", mode=0o1777)]
    entries += [Entry(f"bin/{applet}", kind="symlink", target="busybox") for applet in APPLETS]
    return Layer(entries)


@pytest.fixture(scope="module")
def mixed(guest_image, request: pytest.FixtureRequest) -> Iterator[Mixed]:  # type: ignore[no-untyped-def]
    work = Path(tempfile.mkdtemp(prefix="vx-", dir="/tmp"))
    registry = Registry(work / "registry")
    containerd = Containerd(work / "ctrd", {"registry.invalid": registry.address},
                            "registry.invalid/test/pause:1")
    try:
        layout = Layout(work / "layout")
        layer = busybox(guest_image.busybox_rootfs)
        layout.add("busybox", Image([layer], {"Cmd": ["sh"], "Env": ["PATH=/bin"]}))
        layout.add("pause", Image([layer], {"Entrypoint": ["/bin/sleep", "2147483647"]}))
        push(layout.path, "busybox", f"{registry.address}/test/busybox:1")
        push(layout.path, "pause", f"{registry.address}/test/pause:1")
        containerd.start()
        config = (f'[registry.mirrors."registry.invalid"]\n'
                  f'endpoints = ["http://{registry.address}"]\n'
                  f'[runtime_handlers.runc]\ncri_endpoint = "{containerd.endpoint}"\n'
                  "[tenants.blue]\n")
        for base in _short_dir():
            for daemon in _daemon(base, guest_image, request, extra_config=config,
                                  cri_config='host_namespace_handler = "runc"\n'):
                yield Mixed(daemon, containerd, registry)
    finally:
        if request.session.testsfailed and containerd.log.exists():
            print(f"\n----- containerd log -----\n{containerd.log.read_text()[-4000:]}")
        containerd.cleanup()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def pull(d: Daemon) -> None:
    d.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=IMAGE)), timeout=120)


def forward(d: Daemon, pod_id: str, port: int) -> bytes:
    url = d.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=pod_id, port=[port]),
                                timeout=30).url

    async def scenario() -> tuple[bytes, bytes]:
        session, serving, _ = await sc.spdy_session(url, ["portforward.k8s.io"])
        try:
            return await sc.spdy_forward(session, port, 0, b"ping\n")
        finally:
            await session.close()
            serving.cancel()

    received, problem = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert problem == b"", problem
    return received


SERVE = "echo started; while true; do echo pong | nc -l -p 7000; done"


def test_a_runc_pod_and_a_vm_pod_side_by_side(mixed: Mixed) -> None:
    d = mixed.vmrtd
    pull(d)
    # An image is in every store that may run it: vmrt's and containerd's.
    assert mixed.containerd.has_image(IMAGE)
    status = d.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=IMAGE)),
                                  timeout=30)
    assert status.image.id
    listed = d.images.ListImages(api.ListImagesRequest(), timeout=30).images
    assert sum(IMAGE in i.repo_tags for i in listed) == 1, listed
    vm_config, runc_config = d.pod_config("vm-side"), d.pod_config("runc-side")
    vm_pod = d.run_pod(vm_config)
    runc_pod = d.run_pod(runc_config, handler="runc")
    assert {p.id for p in mixed.containerd.pods()} >= {runc_pod}
    assert vm_pod not in {p.id for p in mixed.containerd.pods()}
    vm_ctr = d.run_container(vm_pod, vm_config, ["sh", "-c", SERVE], image=IMAGE, name="srv")
    runc_ctr = d.run_container(runc_pod, runc_config, ["sh", "-c", SERVE], image=IMAGE,
                               name="srv")
    pods = {p.id: p for p in d.runtime.ListPodSandbox(api.ListPodSandboxRequest(),
                                                      timeout=30).items}
    assert pods[runc_pod].runtime_handler == "runc" and pods[vm_pod].runtime_handler == ""
    assert pods[runc_pod].metadata.name == "runc-side"
    assert all(p.state == api.SANDBOX_READY for p in pods.values())
    containers = {c.id: c for c in d.runtime.ListContainers(api.ListContainersRequest(),
                                                            timeout=30).containers}
    assert {vm_ctr, runc_ctr} <= set(containers)
    only_runc = d.runtime.ListContainers(api.ListContainersRequest(
        filter=api.ContainerFilter(pod_sandbox_id=runc_pod)), timeout=30).containers
    assert [c.id for c in only_runc] == [runc_ctr]
    for pod_id in (vm_pod, runc_pod):
        reply = d.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                           timeout=30)
        assert reply.status.id == pod_id and reply.status.state == api.SANDBOX_READY
    assert d.status(runc_ctr).state == api.CONTAINER_RUNNING
    # Exec: the VM has its own kernel, the runc container the node's.
    host_kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    assert d.exec(runc_ctr, ["uname", "-r"]).stdout.decode().strip() == host_kernel
    assert d.exec(vm_ctr, ["uname", "-r"]).stdout.decode().strip() != host_kernel
    # Logs: each runtime writes its own, where kubelet asked.
    for pod_config in (vm_config, runc_config):
        log = Path(pod_config.log_directory) / "srv.log"
        assert wait_for(lambda log=log: log.exists() and "started" in log.read_text(), 30)
    # Port-forward: the runc pod's URL is containerd's own streaming server.
    assert forward(d, vm_pod, 7000) == b"pong\n"
    assert forward(d, runc_pod, 7000) == b"pong\n"
    stats = d.runtime.ListContainerStats(api.ListContainerStatsRequest(), timeout=30).stats
    assert {vm_ctr, runc_ctr} <= {s.attributes.id for s in stats}
    # Removed through vmrt: gone from containerd and from vmrt's listings.
    d.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=runc_pod), timeout=60)
    d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=runc_pod), timeout=60)
    assert runc_pod not in {p.id for p in mixed.containerd.pods()}
    left = d.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items
    assert [p.id for p in left] == [vm_pod]
    expect_error(grpc.StatusCode.NOT_FOUND, d.runtime.ContainerStatus,
                 api.ContainerStatusRequest(container_id=runc_ctr), timeout=30)
    d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=runc_pod), timeout=60)
    d.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=vm_pod), timeout=60)
    d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=vm_pod), timeout=60)


def test_a_host_network_pod_goes_to_runc_and_sees_the_nodes_interfaces(mixed: Mixed) -> None:
    d = mixed.vmrtd
    pull(d)
    config = d.pod_config("hostnet", linux=api.LinuxPodSandboxConfig(
        security_context=api.LinuxSandboxSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NODE))))
    config.hostname = ""  # a hostNetwork pod has the node's
    pod_id = d.run_pod(config)
    assert pod_id in {p.id for p in mixed.containerd.pods()}
    ctr = d.run_container(pod_id, config, ["sleep", "300"], image=IMAGE)
    seen = d.exec(ctr, ["ip", "-o", "link"]).stdout.decode()
    node = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout

    def names(text: str) -> set[str]:
        return {line.split(": ")[1].split("@")[0] for line in text.splitlines() if ": " in line}

    # Interfaces come and go on a busy node: the container sees the node's,
    # the test's own containerd bridge among them.
    assert mixed.containerd.bridge in names(seen)
    assert len(names(seen) & names(node)) >= len(names(node)) - 2
    d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def test_containerd_down_then_back_and_a_vmrtd_restart(mixed: Mixed) -> None:
    d = mixed.vmrtd
    pull(d)
    vm_config, runc_config = d.pod_config("vm-stays"), d.pod_config("runc-waits")
    vm_pod = d.run_pod(vm_config)
    runc_pod = d.run_pod(runc_config, handler="runc")
    vm_ctr = d.run_container(vm_pod, vm_config, ["sleep", "300"], image=IMAGE)
    runc_ctr = d.run_container(runc_pod, runc_config, ["sleep", "300"], image=IMAGE)
    assert d.status(runc_ctr).state == api.CONTAINER_RUNNING
    mixed.containerd.stop()
    try:
        # Listed as last seen, saying why; calls on it say UNAVAILABLE and name it.
        pods = {p.id: p for p in d.runtime.ListPodSandbox(api.ListPodSandboxRequest(),
                                                          timeout=30).items}
        assert pods[runc_pod].state == api.SANDBOX_READY
        assert "runc" in pods[runc_pod].annotations[UNAVAILABLE_ANNOTATION]
        assert UNAVAILABLE_ANNOTATION not in pods[vm_pod].annotations
        containers = {c.id: c for c in d.runtime.ListContainers(api.ListContainersRequest(),
                                                                timeout=30).containers}
        assert containers[runc_ctr].state == api.CONTAINER_RUNNING
        message = expect_error(grpc.StatusCode.UNAVAILABLE, d.runtime.ContainerStatus,
                               api.ContainerStatusRequest(container_id=runc_ctr), timeout=30)
        assert "'runc'" in message and mixed.containerd.endpoint in message
        expect_error(grpc.StatusCode.UNAVAILABLE, d.runtime.StopPodSandbox,
                     api.StopPodSandboxRequest(pod_sandbox_id=runc_pod), timeout=30)
        # VM pods keep working, images too.
        assert d.exec(vm_ctr, ["echo", "still"]).stdout == b"still\n"
        assert d.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=IMAGE)),
                                    timeout=30).image.id
        # A restart of vmrtd keeps the routing, even while containerd is down.
        d.restart()
        assert runc_pod in {p.id for p in d.runtime.ListPodSandbox(
            api.ListPodSandboxRequest(), timeout=30).items}
    finally:
        mixed.containerd.start()
    assert d.exec(runc_ctr, ["echo", "back"]).stdout == b"back\n"
    assert d.exec(vm_ctr, ["echo", "vm"]).stdout == b"vm\n"
    pods = {p.id: p for p in d.runtime.ListPodSandbox(api.ListPodSandboxRequest(),
                                                      timeout=30).items}
    assert UNAVAILABLE_ANNOTATION not in pods[runc_pod].annotations
    for pod_id in (runc_pod, vm_pod):
        d.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        d.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=60)
    assert not mixed.containerd.pods()


def test_a_tenant_cannot_reach_the_delegate(mixed: Mixed) -> None:
    d = mixed.vmrtd
    config = d.pod_config("tenant-runc")
    message = expect_error(grpc.StatusCode.FAILED_PRECONDITION, d.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=config, runtime_handler="runc"),
                           metadata=[("vmrt-tenant", "blue")], timeout=30)
    assert "VMs only" in message
    assert not mixed.containerd.pods()
