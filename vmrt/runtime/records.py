"""What vmrtd remembers about pods and containers: typed records and their states.

Each record splits what never changes after creation (``meta``: ids, names,
the CRI config) from its ``status``. Both are frozen; a status changes only
through ``vmrt.runtime.store.RecordStore``, which checks the move against
the transition tables here.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cri_api.v1 import api_pb2 as api

from vmrt.errors import FailedPreconditionError
from vmrt.network.pod import PodNetworkState
from vmrt.sandbox.settings import VMConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
T = TypeVar("T")
M = TypeVar("M", "PodMeta", "ContainerMeta")
S = TypeVar("S", "PodStatus", "ContainerStatus")


_OBJECT_ID = re.compile(r"[0-9a-f]{64}")


def is_object_id(text: str) -> bool:
    """The form of the ids vmrt gives pods and containers (64 hex digits)."""
    return _OBJECT_ID.fullmatch(text) is not None


class PodState(enum.StrEnum):
    STARTING = "starting"  # only while RunPodSandbox runs; a failure removes the record
    # (or, if undoing it failed, leaves it NOTREADY for a retry)
    READY = "ready"
    NOTREADY = "notready"


class ContainerState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


# As Kata's validTransition: every move a status may make. Staying put is
# always allowed (an update of other fields).
POD_TRANSITIONS: dict[PodState, frozenset[PodState]] = {
    # NOTREADY from STARTING: a failed start whose undoing failed too.
    PodState.STARTING: frozenset({PodState.READY, PodState.NOTREADY}),
    PodState.READY: frozenset({PodState.NOTREADY}),
    PodState.NOTREADY: frozenset(),
}
CONTAINER_TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    ContainerState.CREATED: frozenset({ContainerState.RUNNING, ContainerState.EXITED}),
    ContainerState.RUNNING: frozenset({ContainerState.EXITED}),
    ContainerState.EXITED: frozenset(),
}


def _encode(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _decode(message: T, encoded: str) -> T:
    message.ParseFromString(base64.b64decode(encoded))  # type: ignore[attr-defined]
    return message


# -- pods ---------------------------------------------------------------------

@dataclass(frozen=True)
class PodMeta:
    id: str
    name: str
    uid: str
    namespace: str
    attempt: int
    created_at: int
    runtime_handler: str
    config_b64: str


@dataclass(frozen=True)
class VMState:
    """The pod's VM: the settings it was started with, and where it runs."""

    settings: VMConfig
    pid: int = 0
    start_time: int = 0
    boot_seconds: float = 0.0
    # The key of the template it was restored from; "": it booted.
    template: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "pid": self.pid,
                "start_time": self.start_time, "boot_seconds": self.boot_seconds,
                "template": self.template}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMState:
        return cls(settings=VMConfig.from_dict(data["settings"]), pid=int(data["pid"]),
                   start_time=int(data["start_time"]),
                   boot_seconds=float(data["boot_seconds"]),
                   template=str(data.get("template", "")))


