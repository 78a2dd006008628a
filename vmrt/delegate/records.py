"""vmrt's own record of the pods and containers it gave to delegates.

It routes every later call on them, survives a vmrtd restart (a JSON file in
the storage root), and keeps each one's last known listing entry, so that
while its delegate is down the listings still show it, as it was last seen,
and kubelet does not take it for gone.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.errors import InvalidArgumentError
from vmrt.sandbox.persist import read_json, write_json

log = logging.getLogger(__name__)


def _encode(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


@dataclass
class Entry:
    delegate: str
    pod_id: str
    item: Any  # the last api.PodSandbox or api.Container seen
    since: float = 0.0  # time.monotonic() when vmrt recorded it; 0 when loaded


class DelegatedRecords:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pods: dict[str, Entry] = {}
        self.containers: dict[str, Entry] = {}

    def load(self) -> None:
        if not self.path.exists():
            return
        data = read_json(self.path)
        for key, table, kind in (("pods", self.pods, api.PodSandbox),
                                 ("containers", self.containers, api.Container)):
            for object_id, entry in data.get(key, {}).items():
                item = kind()
                item.ParseFromString(base64.b64decode(entry["item"]))
                table[object_id] = Entry(entry["delegate"], entry["pod_id"], item)
        log.info("%d pods and %d containers run by delegates", len(self.pods),
                 len(self.containers))

    def save(self) -> None:
        write_json(self.path, {
            key: {object_id: {"delegate": e.delegate, "pod_id": e.pod_id,
                              "item": _encode(e.item)} for object_id, e in table.items()}
            for key, table in (("pods", self.pods), ("containers", self.containers))})

    def add_pod(self, delegate: str, item: api.PodSandbox) -> None:
        self.pods[item.id] = Entry(delegate, item.id, item, time.monotonic())
        self.save()

    def add_container(self, delegate: str, item: api.Container) -> None:
        self.containers[item.id] = Entry(delegate, item.pod_sandbox_id, item, time.monotonic())
        self.save()

    def drop_pod(self, pod_id: str) -> None:
        self.pods.pop(pod_id, None)
        for container_id in [c for c, e in self.containers.items() if e.pod_id == pod_id]:
            del self.containers[container_id]
        self.save()

    def drop_container(self, container_id: str) -> None:
        if self.containers.pop(container_id, None) is not None:
            self.save()

    def refresh(self, table: dict[str, Entry], delegate: str, items: list[Any],
                asked_at: float | None) -> list[Any]:
        """A listing from ``delegate``: the items vmrt gave it, each remembered
        as now seen. A complete (unfiltered) listing, asked for at
        ``asked_at`` (None: a filtered one), that lacks one recorded before
        it was asked means the delegate has lost it: the record goes too
        (one recorded since may simply be newer than the listing)."""
        seen = {item.id: item for item in items if item.id in table
                and table[item.id].delegate == delegate}
        changed = False
        for object_id, item in seen.items():
            if table[object_id].item != item:
                table[object_id].item = item
                changed = True
        if asked_at is not None:
            for object_id in [i for i, e in table.items() if e.delegate == delegate
                              and i not in seen and e.since < asked_at]:
                log.info("delegate %s no longer has %s: record dropped", delegate, object_id[:13])
                del table[object_id]
                changed = True
        if changed:
            self.save()
        return list(seen.values())

    @staticmethod
    def resolve(table: dict[str, Entry], value: str, local: dict[str, Any],
                field: str) -> str | None:
        """The full id of the delegated object ``value`` names (an id, or a
        prefix unique among delegated and local objects together); None when
        it names none, or names a local one."""
        if not value or value in local:
            return None
        if value in table:
            return value
        matches = [i for i in table if i.startswith(value)]
        if not matches:
            return None
        if len(matches) > 1 or any(i.startswith(value) for i in local):
            raise InvalidArgumentError(f"{field}: prefix {value!r} is ambiguous")
        return matches[0]
