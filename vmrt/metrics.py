"""Metrics: one table of per-pod and per-container series (``SERIES``), served
two ways, as Prometheus text (``[metrics] address``, with vmrtd's own
counters from ``vmrt.runtime.counters``) and as CRI ListPodSandboxMetrics.

Samples are taken when asked for (a scrape, a CRI call), never on a timer:
an idle pod costs nothing until someone looks. A pod's sample is QEMU's PSS
seen from the host (``/proc/PID/smaps_rollup``) and what its agent reports
(the guest's memory and CPU, per container too, through the same cached
stats call the CRI stats RPCs use).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as api
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vmrt import safefs
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.runtime.containers import ContainerService
from vmrt.runtime.core import Runtime
from vmrt.runtime.pods import PodService
from vmrt.runtime.records import ContainerRecord, ContainerState, PodRecord, PodState

log = logging.getLogger(__name__)

# vmrt's own pod series are labelled as kata-monitor labels them; the
# cAdvisor series as cAdvisor does, which is what dashboards and kubelet's
# /metrics/cadvisor (filled from ListPodSandboxMetrics) expect.
POD_LABELS = ("pod", "namespace", "uid", "pod_id")
CONTAINER_LABELS = ("container", "id", "image", "namespace", "pod")
NETWORK_LABELS = ("id", "interface", "namespace", "pod")
SCRAPE_TIMEOUT = 20.0
GUEST_TIMEOUT = 5.0
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
MAX_INTERFACES = 32
MAX_DEVICES = 16
NS = 1_000_000_000
CFS_PERIOD_US = 100_000  # the kernel's cpu.max period when none is given
CPU_SHARES = 1024  # cgroup v1's default, which cpu.weight 100 stands for


def guest_interfaces(raw: pb.ContainerStatsResponse) -> list[pb.InterfaceStats]:
    """The interfaces a guest reported. It wrote them: only names an interface
    can have, each once, at most MAX_INTERFACES."""
    seen: set[str] = set()
    kept = []
    for interface in raw.interfaces:
        if INTERFACE_NAME.fullmatch(interface.name) and interface.name not in seen:
            seen.add(interface.name)
            kept.append(interface)
    return kept[:MAX_INTERFACES]


@dataclass(frozen=True)
class Filesystem:
    """A container's writable layer, measured on the host."""
    used_bytes: int
    inodes_used: int
    capacity_bytes: int
    inodes_total: int
    inodes_free: int


def writable_layer(upper: Path) -> Filesystem:
    """The layer's own use (``safefs.tree_usage``: the guest fills it) and the
    size of the host filesystem it lives on."""
    used, inodes = safefs.tree_usage(upper)
    try:
        st = os.statvfs(upper)
    except OSError:
        return Filesystem(used, inodes, 0, 0, 0)
    return Filesystem(used, inodes, st.f_blocks * st.f_frsize, st.f_files, st.f_ffree)


@dataclass(frozen=True)
class ContainerSample:
    container_id: str
    name: str
    usage: pb.ContainerStatsResponse
    image: str = ""
    started_at_ns: int = 0
    resources: api.LinuxContainerResources = field(default_factory=api.LinuxContainerResources)
    filesystem: Filesystem | None = None


@dataclass(frozen=True)
class PodSample:
    pod_id: str
    name: str
    namespace: str
    uid: str
    timestamp_ns: int
    pss_bytes: int
    usage: pb.ContainerStatsResponse | None
    containers: tuple[ContainerSample, ...] = field(default=())

    def labels(self) -> tuple[str, ...]:
        return (self.name, self.namespace, self.uid, self.pod_id)


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    counter: bool
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Value:
    series: Series
    labels: tuple[str, ...]
    value: float
    container_id: str = ""  # a container's value, or the pod's


# A reader gives a series' values from what it reads: one number, or
# (extra label values, number) pairs for a series with labels of its own.
Number = int | float
Read = Callable[[Any], Number | Iterable[tuple[tuple[str, ...], Number]]]


