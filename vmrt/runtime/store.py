"""The records in memory and on disk, and the one way a status changes.

``update_pod`` / ``update_container`` apply a function to the current
status, check the move against the transition table, write the record
atomically and only then swap the new status in. So memory never runs ahead
of the disk, and a record that has been removed cannot be written back.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from vmrt.errors import NotFoundError
from vmrt.runtime import upgrade
from vmrt.runtime.records import (
    CONTAINER_TRANSITIONS,
    POD_TRANSITIONS,
    ContainerMeta,
    ContainerRecord,
    ContainerStatus,
    PodRecord,
    PodStatus,
    check_transition,
    is_object_id,
)
from vmrt.sandbox.persist import read_json, remove, write_json

log = logging.getLogger(__name__)



class RecordStore:
    """All records in memory, each mirrored to ``<root>/pods/<pod>/...json``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "pods"
        self.pods: dict[str, PodRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}
        # Pods whose record could not be read: left on disk for a person to
        # look at, and their VMs left alone (not killed as leaked).
        self.unreadable: set[str] = set()
        # CreateContainer's intents: container id -> pod id, written before
        # anything of the container exists and dropped once its record does
        # (or its parts are gone). What a crash leaves here, recovery removes.
        self.intents: dict[str, str] = {}

    def _pod_file(self, pod_id: str) -> Path:
        return self.root / pod_id / "pod.json"

    def _container_file(self, meta: ContainerMeta) -> Path:
        return self.root / meta.pod_id / "containers" / f"{meta.id}.json"

    def _intent_file(self, pod_id: str, container_id: str) -> Path:
        return self.root / pod_id / "creating" / f"{container_id}.json"

    def load(self) -> None:
        if not self.root.exists():
            return
        for pod_file in sorted(self.root.glob("*/pod.json")):
            try:
                pod = PodRecord.from_dict(upgrade.pod(read_json(pod_file)))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("skipping unreadable pod record %s (kept as it is): %s", pod_file, exc)
                self.unreadable.add(pod_file.parent.name)
                continue
            self.pods[pod.id] = pod
            for container_file in sorted((pod_file.parent / "containers").glob("*.json")):
                try:
                    container = ContainerRecord.from_dict(
                        upgrade.container(read_json(container_file)))
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    log.error("skipping unreadable container record %s: %s",
                              container_file, exc)
                    continue
                self.containers[container.id] = container
            for intent in sorted((pod_file.parent / "creating").glob("*.json")):
                # The name is what matters (the file may be cut short by a crash).
                if is_object_id(intent.stem):
                    self.intents[intent.stem] = pod.id

    # -- creation and removal -------------------------------------------

    def add_pod(self, pod: PodRecord) -> None:
        write_json(self._pod_file(pod.id), pod.to_dict())
        self.pods[pod.id] = pod

    def add_container(self, container: ContainerRecord) -> None:
        if self.pods.get(container.pod_id) is None:
            raise NotFoundError(f"pod sandbox {container.pod_id} was removed")
        write_json(self._container_file(container.meta), container.to_dict())
        self.containers[container.id] = container

    def add_intent(self, pod_id: str, container_id: str) -> None:
        """CreateContainer is about to make ``container_id`` in ``pod_id``."""
        if self.pods.get(pod_id) is None:
            raise NotFoundError(f"pod sandbox {pod_id} was removed")
        write_json(self._intent_file(pod_id, container_id),
                   {"id": container_id, "pod_id": pod_id})
        self.intents[container_id] = pod_id

    def drop_intent(self, container_id: str) -> None:
        pod_id = self.intents.pop(container_id, None)
        if pod_id is not None:
            remove(self._intent_file(pod_id, container_id))

    def pod_intents(self, pod_id: str) -> list[str]:
        return [c for c, p in self.intents.items() if p == pod_id]

    def remove_pod(self, pod_id: str) -> None:
        for container in self.pod_containers(pod_id):
            self.containers.pop(container.id, None)
        for container_id in self.pod_intents(pod_id):
            self.intents.pop(container_id, None)
        self.pods.pop(pod_id, None)
        shutil.rmtree(self.root / pod_id, ignore_errors=True)

    def remove_container(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            remove(self._container_file(container.meta))

    def pod_containers(self, pod_id: str) -> list[ContainerRecord]:
        return [c for c in self.containers.values() if c.pod_id == pod_id]

    # -- the one way status changes --------------------------------------

    def update_pod(self, pod: PodRecord, change: Callable[[PodStatus], PodStatus]) -> None:
        if self.pods.get(pod.id) is not pod:
            raise NotFoundError(f"pod sandbox {pod.id} was removed")
        new = change(pod.status)
        check_transition(POD_TRANSITIONS, "pod", pod.id, pod.state, new.state)
        write_json(self._pod_file(pod.id), {**pod.to_dict(), "status": new.to_dict()})
        pod._swap(new)

    def update_container(self, container: ContainerRecord,
                         change: Callable[[ContainerStatus], ContainerStatus], *,
                         durable: bool = True) -> None:
        if self.containers.get(container.id) is not container:
            raise NotFoundError(f"container {container.id} was removed")
        new = change(container.status)
        check_transition(CONTAINER_TRANSITIONS, "container", container.id, container.state,
                         new.state)
        write_json(self._container_file(container.meta),
                   {**container.to_dict(), "status": new.to_dict()}, fsync=durable)
        container._swap(new)
