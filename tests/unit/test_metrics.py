"""The metrics table in CRI form, and vmrtd's own counters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from vmrt import metrics
from vmrt.agent import guestinfo
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.cri.stats import network_usage
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


def test_proc_net_dev_parsed_without_the_loopback() -> None:
    text = ("Inter-|   Receive                            |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes ...\n"
            "    lo:  100 1 0 0 0 0 0 0  100 1 0 0 0 0 0 0\n"
            "  eth0: 5000 7 2 0 0 0 0 0  900 5 1 0 0 0 0 0\n"
            "  bad: x y z\n")
    assert guestinfo.parse(text) == [guestinfo.InterfaceCounters("eth0", 5000, 2, 900, 1)]


def test_network_usage_keeps_what_an_interface_can_be_named() -> None:
    raw = pb.ContainerStatsResponse(timestamp_ns=7, interfaces=[
        pb.InterfaceStats(name="eth1", rx_bytes=1),
        pb.InterfaceStats(name="eth0", rx_bytes=10, tx_bytes=20),
        pb.InterfaceStats(name="x" * 300, rx_bytes=3),  # a guest's forgery
        pb.InterfaceStats(name='a"}\nevil', rx_bytes=4),
        pb.InterfaceStats(name="eth0", rx_bytes=666),  # the same name again: the first stays
        *(pb.InterfaceStats(name=f"dummy{i}") for i in range(100))])
    usage = network_usage(raw)
    assert usage is not None and usage.timestamp == 7
    assert usage.default_interface.name == "eth0" and usage.default_interface.tx_bytes.value == 20
    names = [i.name for i in usage.interfaces]
    assert names[0] == "eth1" and len(names) == metrics.MAX_INTERFACES - 1
    assert all(metrics.INTERFACE_NAME.fullmatch(n) for n in names)
    assert network_usage(pb.ContainerStatsResponse()) is None
    sample = metrics.PodSample("p" * 64, "web", "shop", "u-1", 7, 1, raw)
    sent = [m for m in metrics.pod_metrics(sample).metrics
            if m.name == "vmrt_pod_network_transmit_bytes_total"]
    assert len(sent) == metrics.MAX_INTERFACES and sent[1].label_values[-1] == "eth0"
    assert sent[1].value.value == 20 and sent[1].metric_type == api.COUNTER


def test_meminfo_read_from_the_guests_format(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:         250000 kB\nMemFree:          100 kB\n"
                       "MemAvailable:     180000 kB\n")
    assert guestinfo.meminfo(str(meminfo)) == (250000 * 1024, 180000 * 1024)
    assert guestinfo.meminfo(str(tmp_path / "none")) == (0, 0)
    usage = pb.ContainerStatsResponse(guest_memory_total_bytes=7, guest_memory_available_bytes=5)
    out = metrics.pod_metrics(metrics.PodSample("p" * 64, "web", "shop", "u-1", 1, 1, usage))
    by_name = {m.name: m.value.value for m in out.metrics}
    assert by_name["vmrt_pod_vm_guest_memory_total_bytes"] == 7
    assert by_name["vmrt_pod_vm_guest_memory_available_bytes"] == 5