def _table(prefix: str, labels: tuple[str, ...],
           rows: tuple[tuple[Any, ...], ...]) -> tuple[tuple[Series, Read], ...]:
    """Rows of (name, help, counter, read) or (name, help, counter, read, extra labels)."""
    return tuple((Series(prefix + row[0], row[1], row[2], labels + (row[4] if len(row) > 4
                                                                     else ())), row[3])
                 for row in rows)


def _failures(c: ContainerSample) -> list[tuple[tuple[str, ...], int]]:
    # cgroup v2 counts faults hierarchically only: both scopes are the same.
    faults = (("pgfault", c.usage.page_faults), ("pgmajfault", c.usage.major_page_faults))
    return [((kind, scope), n) for kind, n in faults for scope in ("container", "hierarchy")]


def _devices(c: ContainerSample) -> list[pb.DeviceIo]:
    return list(c.usage.devices[:MAX_DEVICES])


def _blkio(c: ContainerSample) -> list[tuple[tuple[str, ...], int]]:
    return [((f"{d.major}:{d.minor}", str(d.major), str(d.minor), op), n)
            for d in _devices(c) for op, n in (("Read", d.read_bytes), ("Write", d.write_bytes))]


def _fs(read: Callable[[Filesystem], int]) -> Read:
    return lambda c: read(c.filesystem) if c.filesystem else 0


def _io(read: Callable[[pb.DeviceIo], int]) -> Read:
    return lambda c: sum(read(d) for d in _devices(c))


# What the agent reports from the guest's cgroups: for a pod, the cgroup
# holding all its containers (not the guest kernel and agent around them:
# vmrt_pod_vm_pss_bytes is the whole VM).
PSS = Series("vmrt_pod_vm_pss_bytes",
             "Proportional set size of the pod's QEMU on the host (guest RAM, translation "
             "cache, QEMU itself; pages shared with a template or other VMs counted in part)",
             False, POD_LABELS)
