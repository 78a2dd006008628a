"""vmrt's records -> CRI messages."""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2 as api

from vmrt.runtime import stopsignal
from vmrt.runtime.records import ContainerRecord, ContainerState, PodRecord, PodState

CONTAINER_STATES: dict[ContainerState, api.ContainerState.ValueType] = {
    ContainerState.CREATED: api.CONTAINER_CREATED,
    ContainerState.RUNNING: api.CONTAINER_RUNNING,
    ContainerState.EXITED: api.CONTAINER_EXITED,
}
# CRI's CONTAINER_UNKNOWN is a state vmrt never reports: a container whose VM
# is gone is EXITED, with the reason.
CONTAINER_STATE_NAMES: dict[api.ContainerState.ValueType, ContainerState | None] = {
    **{v: k for k, v in CONTAINER_STATES.items()}, api.CONTAINER_UNKNOWN: None}


def pod_state(pod: PodRecord) -> api.PodSandboxState.ValueType:
    return api.SANDBOX_READY if pod.state == PodState.READY else api.SANDBOX_NOTREADY


def pod_item(pod: PodRecord) -> api.PodSandbox:
    config = pod.config()
    return api.PodSandbox(id=pod.id, metadata=config.metadata, state=pod_state(pod),
                          created_at=pod.created_at, labels=config.labels,
                          annotations=config.annotations, runtime_handler=pod.runtime_handler)


def pod_status(pod: PodRecord) -> api.PodSandboxStatus:
    config = pod.config()
    options = config.linux.security_context.namespace_options
    ips = list(pod.network.ips)
    network = api.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[api.PodIP(ip=ip) for ip in ips[1:]])
    return api.PodSandboxStatus(
        id=pod.id, metadata=config.metadata, state=pod_state(pod), created_at=pod.created_at,
        network=network,
        linux=api.LinuxPodSandboxStatus(namespaces=api.Namespace(options=options)),
        labels=config.labels, annotations=config.annotations,
        runtime_handler=pod.runtime_handler)


def pod_info(pod: PodRecord, sandbox_dir: str, tenant: str) -> dict[str, str]:
    network = pod.network
    return {"info": json.dumps({
        "id": pod.id, "state": pod.state, "reason": pod.reason, "tenant": tenant,
        "vm": {**pod.vm.settings.to_dict(), "pid": pod.vm.pid, "start_time": pod.vm.start_time,
               "boot_seconds": pod.vm.boot_seconds,
               "from_template": pod.vm.template} if pod.vm else None,
        "runtimeHandler": pod.runtime_handler, "sandboxDir": sandbox_dir,
        "network": {"mode": network.mode, "netns": network.netns,
                    "network_name": network.network_name, "ips": network.ips},
        "netnsPath": f"/var/run/netns/{network.netns}" if network.netns else "",
        "consoleLog": f"{sandbox_dir}/console.log",
    }, sort_keys=True)}


def image_spec(container: ContainerRecord) -> api.ImageSpec:
    return api.ImageSpec(image=container.image)


def container_item(container: ContainerRecord) -> api.Container:
    config = container.config()
    return api.Container(id=container.id, pod_sandbox_id=container.pod_id,
                         metadata=config.metadata, image=image_spec(container),
                         image_ref=container.image_ref, image_id=container.image_ref,
                         state=CONTAINER_STATES[container.state],
                         created_at=container.created_at, labels=config.labels,
                         annotations=config.annotations)


def container_status(container: ContainerRecord) -> api.ContainerStatus:
    config = container.config()
    meta, status = container.meta, container.status
    process = json.loads(meta.process_json) if meta.process_json else {}
    user = process.get("user", {})
    return api.ContainerStatus(
        id=container.id, metadata=config.metadata, state=CONTAINER_STATES[status.state],
        created_at=meta.created_at, started_at=status.started_at,
        finished_at=status.finished_at, exit_code=status.exit_code,
        image=image_spec(container), image_ref=meta.image_ref,
        image_id=meta.image_ref, reason=status.reason, message=status.message,
        labels=config.labels, annotations=config.annotations, mounts=config.mounts,
        log_path=container.log_path,
        resources=api.ContainerResources(linux=container.resources()),
        stop_signal=stopsignal.to_cri(meta.stop_signal) if meta.stop_signal else 0,  # type: ignore[arg-type]
        user=api.ContainerUser(linux=api.LinuxContainerUser(
            uid=user.get("uid", 0), gid=user.get("gid", 0),
            supplemental_groups=user.get("additionalGids", []))),
    )


def container_info(container: ContainerRecord) -> dict[str, str]:
    return {"info": json.dumps({
        "id": container.id, "sandboxID": container.pod_id, "state": container.state,
        "logOffsets": {"stdout": container.status.stdout_offset,
                       "stderr": container.status.stderr_offset},
        "process": json.loads(container.meta.process_json) if container.meta.process_json
        else None,
    }, sort_keys=True)}