@dataclass(frozen=True)
class PodStatus:
    state: PodState = PodState.STARTING
    reason: str = ""
    vm: VMState | None = None
    network: PodNetworkState = field(default_factory=PodNetworkState)

    def to_dict(self) -> dict[str, Any]:
        return {"state": str(self.state), "reason": self.reason,
                "vm": self.vm.to_dict() if self.vm else None,
                "network": dataclasses.asdict(self.network)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PodStatus:
        vm = data.get("vm")
        return cls(state=PodState(data["state"]), reason=str(data["reason"]),
                   vm=VMState.from_dict(vm) if vm else None,
                   network=PodNetworkState.of(data["network"]))


class _Record(Generic[M, S]):
    """A fixed ``meta`` and the current ``status``, which only the store replaces."""

    def __init__(self, meta: M, status: S) -> None:
        self.meta: M = meta
        self._status: S = status

    @property
    def status(self) -> S:
        return self._status

    def _swap(self, status: S) -> None:
        """The store's, once the new status is on disk."""
        self._status = status

    @property
    def id(self) -> str:
        return self.meta.id

    def to_dict(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, "meta": dataclasses.asdict(self.meta),
                "status": self._status.to_dict()}


class PodRecord(_Record[PodMeta, PodStatus]):
    """One pod."""

    def __init__(self, meta: PodMeta, status: PodStatus | None = None) -> None:
        super().__init__(meta, status or PodStatus())

    # Shorthands for what callers read most.
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def uid(self) -> str:
        return self.meta.uid

    @property
    def attempt(self) -> int:
        return self.meta.attempt

    @property
    def created_at(self) -> int:
        return self.meta.created_at

    @property
    def runtime_handler(self) -> str:
        return self.meta.runtime_handler

    @property
    def state(self) -> PodState:
        return self._status.state

    @property
    def reason(self) -> str:
        return self._status.reason

    @property
    def vm(self) -> VMState | None:
        return self._status.vm

    @property
    def network(self) -> PodNetworkState:
        return self._status.network

    @property
    def key(self) -> str:
        """The CRI name reservation: one live pod per name/namespace/uid/attempt."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"

    def config(self) -> api.PodSandboxConfig:
        return _decode(api.PodSandboxConfig(), self.meta.config_b64)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PodRecord:
        _check_version(data)
        return cls(PodMeta(**_known(PodMeta, data["meta"])), PodStatus.from_dict(data["status"]))

    @classmethod
    def new(cls, pod_id: str, config: api.PodSandboxConfig, handler: str, created_at: int,
            vm: VMState | None = None) -> PodRecord:
        meta = config.metadata
        return cls(PodMeta(id=pod_id, name=meta.name, uid=meta.uid, namespace=meta.namespace,
                           attempt=meta.attempt, created_at=created_at, runtime_handler=handler,
                           config_b64=_encode(config)), PodStatus(vm=vm))


# -- containers ---------------------------------------------------------------

@dataclass(frozen=True)
class ContainerMeta:
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
    layers: tuple[str, ...] = ()
    # The signal StopContainer sends first (the config's or the image's), fixed
    # at create as containerd does; 0 in records from before it was kept.
    stop_signal: int = 0
    # Why StartContainer will fail (the command is not in the image); the
    # guest has no such container. Empty for every container that can start.
    start_error: str = ""


@dataclass(frozen=True)
class ContainerStatus:
    state: ContainerState = ContainerState.CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # How far into the guest's output spools the CRI log has been written.
    stdout_offset: int = 0
    stderr_offset: int = 0
    # The resources of the latest UpdateContainerResources (encoded
    # LinuxContainerResources); empty: the config's still hold.
    resources_b64: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = str(self.state)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerStatus:
        return cls(**{**_known(cls, data), "state": ContainerState(data["state"])})


class ContainerRecord(_Record[ContainerMeta, ContainerStatus]):
    """One container."""

    def __init__(self, meta: ContainerMeta, status: ContainerStatus | None = None) -> None:
        super().__init__(meta, status or ContainerStatus())

    @property
    def pod_id(self) -> str:
        return self.meta.pod_id

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def attempt(self) -> int:
        return self.meta.attempt

    @property
    def created_at(self) -> int:
        return self.meta.created_at

    @property
    def image(self) -> str:
        return self.meta.image

    @property
    def image_ref(self) -> str:
        return self.meta.image_ref

    @property
    def log_path(self) -> str:
        return self.meta.log_path

    @property
    def layers(self) -> tuple[str, ...]:
        return self.meta.layers

    @property
    def state(self) -> ContainerState:
        return self._status.state

    def config(self) -> api.ContainerConfig:
        return _decode(api.ContainerConfig(), self.meta.config_b64)

    def resources(self) -> api.LinuxContainerResources:
        """What the container runs with now: the latest update's, else the config's."""
        if self._status.resources_b64:
            return _decode(api.LinuxContainerResources(), self._status.resources_b64)
        return self.config().linux.resources

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerRecord:
        _check_version(data)
        meta = _known(ContainerMeta, data["meta"])
        meta["layers"] = tuple(meta.get("layers", ()))
        return cls(ContainerMeta(**meta), ContainerStatus.from_dict(data["status"]))

    @classmethod
    def new(cls, container_id: str, pod_id: str, config: api.ContainerConfig, image_ref: str,
            log_path: str, created_at: int, process_json: str = "",
            layers: tuple[str, ...] = (), stop_signal: int = 0,
            start_error: str = "") -> ContainerRecord:
        return cls(ContainerMeta(
            id=container_id, pod_id=pod_id, name=config.metadata.name,
            attempt=config.metadata.attempt, created_at=created_at, image=config.image.image,
            image_ref=image_ref, log_path=log_path, config_b64=_encode(config),
            process_json=process_json, layers=layers, stop_signal=stop_signal,
            start_error=start_error))


def with_resources(status: ContainerStatus,
                   resources: api.LinuxContainerResources) -> ContainerStatus:
    return dataclasses.replace(status, resources_b64=_encode(resources))


def _known(kind: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The keys ``kind`` has: a record a later vmrtd wrote (a rollback) may
    carry fields this one does not know; they are left out, not fatal."""
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def _check_version(data: dict[str, Any]) -> None:
    version = data.get("version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"record version {version!r}; this vmrtd reads {SCHEMA_VERSION}")


def check_transition(table: dict[Any, frozenset[Any]], kind: str, object_id: str,
                     current: enum.StrEnum, new: enum.StrEnum) -> None:
    if new != current and new not in table[current]:
        raise FailedPreconditionError(f"{kind} {object_id} is {current}; it cannot become {new}")