POD_SERIES = _table("vmrt_pod_guest_", POD_LABELS, (
    ("memory_working_set_bytes", "Memory working set of the pod's containers, in the guest",
     False, lambda u: u.memory_working_set_bytes),
    ("memory_usage_bytes", "Memory usage of the pod's containers, in the guest", False,
     lambda u: u.memory_usage_bytes),
    ("memory_rss_bytes", "Anonymous memory of the pod's containers, in the guest", False,
     lambda u: u.memory_rss_bytes),
    ("cpu_usage_nanoseconds_total", "CPU time of the pod's containers, in the guest", True,
     lambda u: u.cpu_usage_ns),
    ("processes", "Threads of the pod's containers, in the guest", False, lambda u: u.pids),
)) + _table("vmrt_pod_vm_guest_", POD_LABELS, (
    ("memory_total_bytes", "MemTotal of the pod's guest kernel", False,
     lambda u: u.guest_memory_total_bytes),
    ("memory_available_bytes", "MemAvailable of the pod's guest kernel", False,
     lambda u: u.guest_memory_available_bytes),
))
# cAdvisor's network series, one per guest interface (the loopback left out).
NETWORK_SERIES = _table("container_network_", NETWORK_LABELS, (
    ("receive_bytes_total", "Cumulative count of bytes received", True, lambda i: i.rx_bytes),
    ("receive_packets_total", "Cumulative count of packets received", True,
     lambda i: i.rx_packets),
    ("receive_errors_total", "Cumulative count of errors encountered while receiving", True,
     lambda i: i.rx_errors),
    ("receive_packets_dropped_total", "Cumulative count of packets dropped while receiving",
     True, lambda i: i.rx_dropped),
    ("transmit_bytes_total", "Cumulative count of bytes transmitted", True,
     lambda i: i.tx_bytes),
    ("transmit_packets_total", "Cumulative count of packets transmitted", True,
     lambda i: i.tx_packets),
    ("transmit_errors_total", "Cumulative count of errors encountered while transmitting", True,
     lambda i: i.tx_errors),
    ("transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting",
     True, lambda i: i.tx_dropped),
))
# cAdvisor's container series: the guest's cgroup of the container, the
# writable layer as the host measures it, and the spec from vmrt's record.
CONTAINER_SERIES = _table("container_", CONTAINER_LABELS, (
    ("cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds", True,
     lambda c: c.usage.cpu_usage_ns / NS),
    ("cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds", True,
     lambda c: c.usage.cpu_user_ns / NS),
    ("cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds", True,
     lambda c: c.usage.cpu_system_ns / NS),
    ("cpu_cfs_periods_total", "Number of elapsed enforcement period intervals", True,
     lambda c: c.usage.cpu_periods),
    ("cpu_cfs_throttled_periods_total", "Number of throttled period intervals", True,
     lambda c: c.usage.cpu_throttled_periods),
    ("cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled",
     True, lambda c: c.usage.cpu_throttled_ns / NS),
    ("memory_usage_bytes", "Current memory usage in bytes, including all memory regardless "
     "of when it was accessed", False, lambda c: c.usage.memory_usage_bytes),
    ("memory_working_set_bytes", "Current working set in bytes", False,
     lambda c: c.usage.memory_working_set_bytes),
    ("memory_rss", "Size of RSS in bytes", False, lambda c: c.usage.memory_rss_bytes),
    ("memory_cache", "Number of bytes of page cache memory", False,
     lambda c: c.usage.memory_cache_bytes),
    ("memory_mapped_file", "Size of memory mapped files in bytes", False,
     lambda c: c.usage.memory_mapped_file_bytes),
    ("memory_kernel_usage", "Size of kernel memory allocated in bytes", False,
     lambda c: c.usage.memory_kernel_bytes),
    ("memory_swap", "Container swap usage in bytes", False, lambda c: c.usage.memory_swap_bytes),
    ("memory_max_usage_bytes", "Maximum memory usage recorded in bytes", False,
     lambda c: c.usage.memory_max_usage_bytes),
    ("memory_failcnt", "Number of memory usage hits limits", False,
     lambda c: c.usage.memory_limit_hits),
    ("memory_failures_total", "Cumulative count of memory allocation failures", True,
     _failures, ("failure_type", "scope")),
    ("oom_events_total", "Count of out of memory events observed for the container", True,
     lambda c: c.usage.oom_kills),
    ("processes", "Number of processes running inside the container", False,
     lambda c: c.usage.processes),
    ("threads", "Number of threads running inside the container", False,
     lambda c: c.usage.pids),
    ("threads_max", "Maximum number of threads allowed inside the container, 0 for unlimited",
     False, lambda c: c.usage.threads_max),
    ("file_descriptors", "Number of open file descriptors for the container", False,
     lambda c: c.usage.file_descriptors),
    ("sockets", "Number of open sockets for the container", False, lambda c: c.usage.sockets),
    ("fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem",
     False, _fs(lambda f: f.used_bytes)),
    ("fs_limit_bytes", "Number of bytes that can be consumed by the container on this "
     "filesystem", False, _fs(lambda f: f.capacity_bytes)),
    ("fs_inodes_total", "Number of available Inodes", False, _fs(lambda f: f.inodes_total)),
    ("fs_inodes_free", "Number of available Inodes", False, _fs(lambda f: f.inodes_free)),
    ("fs_reads_bytes_total", "Cumulative count of bytes read", True, _io(lambda d: d.read_bytes)),
    ("fs_reads_total", "Cumulative count of reads completed", True, _io(lambda d: d.reads)),
    ("fs_writes_bytes_total", "Cumulative count of bytes written", True,
     _io(lambda d: d.write_bytes)),
    ("fs_writes_total", "Cumulative count of writes completed", True, _io(lambda d: d.writes)),
    ("blkio_device_usage_total", "Blkio device bytes usage", True, _blkio,
     ("device", "major", "minor", "operation")),
    ("spec_cpu_period", "CPU period of the container", False,
     lambda c: c.resources.cpu_period or CFS_PERIOD_US),
    ("spec_cpu_quota", "CPU quota of the container, 0 for none", False,
     lambda c: max(0, c.resources.cpu_quota)),
    ("spec_cpu_shares", "CPU share of the container", False,
     lambda c: c.resources.cpu_shares or CPU_SHARES),
    ("spec_memory_limit_bytes", "Memory limit for the container, 0 for none", False,
     lambda c: max(0, c.resources.memory_limit_in_bytes)),
    ("spec_memory_swap_limit_bytes", "Memory swap limit for the container, 0 for none", False,
     lambda c: max(0, c.resources.memory_swap_limit_in_bytes)),
    ("start_time_seconds", "Start time of the container since unix epoch in seconds", False,
     lambda c: c.started_at_ns / NS),
))
LAST_SEEN = Series("container_last_seen", "Last time a container was seen by the exporter",
                   False, CONTAINER_LABELS)
