"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt import metrics, safefs
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.cri.base import Base
from vmrt.network.pod import IFNAME
from vmrt.runtime.containers import ContainerFilter
from vmrt.runtime.pods import PodFilter
from vmrt.runtime.records import ContainerRecord, ContainerState, PodRecord

log = logging.getLogger(__name__)


def _u64(value: int) -> api.UInt64Value:
    return api.UInt64Value(value=value)


def network_usage(raw: pb.ContainerStatsResponse) -> api.NetworkUsage | None:
    """The guest's interfaces as CRI NetworkUsage, the pod's NIC the default."""
    interfaces = [api.NetworkInterfaceUsage(
        name=i.name, rx_bytes=_u64(i.rx_bytes), rx_errors=_u64(i.rx_errors),
        tx_bytes=_u64(i.tx_bytes), tx_errors=_u64(i.tx_errors))
        for i in metrics.guest_interfaces(raw)]
    if not interfaces:
        return None
    default = next((i for i in interfaces if i.name == IFNAME), interfaces[0])
    return api.NetworkUsage(timestamp=raw.timestamp_ns, default_interface=default,
                            interfaces=[i for i in interfaces if i is not default])


class StatsRPCs(Base):
    def _nano_cores(self, key: str, timestamp: int, usage: int) -> int:
        previous = self.cpu_samples.get(key)
        self.cpu_samples[key] = (timestamp, usage)
        if previous is None or timestamp <= previous[0]:
            return 0
        return max(0, (usage - previous[1]) * 1_000_000_000 // (timestamp - previous[0]))

    def _cpu(self, key: str, raw: pb.ContainerStatsResponse) -> api.CpuUsage:
        return api.CpuUsage(timestamp=raw.timestamp_ns,
                            usage_core_nano_seconds=_u64(raw.cpu_usage_ns),
                            usage_nano_cores=_u64(self._nano_cores(key, raw.timestamp_ns,
                                                                   raw.cpu_usage_ns)))

    @staticmethod
    def _memory(raw: pb.ContainerStatsResponse) -> api.MemoryUsage:
        return api.MemoryUsage(timestamp=raw.timestamp_ns,
                               working_set_bytes=_u64(raw.memory_working_set_bytes),
                               usage_bytes=_u64(raw.memory_usage_bytes),
                               rss_bytes=_u64(raw.memory_rss_bytes),
                               page_faults=_u64(raw.page_faults),
                               major_page_faults=_u64(raw.major_page_faults))

    @staticmethod
    def _container_attributes(container: ContainerRecord) -> api.ContainerAttributes:
        config = container.config()
        return api.ContainerAttributes(id=container.id, metadata=config.metadata,
                                       labels=config.labels, annotations=config.annotations)

    @staticmethod
    def _pod_attributes(pod: PodRecord) -> api.PodSandboxAttributes:
        config = pod.config()
        return api.PodSandboxAttributes(id=pod.id, metadata=config.metadata,
                                        labels=config.labels, annotations=config.annotations)

    async def _container_stats(self, container: ContainerRecord) -> api.ContainerStats:
        stats = api.ContainerStats(attributes=self._container_attributes(container))
        upper = self.rt.container_dir(container.id) / "upper"
        used, inodes = await asyncio.to_thread(safefs.tree_usage, upper)
        stats.writable_layer.CopyFrom(api.FilesystemUsage(
            timestamp=time.time_ns(), fs_id=api.FilesystemIdentifier(mountpoint=str(upper)),
            used_bytes=_u64(used), inodes_used=_u64(inodes)))
        raw = await self.containers.usage(container)
        if raw is not None:
            stats.cpu.CopyFrom(self._cpu(container.id, raw))
            stats.memory.CopyFrom(self._memory(raw))
        return stats

    async def _listed_stats(self, container: ContainerRecord) -> api.ContainerStats:
        """A container's stats in a list: its failure leaves its usage out, not the list."""
        try:
            return await self._container_stats(container)
        except Exception as exc:
            log.warning("stats of container %s: %s", container.id[:12], exc)
            return api.ContainerStats(attributes=self._container_attributes(container))

    async def _listed_pod_stats(self, pod: PodRecord) -> api.PodSandboxStats:
        """The same for a pod."""
        try:
            return await self._pod_stats(pod)
        except Exception as exc:
            log.warning("stats of pod %s: %s", pod.id[:12], exc)
            return api.PodSandboxStats(attributes=self._pod_attributes(pod))

    async def ContainerStats(self, request: api.ContainerStatsRequest,
                             context: Any) -> api.ContainerStatsResponse:
        container = self.rt.container(request.container_id)
        return api.ContainerStatsResponse(stats=await self._container_stats(container))

    async def ListContainerStats(self, request: api.ListContainerStatsRequest,
                                 context: Any) -> api.ListContainerStatsResponse:
        flt = request.filter
        found = self.containers.list(ContainerFilter(
            id=flt.id, pod_id=flt.pod_sandbox_id, state=ContainerState.RUNNING,
            labels=tuple(flt.label_selector.items())))
        stats = [await self._listed_stats(c) for c in found]
        return api.ListContainerStatsResponse(stats=stats)

    async def _pod_stats(self, pod: PodRecord) -> api.PodSandboxStats:
        stats = api.PodSandboxStats(attributes=self._pod_attributes(pod))
        raw = await self.pods.usage(pod)
        if raw is None:
            return stats
        linux = stats.linux
        linux.cpu.CopyFrom(self._cpu(pod.id, raw))
        linux.memory.CopyFrom(self._memory(raw))
        linux.process.CopyFrom(api.ProcessUsage(timestamp=raw.timestamp_ns,
                                                process_count=_u64(raw.pids)))
        network = network_usage(raw)
        if network is not None:
            linux.network.CopyFrom(network)
        for container in self.containers.list(ContainerFilter(pod_id=pod.id,
                                                              state=ContainerState.RUNNING)):
            linux.containers.append(await self._listed_stats(container))
        return stats

    async def PodSandboxStats(self, request: api.PodSandboxStatsRequest,
                              context: Any) -> api.PodSandboxStatsResponse:
        pod = self.rt.pod(request.pod_sandbox_id)
        return api.PodSandboxStatsResponse(stats=await self._pod_stats(pod))

    async def ListPodSandboxStats(self, request: api.ListPodSandboxStatsRequest,
                                  context: Any) -> api.ListPodSandboxStatsResponse:
        flt = request.filter
        pods = self.pods.list(PodFilter(id=flt.id, state="ready",
                                        labels=tuple(flt.label_selector.items())))
        return api.ListPodSandboxStatsResponse(
            stats=[await self._listed_pod_stats(pod) for pod in pods])

    async def ListMetricDescriptors(self, request: api.ListMetricDescriptorsRequest,
                                    context: Any) -> api.ListMetricDescriptorsResponse:
        return api.ListMetricDescriptorsResponse(descriptors=metrics.descriptors())

    async def ListPodSandboxMetrics(self, request: api.ListPodSandboxMetricsRequest,
                                    context: Any) -> api.ListPodSandboxMetricsResponse:
        samples = await metrics.Sampler(self.rt).sample()
        return api.ListPodSandboxMetricsResponse(
            pod_metrics=[metrics.pod_metrics(s) for s in samples])
