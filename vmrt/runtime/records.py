"""What vmrtd remembers about pods and containers, and the one way to change it.

Each record splits what never changes after creation (ids, names, the CRI
config) from its status. Status changes go through ``RecordStore.update``,
which checks the move against the transition table and writes the record
atomically, so a daemon killed at any moment restarts from a consistent
picture.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.errors import FailedPreconditionError
from vmrt.sandbox.persist import read_json, remove, write_json

log = logging.getLogger(__name__)

# Pod states: "starting" only while RunPodSandbox runs; a failure there rolls
# the record back entirely. CRI sees ready as SANDBOX_READY, the rest NOTREADY.
POD_TRANSITIONS: dict[str, set[str]] = {
    "starting": {"ready"},
    "ready": {"notready"},
    "notready": set(),
}

# Container states follow the OCI names; "unknown" is for a container whose
# VM could not be reached after a restart.
CONTAINER_TRANSITIONS: dict[str, set[str]] = {
    "created": {"running", "exited", "unknown"},
    "running": {"exited", "unknown"},
    "unknown": {"exited"},
    "exited": set(),
}


def _encode(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


@dataclass
class PodRecord:
    id: str
    name: str
    uid: str
    namespace: str
    attempt: int
    created_at: int
    runtime_handler: str
    config_b64: str
    # The VM: settings it was started with, and where it runs.
    vm: dict[str, Any] = field(default_factory=dict)
    # vmrt.network.pod.PodNetworkState, as a dict.
    network: dict[str, Any] = field(default_factory=dict)
    state: str = "starting"
    reason: str = ""

    @property
    def key(self) -> str:
        """The CRI name reservation: one live pod per name/namespace/uid/attempt."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"

    def config(self) -> api.PodSandboxConfig:
        config = api.PodSandboxConfig()
        config.ParseFromString(base64.b64decode(self.config_b64))
        return config

    @classmethod
    def new(cls, pod_id: str, config: api.PodSandboxConfig, handler: str,
            created_at: int) -> PodRecord:
        meta = config.metadata
        return cls(id=pod_id, name=meta.name, uid=meta.uid, namespace=meta.namespace,
                   attempt=meta.attempt, created_at=created_at, runtime_handler=handler,
                   config_b64=_encode(config))


@dataclass
class ContainerRecord:
    id: str
    pod_id: str
    name: str
    attempt: int
    created_at: int
    image: str
    image_ref: str
    log_path: str
    config_b64: str
    # The OCI "process" the container runs with: execs start from it.
    process_json: str = ""
    # The image layers (diff_ids) its root filesystem is built on.
    layers: list[str] = field(default_factory=list)
    state: str = "created"
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # How far into the guest's output spools the CRI log has been written.
    stdout_offset: int = 0
    stderr_offset: int = 0

    def config(self) -> api.ContainerConfig:
        config = api.ContainerConfig()
        config.ParseFromString(base64.b64decode(self.config_b64))
        return config

    @classmethod
    def new(cls, container_id: str, pod_id: str, config: api.ContainerConfig, image_ref: str,
            log_path: str, created_at: int) -> ContainerRecord:
        return cls(id=container_id, pod_id=pod_id, name=config.metadata.name,
                   attempt=config.metadata.attempt, created_at=created_at,
                   image=config.image.image, image_ref=image_ref, log_path=log_path,
                   config_b64=_encode(config))


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class RecordStore:
    """All records in memory, each mirrored to ``<root>/pods/<pod>/...json``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "pods"
        self.pods: dict[str, PodRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}

    def _pod_file(self, pod_id: str) -> Path:
        return self.root / pod_id / "pod.json"

    def _container_file(self, record: ContainerRecord) -> Path:
        return self.root / record.pod_id / "containers" / f"{record.id}.json"

    def load(self) -> None:
        if not self.root.exists():
            return
        for pod_file in sorted(self.root.glob("*/pod.json")):
            try:
                pod = _from_dict(PodRecord, read_json(pod_file))
            except (OSError, ValueError, TypeError) as exc:
                log.error("skipping unreadable pod record %s: %s", pod_file, exc)
                continue
            self.pods[pod.id] = pod
            for container_file in sorted((pod_file.parent / "containers").glob("*.json")):
                try:
                    container = _from_dict(ContainerRecord, read_json(container_file))
                except (OSError, ValueError, TypeError) as exc:
                    log.error("skipping unreadable container record %s: %s",
                              container_file, exc)
                    continue
                self.containers[container.id] = container

    # -- creation and removal -------------------------------------------

    def add_pod(self, pod: PodRecord) -> None:
        self.pods[pod.id] = pod
        write_json(self._pod_file(pod.id), dataclasses.asdict(pod))

    def add_container(self, container: ContainerRecord) -> None:
        self.containers[container.id] = container
        write_json(self._container_file(container), dataclasses.asdict(container))

    def remove_pod(self, pod_id: str) -> None:
        for container in self.pod_containers(pod_id):
            self.containers.pop(container.id, None)
        self.pods.pop(pod_id, None)
        shutil.rmtree(self.root / pod_id, ignore_errors=True)

    def remove_container(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            remove(self._container_file(container))

    def pod_containers(self, pod_id: str) -> list[ContainerRecord]:
        return [c for c in self.containers.values() if c.pod_id == pod_id]

    # -- the one way status changes --------------------------------------

    def update_pod(self, pod: PodRecord, **changes: Any) -> None:
        self._check(POD_TRANSITIONS, "pod", pod.id, pod.state, changes.get("state"))
        for key, value in changes.items():
            setattr(pod, key, value)
        write_json(self._pod_file(pod.id), dataclasses.asdict(pod))

    def update_container(self, container: ContainerRecord, *, durable: bool = True,
                         **changes: Any) -> None:
        self._check(CONTAINER_TRANSITIONS, "container", container.id, container.state,
                    changes.get("state"))
        for key, value in changes.items():
            setattr(container, key, value)
        write_json(self._container_file(container), dataclasses.asdict(container),
                   fsync=durable)

    @staticmethod
    def _check(table: dict[str, set[str]], kind: str, object_id: str, current: str,
               new: str | None) -> None:
        if new is None or new == current:
            return
        if new not in table.get(current, set()):
            raise FailedPreconditionError(f"{kind} {object_id} is {current}; it cannot become "
                                          f"{new}")