SERIES = (PSS, *(s for table in (POD_SERIES, NETWORK_SERIES, CONTAINER_SERIES)
                 for s, _ in table), LAST_SEEN)


def _read(series: Series, read: Read, source: Any, labels: tuple[str, ...],
          container_id: str = "") -> Iterator[Value]:
    got = read(source)
    if isinstance(got, int | float):
        yield Value(series, labels, got, container_id)
        return
    for extra, number in got:
        yield Value(series, (*labels, *extra), number, container_id)


def values(sample: PodSample) -> Iterator[Value]:
    """Every value of one pod's sample, in SERIES' order within each part."""
    labels = sample.labels()
    yield Value(PSS, labels, sample.pss_bytes)
    if sample.usage is not None:
        for series, read in POD_SERIES:
            yield from _read(series, read, sample.usage, labels)
        for interface in guest_interfaces(sample.usage):
            network_labels = (sample.pod_id, interface.name, sample.namespace, sample.name)
            for series, read in NETWORK_SERIES:
                yield from _read(series, read, interface, network_labels)
    for container in sample.containers:
        container_labels = (container.name, container.container_id, container.image,
                            sample.namespace, sample.name)
        for series, read in CONTAINER_SERIES:
            yield from _read(series, read, container, container_labels, container.container_id)
        yield Value(LAST_SEEN, container_labels, sample.timestamp_ns // NS,
                    container.container_id)


def qemu_pss(pid: int) -> int:
    """PSS of a process from smaps_rollup, in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Sampler:
    """Takes samples of the running pods through the runtime's services."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.pods = PodService(runtime)
        self.containers = ContainerService(runtime)

    async def sample(self, pod_ids: set[str] | None = None) -> list[PodSample]:
        ready = [p for p in list(self.rt.store.pods.values())
                 if p.state == PodState.READY and (pod_ids is None or p.id in pod_ids)]
        return list(await asyncio.gather(*(self._pod(p) for p in ready)))

    async def _pod(self, pod: PodRecord) -> PodSample:
        meta = pod.config().metadata
        # A guest that does not answer loses its own numbers, within
        # GUEST_TIMEOUT, and holds up no other pod's.
        try:
            usage = await asyncio.wait_for(self.pods.usage(pod), GUEST_TIMEOUT)
        except Exception as exc:  # TimeoutError, the agent's errors
            log.debug("metrics of pod %s: %r", pod.id[:12], exc)
            usage = None
        running = [c for c in list(self.rt.store.containers.values())
                   if c.pod_id == pod.id and c.state == ContainerState.RUNNING]
        answers = await asyncio.gather(
            *(asyncio.wait_for(self.containers.usage(c), GUEST_TIMEOUT) for c in running),
            return_exceptions=True) if usage is not None else []
        containers = [await self._container(c, raw)
                      for c, raw in zip(running, answers, strict=False)
                      if isinstance(raw, pb.ContainerStatsResponse)]
        pid = pod.vm.pid if pod.vm else 0
        return PodSample(pod.id, meta.name, meta.namespace, meta.uid, time.time_ns(),
                         qemu_pss(pid) if pid else 0, usage, tuple(containers))

    async def _container(self, container: ContainerRecord,
                         usage: pb.ContainerStatsResponse) -> ContainerSample:
        layer = await asyncio.to_thread(writable_layer,
                                        self.rt.container_dir(container.id) / "upper")
        return ContainerSample(container.id, container.name, usage, container.image,
                               container.status.started_at, container.resources(), layer)


