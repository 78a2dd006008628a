"""Tenants: the config, the limits, and the ``vmrt-tenant`` scope of CRI calls,
through vmrtd's real gRPC server on a unix socket, over fake VMs (tests/fakes.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc

from tests.fakes import FakeDrivers, FakeNetworking, Journal
from vmrt.cli import specfiles
from vmrt.config import (
    CgroupConfig,
    Config,
    ConfigError,
    HypervisorConfig,
    StorageConfig,
    TenantConfig,
    parse,
)
from vmrt.cri.server import serve
from vmrt.errors import InvalidArgumentError
from vmrt.guest.image import GuestImage
from vmrt.network.cni import CNIError, NoNetworkConfig, load_config
from vmrt.runtime.core import Runtime
from vmrt.runtime.streams import StreamService
from vmrt.runtime.tenants import Tenants
from vmrt.streaming.server import StreamServer

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
TENANTS = {"blue": TenantConfig(namespaces=["blue-web", "blue-db"], max_pods=2),
           "green": TenantConfig(max_memory_mib=300, cni_network="green-net")}


# -- the config ---------------------------------------------------------------------


def test_tenants_in_the_config() -> None:
    config = parse('[tenants.blue]\nnamespaces = ["blue-web", "blue-db"]\nmax_pods = 3\n'
                   '[tenants.green]\nmax_memory_mib = 1024\n')
    assert config.tenants["blue"] == TenantConfig(["blue-web", "blue-db"], 3, 0)
    assert config.tenants["green"].max_memory_mib == 1024


@pytest.mark.parametrize(("text", "message"), [
    ('[tenants.Blue]\n', "tenants.Blue: a tenant's name is a namespace name"),
    ('[tenants.blue]\nnamespaces = ["web_1"]\n', "tenants.blue.namespaces: 'web_1'"),
    ('[tenants.blue]\nmax_pods = -1\n', "tenants.blue.max_pods: -1 is negative"),
    ('[tenants.blue]\nnamespaces = ["web"]\n[tenants.green]\nnamespaces = ["web"]\n',
     "tenants.green: namespace 'web' is also in tenant 'blue'"),
    # A tenant's own name is one of its namespaces: another may not list it.
    ('[tenants.blue]\n[tenants.green]\nnamespaces = ["blue"]\n',
     "namespace 'blue' is also in tenant 'blue'"),
    ('[tenants.blue]\ncni_network = "a b"\n', "tenants.blue.cni_network: 'a b' is not"),
    ('[tenants.blue]\nbridge = "x"\n', "tenants.blue"),
])
def test_bad_tenant_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert message in str(info.value)


def test_a_namespace_no_tenant_lists_is_a_tenant_of_its_own() -> None:
    tenants = Tenants(TENANTS)
    assert tenants.of("blue-db") == "blue" and tenants.of("blue") == "blue"
    assert tenants.of("kube-system") == "kube-system"
    assert tenants.namespaces("blue") == ["blue-web", "blue-db", "blue"]
    assert tenants.primary("blue") == "blue-web" and tenants.primary("red") == "red"


# -- crictl's files ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["pod.json", "pod.yaml"])
def test_the_example_pod_files_parse(name: str) -> None:
    config = specfiles.load(EXAMPLES / name, api.PodSandboxConfig)
    assert config.metadata.name and config.metadata.uid and config.log_directory


@pytest.mark.parametrize("name", ["container.json", "container.yaml"])
def test_the_example_container_files_parse(name: str) -> None:
    config = specfiles.load(EXAMPLES / name, api.ContainerConfig)
    assert config.image.image == "busybox" and config.log_path


def test_crictl_field_names_and_numeric_enums(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("metadata: {name: x}\nimage: {image: busybox}\nlinux:\n"
                    "  security_context:\n    namespace_options: {pid: 1}\n"
                    "    run_as_user: {value: 1000}\n")
    config = specfiles.load(path, api.ContainerConfig)
    assert config.linux.security_context.namespace_options.pid == api.CONTAINER
    assert config.linux.security_context.run_as_user.value == 1000


@pytest.mark.parametrize(("text", "suffix", "message"), [
    ('{"metadata": {"name": "x"}, "colour": 1}', ".json", "colour"),
    ("{not json", ".json", "not valid JSON"),
    ("metadata: [1, 2", ".yaml", "not valid YAML"),
    ("- a\n- b\n", ".yml", "expected a mapping of PodSandboxConfig fields"),
])
def test_bad_spec_files_say_what_is_wrong(tmp_path: Path, text: str, suffix: str,
                                          message: str) -> None:
    path = tmp_path / f"pod{suffix}"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError) as info:
        specfiles.load(path, api.PodSandboxConfig)
    assert message in str(info.value) and str(path) in str(info.value)
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        specfiles.load(tmp_path / "missing.json", api.PodSandboxConfig)


# -- the scope, through the real gRPC server ----------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    new = asyncio.new_event_loop()
    # grpc.aio binds a call to the current loop when it is made.
    asyncio.set_event_loop(new)
    yield new
    for task in asyncio.all_tasks(new):
        task.cancel()
    new.run_until_complete(asyncio.sleep(0))
    new.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vt-", dir="/tmp"))  # a short socket path
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Node:
    def __init__(self, base: Path, channel: grpc.aio.Channel, rt: Runtime) -> None:
        self.base = base
        self.rt = rt
        self.stub = api_grpc.RuntimeServiceStub(channel)

    def as_(self, tenant: str | None) -> tuple[tuple[str, str], ...]:
        return (("vmrt-tenant", tenant),) if tenant is not None else ()

    async def run_pod(self, name: str, namespace: str, tenant: str | None = None,
                      memory: int = 0) -> str:
        logs = self.base / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=f"u-{name}"),
            log_directory=str(logs))
        if memory:
            config.linux.resources.memory_limit_in_bytes = memory << 20
        reply = await self.stub.RunPodSandbox(api.RunPodSandboxRequest(config=config),
                                              metadata=self.as_(tenant))
        return str(reply.pod_sandbox_id)

    async def create(self, pod_id: str, name: str, tenant: str | None = None) -> str:
        config = api.ContainerConfig(metadata=api.ContainerMetadata(name=name),
                                     image=api.ImageSpec(image="busybox"),
                                     command=["sleep", "1000"], log_path=f"{name}.log")
        reply = await self.stub.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config), metadata=self.as_(tenant))
        return str(reply.container_id)

    async def pods(self, tenant: str | None = None) -> dict[str, str]:
        reply = await self.stub.ListPodSandbox(api.ListPodSandboxRequest(),
                                               metadata=self.as_(tenant))
        return {p.metadata.name: p.metadata.namespace for p in reply.items}


@pytest.fixture
def node(loop: asyncio.AbstractEventLoop, base: Path) -> Iterator[Node]:
    journal = Journal()
    config = Config(storage=StorageConfig(root=str(base / "root"), state=str(base / "state")),
                    hypervisor=HypervisorConfig(accel="tcg", memory_mib=128),
                    cgroups=CgroupConfig(root=str(base / "cgroup")), tenants=TENANTS)
    (base / "cgroup").mkdir()
    image = GuestImage(directory=base / "guest", kernel=base / "guest/vmlinuz",
                       initrd=base / "guest/initrd", marker_initrd=base / "guest/marker",
                       busybox_rootfs=base / "guest/rootfs", kernel_release="6.1",
                       manifest={})
    rt = Runtime(config, image, drivers=FakeDrivers(journal),
                 networking=FakeNetworking(journal))
    rt.images.add_local(["busybox:latest"], {"rootfs": {"diff_ids": []},
                                             "config": {"Cmd": ["sh"]}}, [])

    async def up() -> tuple[grpc.aio.Server, grpc.aio.Channel]:
        server = await serve(rt, str(base / "cri.sock"),
                             StreamServer(StreamService(rt), "127.0.0.1", 0))
        return server, grpc.aio.insecure_channel(f"unix://{base}/cri.sock")

    server, channel = loop.run_until_complete(up())
    yield Node(base, channel, rt)
    loop.run_until_complete(channel.close())
    loop.run_until_complete(server.stop(None))


def code_of(loop: asyncio.AbstractEventLoop, call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        loop.run_until_complete(call)  # type: ignore[arg-type]
    return info.value.code(), str(info.value.details())


def test_a_tenant_sees_its_own_pods_and_kubelet_sees_all(loop: asyncio.AbstractEventLoop,
                                                         node: Node) -> None:
    async def scenario() -> None:
        await node.run_pod("web", "blue-web")  # kubelet's pod, in a namespace of blue
        await node.run_pod("cli", "default", tenant="blue")  # moved into blue
        await node.run_pod("lawn", "whatever", tenant="green")
        await node.run_pod("kube", "kube-system")
        assert await node.pods("blue") == {"web": "blue-web", "cli": "blue-web"}
        assert await node.pods("green") == {"lawn": "green"}
        assert await node.pods("nobody") == {}
        assert set(await node.pods()) == {"web", "cli", "lawn", "kube"}

    loop.run_until_complete(scenario())


def test_another_tenants_objects_are_not_found(loop: asyncio.AbstractEventLoop,
                                               node: Node) -> None:
    blue_pod = loop.run_until_complete(node.run_pod("web", "blue-web"))
    blue_ctr = loop.run_until_complete(node.create(blue_pod, "app"))
    green = node.as_("green")
    stub = node.stub
    for call, kind in [
        (stub.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=blue_pod),
                               metadata=green), "pod sandbox"),
        (stub.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=blue_pod[:6]),
                               metadata=green), "pod sandbox"),
        (stub.ContainerStatus(api.ContainerStatusRequest(container_id=blue_ctr),
                              metadata=green), "container"),
        (stub.StartContainer(api.StartContainerRequest(container_id=blue_ctr),
                             metadata=green), "container"),
        (stub.ExecSync(api.ExecSyncRequest(container_id=blue_ctr, cmd=["id"]),
                       metadata=green), "container"),
        (stub.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=blue_pod, config=api.ContainerConfig()), metadata=green),
         "pod sandbox"),
    ]:
        code, details = code_of(loop, call)
        assert code == grpc.StatusCode.NOT_FOUND and details.startswith(kind), details

    async def after() -> None:
        # Stop and remove of what the tenant does not have succeed (as CRI
        # says of what is not there) and touch nothing.
        await stub.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=blue_pod),
                                  metadata=green)
        await stub.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=blue_pod),
                                    metadata=green)
        await stub.RemoveContainer(api.RemoveContainerRequest(container_id=blue_ctr),
                                   metadata=green)
        status = await stub.PodSandboxStatus(api.PodSandboxStatusRequest(
            pod_sandbox_id=blue_pod[:8]), metadata=node.as_("blue"))
        assert status.status.state == api.SANDBOX_READY and status.status.id == blue_pod
        listed = await stub.ListContainers(api.ListContainersRequest(), metadata=green)
        assert not listed.containers
        listed = await stub.ListContainers(api.ListContainersRequest(),
                                           metadata=node.as_("blue"))
        assert [c.id for c in listed.containers] == [blue_ctr]

    loop.run_until_complete(after())


def test_tenant_limits_are_resource_exhausted_naming_the_limit(
        loop: asyncio.AbstractEventLoop, node: Node) -> None:
    loop.run_until_complete(node.run_pod("a", "blue-web"))
    loop.run_until_complete(node.run_pod("b", "blue-db"))
    code, details = code_of(loop, node.run_pod("c", "blue"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "tenants.blue.max_pods = 2" in details
    # Other tenants are not held back by blue's limit.
    loop.run_until_complete(node.run_pod("c", "elsewhere"))
    # green: 300 MiB of VMs; the handler's VM is 128 MiB, plus what a pod declares.
    loop.run_until_complete(node.run_pod("g1", "green"))
    code, details = code_of(loop, node.run_pod("g2", "green", memory=64))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenants.green.max_memory_mib" in details and "128 MiB of its 300 MiB" in details


def test_a_bad_tenant_header_is_invalid_argument(loop: asyncio.AbstractEventLoop,
                                                 node: Node) -> None:
    code, details = code_of(loop, node.pods("Not A Namespace"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "vmrt-tenant header" in details


def test_status_and_pod_status_say_the_tenants(loop: asyncio.AbstractEventLoop,
                                               node: Node) -> None:
    async def scenario() -> None:
        pod = await node.run_pod("web", "blue-db")
        status = await node.stub.PodSandboxStatus(api.PodSandboxStatusRequest(
            pod_sandbox_id=pod, verbose=True))
        assert json.loads(status.info["info"])["tenant"] == "blue"
        info = (await node.stub.Status(api.StatusRequest(verbose=True))).info
        assert json.loads(info["tenants"])["blue"] == {
            "namespaces": ["blue-web", "blue-db", "blue"], "maxPods": 2, "maxMemoryMiB": 0,
            "cniNetwork": ""}

    loop.run_until_complete(scenario())



def test_a_tenants_pods_go_on_its_cni_network(loop: asyncio.AbstractEventLoop,
                                              node: Node) -> None:
    green = loop.run_until_complete(node.run_pod("g", "green"))
    blue = loop.run_until_complete(node.run_pod("b", "blue-web"))
    networks = {pod_id: record.network.network_name
                for pod_id, record in node.rt.store.pods.items() if record.network}
    assert networks == {green: "green-net", blue: "fake"}


def test_a_cni_network_is_chosen_by_name(tmp_path: Path) -> None:
    for file, name in [("10-default.conflist", "node-net"), ("20-green.conflist", "green-net")]:
        (tmp_path / file).write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "bridge"}]}))
    (tmp_path / "05-broken.conflist").write_text("{not json")
    assert load_config(str(tmp_path), "green-net").name == "green-net"
    assert load_config(str(tmp_path), "node-net").source.name == "10-default.conflist"
    with pytest.raises(NoNetworkConfig) as info:
        load_config(str(tmp_path), "red-net")
    assert "no CNI network config named 'red-net'" in str(info.value)
    with pytest.raises(CNIError):
        load_config(str(tmp_path))  # the first, and broken: as before
