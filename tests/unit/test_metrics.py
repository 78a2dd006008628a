"""The metrics table in CRI form, and vmrtd's own counters."""

from __future__ import annotations

import os

import pytest
from cri_api.v1 import api_pb2 as api

from vmrt import metrics
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.runtime.counters import Counters


def test_a_sample_in_cri_form_matches_its_descriptors() -> None:
    usage = pb.ContainerStatsResponse(memory_working_set_bytes=5 << 20, memory_usage_bytes=6 << 20,
                                      memory_rss_bytes=4 << 20, cpu_usage_ns=123, pids=3)
    sample = metrics.PodSample("p" * 64, "web", "shop", "u-1", 42, 96 << 20, usage,
                               (metrics.ContainerSample("c" * 64, "app", usage),))
    descriptors = {d.name: list(d.label_keys) for d in metrics.descriptors()}
    out = metrics.pod_metrics(sample)
    assert out.pod_sandbox_id == "p" * 64
    values = {m.name: (m.metric_type, m.value.value, list(m.label_values)) for m in out.metrics}
    assert values["vmrt_pod_vm_pss_bytes"] == (api.GAUGE, 96 << 20,
                                               ["web", "shop", "u-1", "p" * 64])
    assert values["vmrt_pod_guest_cpu_usage_nanoseconds_total"][:2] == (api.COUNTER, 123)
    assert values["vmrt_pod_guest_processes"][:2] == (api.GAUGE, 3)
    (container,) = out.container_metrics
    assert {m.name for m in container.metrics} == {
        n for n in descriptors if n.startswith("vmrt_container_")}
    for metric in [*out.metrics, *container.metrics]:
        assert len(metric.label_values) == len(descriptors[metric.name]), metric.name
        assert metric.timestamp == 42
    # A pod whose agent did not answer still has its host-side PSS, nothing more.
    bare = metrics.pod_metrics(metrics.PodSample("p" * 64, "web", "shop", "u-1", 42, 1, None))
    assert [m.name for m in bare.metrics] == ["vmrt_pod_vm_pss_bytes"]


def test_calls_and_starts_are_counted() -> None:
    counters = Counters()
    counters.observe_call("RunPodSandbox", "OK", 1.5)
    counters.observe_call("RunPodSandbox", "OK", 0.5)
    counters.observe_call("RunPodSandbox", "RESOURCE_EXHAUSTED", 0.01)
    counters.observe_start(0.4, True)
    get = counters.registry.get_sample_value
    assert get("vmrt_cri_requests_total", {"method": "RunPodSandbox", "code": "OK"}) == 2
    assert get("vmrt_cri_requests_total",
               {"method": "RunPodSandbox", "code": "RESOURCE_EXHAUSTED"}) == 1
    assert get("vmrt_cri_request_seconds_sum", {"method": "RunPodSandbox"}) == pytest.approx(2.01)
    assert get("vmrt_pod_start_seconds_count", {"path": "template"}) == 1
    assert get("vmrt_pod_start_seconds_count", {"path": "cold"}) is None


def test_qemu_pss_of_a_process_that_is_gone_is_zero() -> None:
    assert metrics.qemu_pss(2**22 + 7) == 0
    assert metrics.qemu_pss(os.getpid()) > 1 << 20