# -- CRI form -------------------------------------------------------------------


def _u64(value: float) -> int:
    """A CRI value: the guest reports what it likes (a sum of its counters
    may pass 2**64), and one pod's number must not fail every pod's call."""
    return min(max(int(value), 0), (1 << 64) - 1)


def descriptors() -> list[api.MetricDescriptor]:
    return [api.MetricDescriptor(name=s.name, help=s.help, label_keys=list(s.labels))
            for s in SERIES]


def pod_metrics(sample: PodSample) -> api.PodSandboxMetrics:
    out = api.PodSandboxMetrics(pod_sandbox_id=sample.pod_id)
    containers: dict[str, api.ContainerMetrics] = {}
    for value in values(sample):
        metric = api.Metric(name=value.series.name, timestamp=sample.timestamp_ns,
                            metric_type=api.COUNTER if value.series.counter else api.GAUGE,
                            label_values=list(value.labels),
                            value=api.UInt64Value(value=_u64(value.value)))
        if value.container_id:
            containers.setdefault(value.container_id, api.ContainerMetrics(
                container_id=value.container_id)).metrics.append(metric)
        else:
            out.metrics.append(metric)
    out.container_metrics.extend(containers.values())
    return out


# -- Prometheus form --------------------------------------------------------------


class _PodCollector(Collector):
    """Runs in the HTTP server's thread; samples through vmrtd's event loop."""

    def __init__(self, runtime: Runtime, sampler: Sampler,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.rt, self.sampler, self.loop = runtime, sampler, loop

    def collect(self) -> Iterator[Any]:
        states = GaugeMetricFamily("vmrt_pods", "Pod sandboxes by state", labels=["state"])
        counts: dict[str, int] = {str(s): 0 for s in PodState}
        for pod in list(self.rt.store.pods.values()):
            counts[str(pod.state)] += 1
        for state, number in sorted(counts.items()):
            states.add_metric([state], number)
        yield states
        future = asyncio.run_coroutine_threadsafe(self.sampler.sample(), self.loop)
        try:
            samples = future.result(SCRAPE_TIMEOUT)
        except Exception as exc:  # the loop busy past the timeout, or closing
            future.cancel()
            log.warning("metrics: sampling the pods failed: %r", exc)
            return
        yield from families(samples)


def families(samples: list[PodSample]) -> Iterator[Any]:
    """One Prometheus family per series (empty ones too), every sample's values in it."""
    found = {s.name: (CounterMetricFamily if s.counter else GaugeMetricFamily)(
        s.name.removesuffix("_total"), s.help, labels=list(s.labels)) for s in SERIES}
    for sample in samples:
        for value in values(sample):
            found[value.series.name].add_metric(list(value.labels), value.value)
    yield from found.values()


class Endpoint:
    """The Prometheus endpoint: vmrtd's counters and the pods' samples, served
    from a thread of its own (prometheus_client's HTTP server)."""

    def __init__(self, runtime: Runtime, host: str, port: int) -> None:
        runtime.metrics.registry.register(
            _PodCollector(runtime, Sampler(runtime), asyncio.get_running_loop()))
        self._server, _thread = start_http_server(port, addr=host,
                                                  registry=runtime.metrics.registry)
        self.address = f"{host}:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
