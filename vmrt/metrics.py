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
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cri_api.v1 import api_pb2 as api
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.runtime.containers import ContainerService
from vmrt.runtime.core import Runtime
from vmrt.runtime.pods import PodService
from vmrt.runtime.records import ContainerState, PodRecord, PodState

log = logging.getLogger(__name__)

POD_LABELS = ("pod", "namespace", "uid", "pod_id")
INTERFACE_LABELS = (*POD_LABELS, "interface")
CONTAINER_LABELS = ("pod", "namespace", "uid", "container", "container_id")
SCRAPE_TIMEOUT = 20.0
GUEST_TIMEOUT = 5.0
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
MAX_INTERFACES = 32


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
class ContainerSample:
    container_id: str
    name: str
    usage: pb.ContainerStatsResponse


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
    value: int
    container_id: str = ""  # a container's value, or the pod's


Read = Callable[[Any], int]


def _table(prefix: str, labels: tuple[str, ...],
           rows: tuple[tuple[str, str, bool, Read], ...]) -> tuple[tuple[Series, Read], ...]:
    return tuple((Series(prefix + name, help_text, counter, labels), read)
                 for name, help_text, counter, read in rows)


# What the agent reports from the guest's cgroups: for a pod, the cgroup
# holding all its containers (not the guest kernel and agent around them:
# vmrt_pod_vm_pss_bytes is the whole VM); for a container, its own.
_CGROUP: tuple[tuple[str, str, bool, Read], ...] = (
    ("memory_working_set_bytes", "Memory working set, in the guest's cgroup", False,
     lambda u: u.memory_working_set_bytes),
    ("memory_usage_bytes", "Memory usage, in the guest's cgroup", False,
     lambda u: u.memory_usage_bytes),
    ("memory_rss_bytes", "Anonymous memory, in the guest's cgroup", False,
     lambda u: u.memory_rss_bytes),
    ("cpu_usage_nanoseconds_total", "CPU time, in the guest's cgroup", True,
     lambda u: u.cpu_usage_ns),
)
PSS = Series("vmrt_pod_vm_pss_bytes",
             "Proportional set size of the pod's QEMU on the host (guest RAM, translation "
             "cache, QEMU itself; pages shared with a template or other VMs counted in part)",
             False, POD_LABELS)
# Read from a pod's answer: its containers' cgroup, and the guest kernel's
# own /proc/meminfo.
POD_SERIES = _table("vmrt_pod_guest_", POD_LABELS, (
    *_CGROUP,
    ("processes", "Processes, in the guest's cgroup", False, lambda u: u.pids),
)) + _table("vmrt_pod_vm_guest_", POD_LABELS, (
    ("memory_total_bytes", "MemTotal of the pod's guest kernel", False,
     lambda u: u.guest_memory_total_bytes),
    ("memory_available_bytes", "MemAvailable of the pod's guest kernel", False,
     lambda u: u.guest_memory_available_bytes),
))
# Read from each network interface the guest reported (the loopback left out).
INTERFACE_SERIES = _table("vmrt_pod_network_", INTERFACE_LABELS, (
    ("receive_bytes_total", "Bytes received by the guest", True, lambda i: i.rx_bytes),
    ("receive_errors_total", "Receive errors in the guest", True, lambda i: i.rx_errors),
    ("transmit_bytes_total", "Bytes sent by the guest", True, lambda i: i.tx_bytes),
    ("transmit_errors_total", "Transmit errors in the guest", True, lambda i: i.tx_errors),
))
# Read from each container's answer.
CONTAINER_SERIES = _table("vmrt_container_", CONTAINER_LABELS, _CGROUP)
SERIES = (PSS, *(s for table in (POD_SERIES, INTERFACE_SERIES, CONTAINER_SERIES)
                 for s, _ in table))


def values(sample: PodSample) -> Iterator[Value]:
    """Every value of one pod's sample, in SERIES' order within each part."""
    labels = sample.labels()
    yield Value(PSS, labels, sample.pss_bytes)
    if sample.usage is not None:
        for series, read in POD_SERIES:
            yield Value(series, labels, read(sample.usage))
        for interface in guest_interfaces(sample.usage):
            for series, read in INTERFACE_SERIES:
                yield Value(series, (*labels, interface.name), read(interface))
    for container in sample.containers:
        container_labels = (*labels[:3], container.name, container.container_id)
        for series, read in CONTAINER_SERIES:
            yield Value(series, container_labels, read(container.usage), container.container_id)


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
        containers = [ContainerSample(c.id, c.name, raw)
                      for c, raw in zip(running, answers, strict=False)
                      if isinstance(raw, pb.ContainerStatsResponse)]
        pid = pod.vm.pid if pod.vm else 0
        return PodSample(pod.id, meta.name, meta.namespace, meta.uid, time.time_ns(),
                         qemu_pss(pid) if pid else 0, usage, tuple(containers))


# -- CRI form -------------------------------------------------------------------


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
                            value=api.UInt64Value(value=value.value))
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
