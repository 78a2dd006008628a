"""Lifecycle events for CRI GetContainerEvents subscribers: of containers,
and of pod sandboxes (their ``container_id`` is the pod's id), as containerd
sends them for kubelet's evented PLEG.

Each event carries the pod's and its containers' records *as they were*
when it happened (records are frozen; a snapshot is new record objects
around the same meta and status), so a subscriber that reads it later, or
after the pod is gone (the sandbox's DELETED event), still gets the status
kubelet needs to find the pod."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmrt.runtime.records import ContainerRecord, PodRecord

Snapshot = tuple[PodRecord | None, tuple[ContainerRecord, ...]]


@dataclass(frozen=True)
class ContainerEvent:
    container_id: str  # the pod's id for a pod sandbox's event
    pod_id: str
    kind: str  # created | started | stopped | deleted
    at_ns: int
    pod: PodRecord | None = None
    containers: tuple[ContainerRecord, ...] = ()


class EventBus:
    MAX_QUEUED = 1000

    def __init__(self, snapshot: Callable[[str], Snapshot] = lambda pod_id: (None, ())) -> None:
        self._queues: set[asyncio.Queue[ContainerEvent]] = set()
        self._snapshot = snapshot

    def publish(self, container_id: str, pod_id: str, kind: str) -> None:
        if not self._queues:
            return
        pod, containers = self._snapshot(pod_id)
        event = ContainerEvent(container_id, pod_id, kind, time.time_ns(), pod, containers)
        for queue in list(self._queues):
            if queue.qsize() < self.MAX_QUEUED:
                queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[ContainerEvent]:
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ContainerEvent]) -> None:
        self._queues.discard(queue)
