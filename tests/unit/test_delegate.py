"""Delegating handlers: the config, the records that route, the listing filters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from vmrt import config
from vmrt.config import DelegateConfig
from vmrt.delegate import listing
from vmrt.delegate.client import DelegateError
from vmrt.delegate.records import DelegatedRecords
from vmrt.delegate.router import UNAVAILABLE_ANNOTATION, Router, asks_for_the_node
from vmrt.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError

RUNC = '[runtime_handlers.runc]\ncri_endpoint = "unix:///run/containerd/containerd.sock"\n'


def test_a_handler_with_a_cri_endpoint_is_a_delegate_not_a_vm() -> None:
    parsed = config.parse(RUNC + '[runtime_handlers.vmrt]\n'
                                 '[cri]\nhost_namespace_handler = "runc"\n')
    assert parsed.runtime_handlers == {"vmrt": {}}
    assert parsed.delegates["runc"].cri_endpoint == "unix:///run/containerd/containerd.sock"
    assert parsed.delegates["runc"].runtime_handler == ""
    assert parsed.cri.host_namespace_handler == "runc"
    with pytest.raises(config.ConfigError, match="unknown runtime handler"):
        parsed.handler("runc")  # never a VM


@pytest.mark.parametrize(("text", "problem"), [
    ('[runtime_handlers.runc]\ncri_endpoint = "tcp://1.2.3.4:1"\n', "not a unix socket"),
    (RUNC + "memory_mib = 512\n", "unknown key runtime_handlers.runc.memory_mib"),
    ('[cri]\nhost_namespace_handler = "vmrt"\n', "is not a handler with a cri_endpoint"),
    (RUNC + "timeout = 0\n", "runc.timeout: 0.0 is not positive"),
    ("[delegates.x]\n", "unknown key delegates"),
])
def test_bad_delegate_settings_are_refused(text: str, problem: str) -> None:
    with pytest.raises(config.ConfigError, match=problem):
        config.parse(text)


def test_pods_asking_for_the_nodes_namespaces() -> None:
    def pod(**options: int) -> api.PodSandboxConfig:
        return api.PodSandboxConfig(linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(**options))))
    assert not asks_for_the_node(pod())
    assert not asks_for_the_node(pod(pid=api.CONTAINER))
    assert all(asks_for_the_node(pod(**{kind: api.NODE})) for kind in ("network", "pid", "ipc"))


def test_records_route_survive_a_reload_and_follow_listings(tmp_path: Path) -> None:
    records = DelegatedRecords(tmp_path / "delegated.json")
    records.add_pod("runc", api.PodSandbox(id="a" * 64, state=api.SANDBOX_READY,
                                           runtime_handler="runc"))
    records.add_pod("runc", api.PodSandbox(id="ab" + "c" * 62))
    records.add_container("runc", api.Container(id="d" * 64, pod_sandbox_id="a" * 64))
    again = DelegatedRecords(tmp_path / "delegated.json")
    again.load()
    assert again.pods["a" * 64].item.runtime_handler == "runc"
    assert again.containers["d" * 64].pod_id == "a" * 64
    local = {"e" * 64: object()}
    assert again.resolve(again.pods, "a" * 64, local, "pod_sandbox_id") == "a" * 64
    assert again.resolve(again.containers, "dd", local, "container_id") == "d" * 64
    assert again.resolve(again.pods, "e" * 64, local, "pod_sandbox_id") is None  # vmrt's own
    assert again.resolve(again.pods, "f", local, "pod_sandbox_id") is None
    with pytest.raises(InvalidArgumentError, match="ambiguous"):
        again.resolve(again.pods, "a", local, "pod_sandbox_id")
    # A filtered listing updates what it shows; a complete one also drops
    # what the delegate no longer has, with its containers' records.
    seen = again.refresh(again.pods, "runc", [api.PodSandbox(id="a" * 64,
                                                             state=api.SANDBOX_NOTREADY),
                                              api.PodSandbox(id="9" * 64)], asked_at=None)
    assert [p.id for p in seen] == ["a" * 64]  # not one vmrt gave it: left out
    assert again.pods["a" * 64].item.state == api.SANDBOX_NOTREADY
    assert "ab" + "c" * 62 in again.pods
    # One recorded after the listing was asked for is newer than it: kept.
    asked = time.monotonic()
    again.add_pod("runc", api.PodSandbox(id="b" * 64))
    again.refresh(again.pods, "runc", [api.PodSandbox(id="a" * 64)], asked_at=asked)
    assert set(again.pods) == {"a" * 64, "b" * 64}
    again.refresh(again.pods, "runc", [api.PodSandbox(id="a" * 64)], asked_at=time.monotonic())
    assert set(again.pods) == {"a" * 64}
    again.drop_pod("a" * 64)
    assert not again.pods and not again.containers
    last = DelegatedRecords(tmp_path / "delegated.json")
    last.load()
    assert not last.pods and not last.containers


def test_remembered_objects_filtered_as_a_runtime_filters() -> None:
    pod = api.PodSandbox(id="abc", state=api.SANDBOX_READY, labels={"app": "x"})
    assert listing.pod_matches(pod, api.PodSandboxFilter())
    assert listing.pod_matches(pod, api.PodSandboxFilter(id="ab", label_selector={"app": "x"}))
    assert not listing.pod_matches(pod, api.PodSandboxFilter(id="b"))
    assert not listing.pod_matches(pod, api.PodSandboxFilter(
        state=api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY)))
    assert not listing.pod_matches(pod, api.PodSandboxFilter(label_selector={"app": "y"}))
    container = api.Container(id="c1", pod_sandbox_id="abc", state=api.CONTAINER_EXITED)
    assert listing.container_matches(container, api.ContainerFilter(pod_sandbox_id="ab"))
    assert not listing.container_matches(container, api.ContainerFilter(
        state=api.ContainerStateValue(state=api.CONTAINER_RUNNING)))
    assert not listing.container_matches(container, api.ContainerFilter(pod_sandbox_id="x"))


def test_an_image_in_two_stores_is_listed_once_with_every_tag() -> None:
    reply = api.ListImagesResponse(images=[api.Image(id="sha256:1", repo_tags=["a:1"])])
    listing.merge_images(reply.images, [api.Image(id="sha256:1", repo_tags=["a:1", "b:1"],
                                                  repo_digests=["a@sha256:9"]),
                                        api.Image(id="sha256:2", repo_tags=["c:1"])])
    assert [(i.id, list(i.repo_tags), list(i.repo_digests)) for i in reply.images] == [
        ("sha256:1", ["a:1", "b:1"], ["a@sha256:9"]), ("sha256:2", ["c:1"], [])]


# -- the router's rules, with a fake delegate behind the same interface --------------


class FakeDelegate:
    """Delegate's interface: answers from a table, or an error for every call."""

    def __init__(self, name: str, answers: dict[str, Any], down: bool = False) -> None:
        self.name = name
        self.config = DelegateConfig(cri_endpoint="unix:///fake.sock", runtime_handler="inner")
        self.answers = answers
        self.down = down
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        self.calls.append((method, request))
        if self.down:
            raise UnavailableError(f"delegate {self.name!r} at unix:///fake.sock is unavailable")
        answer = self.answers.get(method)
        if isinstance(answer, Exception):
            raise answer
        return answer if answer is not None else getattr(api, f"{method}Response")()


