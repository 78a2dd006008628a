"""Metrics: one table of per-pod and per-container samples, served two ways,
as Prometheus text (``[metrics] address``) and as CRI ListPodSandboxMetrics.

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
    value: Callable[[pb.ContainerStatsResponse], int]


# What the agent reports from the guest's cgroups: for a pod, the cgroup
# holding all its containers (not the guest kernel and agent around them:
# vmrt_pod_vm_pss_bytes is the whole VM); for a container, its own.
GUEST_SERIES = (
    Series("memory_working_set_bytes", "Memory working set, in the guest's cgroup", False,
           lambda u: u.memory_working_set_bytes),
    Series("memory_usage_bytes", "Memory usage, in the guest's cgroup", False,
           lambda u: u.memory_usage_bytes),
    Series("memory_rss_bytes", "Anonymous memory, in the guest's cgroup", False,
           lambda u: u.memory_rss_bytes),
    Series("cpu_usage_nanoseconds_total", "CPU time, in the guest's cgroup", True,
           lambda u: u.cpu_usage_ns),
    Series("processes", "Processes, in the guest's cgroup", False, lambda u: u.pids),
)
# What the agent reports per guest network interface (the loopback left out).
NETWORK_SERIES = (
    ("receive_bytes_total", "Bytes received by the guest", lambda i: i.rx_bytes),
    ("receive_errors_total", "Receive errors in the guest", lambda i: i.rx_errors),
    ("transmit_bytes_total", "Bytes sent by the guest", lambda i: i.tx_bytes),
    ("transmit_errors_total", "Transmit errors in the guest", lambda i: i.tx_errors),
)
# The guest kernel's own /proc/meminfo, for a pod.
MEMINFO_SERIES = (
    Series("vm_guest_memory_total_bytes", "MemTotal of the pod's guest kernel", False,
           lambda u: u.guest_memory_total_bytes),
    Series("vm_guest_memory_available_bytes", "MemAvailable of the pod's guest kernel",
           False, lambda u: u.guest_memory_available_bytes),
)
PSS = ("vmrt_pod_vm_pss_bytes",
       "Proportional set size of the pod's QEMU on the host (guest RAM, translation "
       "cache, QEMU itself; pages shared with a template or other VMs counted in part)")


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
    found = [api.MetricDescriptor(name=PSS[0], help=PSS[1], label_keys=list(POD_LABELS))]
    for series in GUEST_SERIES:
        found.append(api.MetricDescriptor(name=f"vmrt_pod_guest_{series.name}",
                                          help=series.help, label_keys=list(POD_LABELS)))
    for series in MEMINFO_SERIES:
        found.append(api.MetricDescriptor(name=f"vmrt_pod_{series.name}", help=series.help,
                                          label_keys=list(POD_LABELS)))
    for name, help_text, _ in NETWORK_SERIES:
        found.append(api.MetricDescriptor(name=f"vmrt_pod_network_{name}", help=help_text,
                                          label_keys=list(INTERFACE_LABELS)))
    for series in GUEST_SERIES:
        if series.name != "processes":
            found.append(api.MetricDescriptor(name=f"vmrt_container_{series.name}",
                                              help=series.help,
                                              label_keys=list(CONTAINER_LABELS)))
    return found


def _metric(name: str, counter: bool, labels: tuple[str, ...], value: int,
            timestamp: int) -> api.Metric:
    return api.Metric(name=name, timestamp=timestamp,
                      metric_type=api.COUNTER if counter else api.GAUGE,
                      label_values=list(labels), value=api.UInt64Value(value=value))


def pod_metrics(sample: PodSample) -> api.PodSandboxMetrics:
    labels, at = sample.labels(), sample.timestamp_ns
    out = api.PodSandboxMetrics(pod_sandbox_id=sample.pod_id)
    out.metrics.append(_metric(PSS[0], False, labels, sample.pss_bytes, at))
    if sample.usage is not None:
        for series in GUEST_SERIES:
            out.metrics.append(_metric(f"vmrt_pod_guest_{series.name}", series.counter,
                                       labels, series.value(sample.usage), at))
        for series in MEMINFO_SERIES:
            out.metrics.append(_metric(f"vmrt_pod_{series.name}", False, labels,
                                       series.value(sample.usage), at))
        for interface in guest_interfaces(sample.usage):
            for name, _, read in NETWORK_SERIES:
                out.metrics.append(_metric(f"vmrt_pod_network_{name}", True,
                                           (*labels, interface.name), read(interface), at))
    for container in sample.containers:
        entry = api.ContainerMetrics(container_id=container.container_id)
        container_labels = (*labels[:3], container.name, container.container_id)
        for series in GUEST_SERIES:
            if series.name != "processes":
                entry.metrics.append(_metric(f"vmrt_container_{series.name}", series.counter,
                                             container_labels, series.value(container.usage),
                                             at))
        out.container_metrics.append(entry)
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
        yield from self._families(samples)

    @staticmethod
    def _families(samples: list[PodSample]) -> Iterator[Any]:
        pss = GaugeMetricFamily(PSS[0], PSS[1], labels=list(POD_LABELS))
        for sample in samples:
            pss.add_metric(list(sample.labels()), sample.pss_bytes)
        yield pss
        for series in GUEST_SERIES:
            kind = CounterMetricFamily if series.counter else GaugeMetricFamily
            name = f"vmrt_pod_guest_{series.name}".removesuffix("_total")
            family = kind(name, series.help, labels=list(POD_LABELS))
            for sample in samples:
                if sample.usage is not None:
                    family.add_metric(list(sample.labels()), series.value(sample.usage))
            yield family
        for series in MEMINFO_SERIES:
            gauge = GaugeMetricFamily(f"vmrt_pod_{series.name}", series.help,
                                      labels=list(POD_LABELS))
            for sample in samples:
                if sample.usage is not None:
                    gauge.add_metric(list(sample.labels()), series.value(sample.usage))
            yield gauge
        for name, help_text, read in NETWORK_SERIES:
            counter = CounterMetricFamily(f"vmrt_pod_network_{name}".removesuffix("_total"),
                                          help_text, labels=list(INTERFACE_LABELS))
            for sample in samples:
                for interface in guest_interfaces(sample.usage) if sample.usage else ():
                    counter.add_metric([*sample.labels(), interface.name], read(interface))
            yield counter
        for series in GUEST_SERIES:
            if series.name == "processes":
                continue
            kind = CounterMetricFamily if series.counter else GaugeMetricFamily
            name = f"vmrt_container_{series.name}".removesuffix("_total")
            family = kind(name, series.help, labels=list(CONTAINER_LABELS))
            for sample in samples:
                for c in sample.containers:
                    family.add_metric([*sample.labels()[:3], c.name, c.container_id],
                                      series.value(c.usage))
            yield family


def watch_pods(runtime: Runtime) -> None:
    """Pod samples in the Prometheus registry, taken through this event loop."""
    runtime.metrics.registry.register(
        _PodCollector(runtime, Sampler(runtime), asyncio.get_running_loop()))
