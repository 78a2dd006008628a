"""Delegating handlers: the config, the records that route, the listing filters."""

from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from vmrt import config
from vmrt.delegate import listing
from vmrt.delegate.records import DelegatedRecords
from vmrt.delegate.router import asks_for_the_node
from vmrt.errors import InvalidArgumentError

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
                                              api.PodSandbox(id="9" * 64)], complete=False)
    assert [p.id for p in seen] == ["a" * 64]  # not one vmrt gave it: left out
    assert again.pods["a" * 64].item.state == api.SANDBOX_NOTREADY
    assert "ab" + "c" * 62 in again.pods
    again.refresh(again.pods, "runc", [api.PodSandbox(id="a" * 64)], complete=True)
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