class Context:
    def __init__(self, tenant: str = "") -> None:
        self.tenant = tenant

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("vmrt-tenant", self.tenant)] if self.tenant else []

    def time_remaining(self) -> float | None:
        return None


def router(tmp_path: Path, delegate: FakeDelegate) -> Router:
    runtime = SimpleNamespace(store=SimpleNamespace(pods={}, containers={}))
    records = DelegatedRecords(tmp_path / "delegated.json")
    return Router(runtime, {delegate.name: delegate}, records,  # type: ignore[arg-type, dict-item]
                  "runc")


def call(r: Router, method: str, request: Any, local: Any = None, tenant: str = "") -> Any:
    async def behavior(request: Any, context: Any) -> Any:
        reply = getattr(api, f"{method}Response")()
        if local is not None:  # a copy: the router may change the reply it is given
            reply.CopyFrom(local)
        return reply
    return asyncio.run(r._unary(method, behavior)(request, Context(tenant)))  # type: ignore[arg-type]


def test_a_host_network_pod_is_run_by_the_delegate_and_routed_after(tmp_path: Path) -> None:
    runc = FakeDelegate("runc", {"RunPodSandbox": api.RunPodSandboxResponse(
        pod_sandbox_id="a" * 64)})
    r = router(tmp_path, runc)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="kube-proxy", uid="u", namespace="kube-system"),
        linux=api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NODE))))
    reply = call(r, "RunPodSandbox", api.RunPodSandboxRequest(config=config))
    assert reply.pod_sandbox_id == "a" * 64
    assert runc.calls[0][1].runtime_handler == "inner"  # the delegate's own name for it
    assert r.records.pods["a" * 64].item.metadata.name == "kube-proxy"
    call(r, "StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id="aaaa"))
    assert runc.calls[-1] == ("StopPodSandbox",
                              api.StopPodSandboxRequest(pod_sandbox_id="a" * 64))
    # A tenant's pod never goes there.
    with pytest.raises(FailedPreconditionError, match="VMs only"):
        call(r, "RunPodSandbox", api.RunPodSandboxRequest(config=config), tenant="blue")
    # Removing what the delegate no longer has succeeds, and forgets it.
    runc.answers["RemovePodSandbox"] = DelegateError("runc", "RemovePodSandbox",
                                                     grpc.StatusCode.NOT_FOUND, "gone")
    call(r, "RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id="a" * 64))
    assert not r.records.pods


def test_a_failed_run_leaves_no_pod_at_the_delegate(tmp_path: Path) -> None:
    meta = api.PodSandboxMetadata(name="p", uid="u", namespace="n", attempt=1)
    runc = FakeDelegate("runc", {
        "RunPodSandbox": TimeoutError(),  # the answer never came
        "ListPodSandbox": api.ListPodSandboxResponse(items=[
            api.PodSandbox(id="b" * 64, metadata=meta),
            api.PodSandbox(id="c" * 64, metadata=api.PodSandboxMetadata(name="other"))])})
    r = router(tmp_path, runc)
    with pytest.raises(TimeoutError):
        call(r, "RunPodSandbox", api.RunPodSandboxRequest(
            config=api.PodSandboxConfig(metadata=meta), runtime_handler="runc"))
    removed = [req.pod_sandbox_id for method, req in runc.calls if method == "RemovePodSandbox"]
    assert removed == ["b" * 64] and not r.records.pods


def test_images_are_present_only_where_every_answering_store_has_them(tmp_path: Path) -> None:
    here = api.ImageStatusResponse(image=api.Image(id="sha256:1"))
    runc = FakeDelegate("runc", {"ImageStatus": api.ImageStatusResponse()})
    r = router(tmp_path, runc)
    request = api.ImageStatusRequest(image=api.ImageSpec(image="x:1"))
    assert not call(r, "ImageStatus", request, local=here).image.id
    runc.answers["ImageStatus"] = here
    assert call(r, "ImageStatus", request, local=here).image.id == "sha256:1"
    runc.down = True  # a delegate that is down is left out of the rule
    assert call(r, "ImageStatus", request, local=here).image.id == "sha256:1"
    # A pull succeeds when vmrt's own does, whatever the delegate says.
    runc.down = False
    runc.answers["PullImage"] = DelegateError("runc", "PullImage", grpc.StatusCode.UNKNOWN,
                                              "not found")
    pulled = api.PullImageResponse(image_ref="sha256:1")
    assert call(r, "PullImage", api.PullImageRequest(image=request.image),
                local=pulled).image_ref == "sha256:1"
    assert runc.calls[-1][0] == "PullImage"


def test_a_delegate_down_lists_its_pods_as_last_seen(tmp_path: Path) -> None:
    runc = FakeDelegate("runc", {})
    r = router(tmp_path, runc)
    r.records.add_pod("runc", api.PodSandbox(id="d" * 64, state=api.SANDBOX_READY,
                                             labels={"app": "proxy"}, runtime_handler="runc"))
    r.records.add_container("runc", api.Container(id="e" * 64, pod_sandbox_id="d" * 64,
                                                  state=api.CONTAINER_RUNNING))
    runc.answers["ListPodSandbox"] = api.ListPodSandboxResponse(items=[
        api.PodSandbox(id="d" * 64, state=api.SANDBOX_NOTREADY, runtime_handler="inner"),
        api.PodSandbox(id="f" * 64)])  # someone else's pod on that containerd
    local = api.ListPodSandboxResponse(items=[api.PodSandbox(id="1" * 64)])
    listed = call(r, "ListPodSandbox", api.ListPodSandboxRequest(), local=local)
    assert [(p.id, p.state, p.runtime_handler) for p in listed.items] == [
        ("1" * 64, api.SANDBOX_READY, ""), ("d" * 64, api.SANDBOX_NOTREADY, "runc")]
    runc.down = True
    local = api.ListPodSandboxResponse(items=[api.PodSandbox(id="1" * 64)])
    listed = call(r, "ListPodSandbox", api.ListPodSandboxRequest(), local=local)
    remembered = listed.items[1]
    assert remembered.id == "d" * 64 and remembered.state == api.SANDBOX_NOTREADY
    assert "unavailable" in remembered.annotations[UNAVAILABLE_ANNOTATION]
    assert "d" * 64 in r.records.pods  # kept while the delegate is down
    filtered = call(r, "ListContainers", api.ListContainersRequest(filter=api.ContainerFilter(
        state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))),
        local=api.ListContainersResponse())
    assert [c.id for c in filtered.containers] == ["e" * 64]
    with pytest.raises(UnavailableError, match="'runc'"):
        call(r, "ContainerStatus", api.ContainerStatusRequest(container_id="e" * 64))


def test_the_event_stream_merges_the_delegates_about_what_vmrt_gave_it(tmp_path: Path) -> None:
    runc = FakeDelegate("runc", {})
    r = router(tmp_path, runc)
    r.records.add_container("runc", api.Container(id="e" * 64, pod_sandbox_id="d" * 64,
                                                  state=api.CONTAINER_CREATED))

    async def delegate_events(method: str, request: Any) -> AsyncIterator[Any]:
        assert method == "GetContainerEvents"
        yield api.ContainerEventResponse(container_id="9" * 64)  # not vmrt's
        yield api.ContainerEventResponse(container_id="e" * 64,
                                         container_event_type=api.CONTAINER_STARTED_EVENT)

    runc.stream = delegate_events  # type: ignore[attr-defined]

    async def local(request: Any, context: Any) -> AsyncIterator[Any]:
        yield api.ContainerEventResponse(container_id="1" * 64)
        await asyncio.sleep(0.3)  # the delegate's arrive meanwhile; then vmrt's stream ends

    async def collect() -> list[str]:
        stream = r._stream("GetContainerEvents", local)(api.GetEventsRequest(), Context())
        return [event.container_id async for event in stream]  # type: ignore[attr-defined]

    seen = asyncio.run(collect())
    assert sorted(seen) == ["1" * 64, "e" * 64]
    assert r.records.containers["e" * 64].item.state == api.CONTAINER_RUNNING


def test_status_lists_the_delegating_handler_with_its_delegates_features(tmp_path: Path) -> None:
    runc = FakeDelegate("runc", {"Status": api.StatusResponse(runtime_handlers=[
        api.RuntimeHandler(name="inner", features=api.RuntimeHandlerFeatures(
            user_namespaces=True))])})
    r = router(tmp_path, runc)
    local = api.StatusResponse(runtime_handlers=[api.RuntimeHandler(name="")])
    handlers = {h.name: h for h in call(r, "Status", api.StatusRequest(),
                                        local=local).runtime_handlers}
    assert set(handlers) == {"", "runc"} and handlers["runc"].features.user_namespaces
    runc.down = True
    assert [h.name for h in call(r, "Status", api.StatusRequest(),
                                 local=local).runtime_handlers] == [""]
