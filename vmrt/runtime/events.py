"""Container lifecycle events for CRI GetContainerEvents subscribers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerEvent:
    container_id: str
    pod_id: str
    kind: str  # created | started | stopped | deleted
    at_ns: int


class EventBus:
    MAX_QUEUED = 1000

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[ContainerEvent]] = set()

    def publish(self, container_id: str, pod_id: str, kind: str) -> None:
        event = ContainerEvent(container_id, pod_id, kind, time.time_ns())
        for queue in list(self._queues):
            if queue.qsize() < self.MAX_QUEUED:
                queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[ContainerEvent]:
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ContainerEvent]) -> None:
        self._queues.discard(queue)
