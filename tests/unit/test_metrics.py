"""The metrics table in CRI form, and vmrtd's own counters."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as api
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from vmrt import metrics
from vmrt.agent import cgroups, guestinfo
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.cri.stats import network_usage
from vmrt.runtime.counters import Counters


def test_a_sample_in_cri_form_matches_its_descriptors() -> None:
    usage = pb.ContainerStatsResponse(
        memory_working_set_bytes=5 << 20, memory_usage_bytes=6 << 20, memory_rss_bytes=4 << 20,
        cpu_usage_ns=2_500_000_000, pids=3, page_faults=70, major_page_faults=2,
        interfaces=[pb.InterfaceStats(name="eth0", rx_packets=9, tx_dropped=1)],
        devices=[pb.DeviceIo(major=254, minor=0, read_bytes=4096, reads=1, write_bytes=8192),
                 pb.DeviceIo(major=254, minor=16, write_bytes=1, writes=1)])
    limits = api.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=512)
    layer = metrics.Filesystem(used_bytes=1000, inodes_used=4, capacity_bytes=10 << 30,
                               inodes_total=500, inodes_free=300)
    sample = metrics.PodSample("p" * 64, "web", "shop", "u-1", 42 * 10**9, 96 << 20, usage,
                               (metrics.ContainerSample("c" * 64, "app", usage, "busybox:1",
                                                        7 * 10**9, limits, layer),))
    descriptors = {d.name: list(d.label_keys) for d in metrics.descriptors()}
    out = metrics.pod_metrics(sample)
    assert out.pod_sandbox_id == "p" * 64
    values = {m.name: (m.metric_type, m.value.value, list(m.label_values)) for m in out.metrics}
    assert values["vmrt_pod_vm_pss_bytes"] == (api.GAUGE, 96 << 20,
                                               ["web", "shop", "u-1", "p" * 64])
    assert values["vmrt_pod_guest_cpu_usage_nanoseconds_total"][:2] == (api.COUNTER,
                                                                        2_500_000_000)
    assert values["vmrt_pod_guest_processes"][:2] == (api.GAUGE, 3)
    assert values["container_network_receive_packets_total"] == (
        api.COUNTER, 9, ["p" * 64, "eth0", "shop", "web"])
    assert values["container_network_transmit_packets_dropped_total"][1] == 1
    (container,) = out.container_metrics
    found: dict[str, list[tuple[list[str], int]]] = {}
    for metric in container.metrics:
        found.setdefault(metric.name, []).append((list(metric.label_values), metric.value.value))
    # Every cAdvisor series in the table is there, labelled as its descriptor says.
    assert set(found) == {n for n in descriptors if n.startswith("container_")
                          and not n.startswith("container_network_")}
    for metric in [*out.metrics, *container.metrics]:
        assert len(metric.label_values) == len(descriptors[metric.name]), metric.name
        assert metric.timestamp == 42 * 10**9
    base = ["app", "c" * 64, "busybox:1", "shop", "web"]
    assert found["container_cpu_usage_seconds_total"] == [(base, 2)]  # whole seconds in CRI
    assert found["container_spec_memory_limit_bytes"] == [(base, 64 << 20)]
    assert found["container_spec_cpu_shares"] == [(base, 512)]
    assert found["container_spec_cpu_period"] == [(base, 100_000)]
    assert found["container_fs_usage_bytes"] == [(base, 1000)]
    assert found["container_fs_inodes_free"] == [(base, 300)]
    assert found["container_fs_writes_bytes_total"] == [(base, 8193)]
    assert found["container_start_time_seconds"] == [(base, 7)]
    assert found["container_last_seen"] == [(base, 42)]
    assert sorted(found["container_memory_failures_total"]) == [
        ([*base, "pgfault", "container"], 70), ([*base, "pgfault", "hierarchy"], 70),
        ([*base, "pgmajfault", "container"], 2), ([*base, "pgmajfault", "hierarchy"], 2)]
    blkio = found["container_blkio_device_usage_total"]
    assert ([*base, "254:0", "254", "0", "Read"], 4096) in blkio and len(blkio) == 4
    # A pod whose agent did not answer still has its host-side PSS, nothing more.
    bare = metrics.pod_metrics(metrics.PodSample("p" * 64, "web", "shop", "u-1", 42, 1, None))
    assert [m.name for m in bare.metrics] == ["vmrt_pod_vm_pss_bytes"]


def test_prometheus_form_keeps_fractions_and_cadvisors_names() -> None:
    usage = pb.ContainerStatsResponse(cpu_usage_ns=1_500_000_000, memory_limit_hits=3)
    sample = metrics.PodSample("p" * 64, "web", "shop", "u-1", 1, 1, usage,
                               (metrics.ContainerSample("c" * 64, "app", usage),))
    registry = CollectorRegistry()
    registry.register(_Fixed(sample))
    text = generate_latest(registry).decode()
    found = {s.name: s.value for family in text_string_to_metric_families(text)
             for s in family.samples if s.labels.get("container") == "app"}
    assert found["container_cpu_usage_seconds_total"] == 1.5
    assert found["container_memory_failcnt"] == 3  # no _total added


class _Fixed(Collector):
    def __init__(self, sample: metrics.PodSample) -> None:
        self.sample = sample

    def collect(self) -> Iterator[Any]:
        return metrics.families([self.sample])


def test_open_files_and_io_read_from_a_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text(f"{os.getpid()}\n999999999\n")
    (tmp_path / "io.stat").write_text("254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0\n"
                                      "junk line\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    (tmp_path / "pids.max").write_text("max\n")
    with socket.socket() as _held:
        got = cgroups.read_stats(str(tmp_path))
        assert got.sockets >= 1
    assert got.processes == 2 and got.file_descriptors >= 3
    assert got.memory_limit_hits == 5 and got.oom_kills == 1 and got.threads_max == 0
    assert [(d.major, d.minor, d.read_bytes, d.reads) for d in got.devices] == [(254, 0, 4096, 1)]


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
    assert guestinfo.parse(text) == [
        guestinfo.InterfaceCounters("eth0", 5000, 7, 2, 0, 900, 5, 1, 0)]


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
            if m.name == "container_network_transmit_bytes_total"]
    assert len(sent) == metrics.MAX_INTERFACES and sent[1].label_values[1] == "eth0"
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


def test_a_guests_counters_past_64_bits_do_not_fail_the_call() -> None:
    usage = pb.ContainerStatsResponse(devices=[
        pb.DeviceIo(major=1, minor=0, read_bytes=1 << 63),
        pb.DeviceIo(major=1, minor=1, read_bytes=1 << 63)])  # a sum of 2**64
    sample = metrics.PodSample("p" * 64, "web", "shop", "u-1", 1, 1, usage,
                               (metrics.ContainerSample("c" * 64, "app", usage),))
    (container,) = metrics.pod_metrics(sample).container_metrics
    reads = [m.value.value for m in container.metrics if m.name == "container_fs_reads_bytes_total"]
    assert reads == [(1 << 64) - 1]
