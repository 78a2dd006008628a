"""vmrt's records -> CRI messages."""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2 as api

from vmrt.runtime.records import ContainerRecord, PodRecord

CONTAINER_STATES: dict[str, api.ContainerState.ValueType] = {
    "created": api.CONTAINER_CREATED,
    "running": api.CONTAINER_RUNNING,
    "exited": api.CONTAINER_EXITED,
    "unknown": api.CONTAINER_UNKNOWN,
}
CONTAINER_STATE_NAMES = {v: k for k, v in CONTAINER_STATES.items()}


def pod_state(pod: PodRecord) -> api.PodSandboxState.ValueType:
    return api.SANDBOX_READY if pod.state == "ready" else api.SANDBOX_NOTREADY


def pod_item(pod: PodRecord) -> api.PodSandbox:
    config = pod.config()
    return api.PodSandbox(id=pod.id, metadata=config.metadata, state=pod_state(pod),
                          created_at=pod.created_at, labels=config.labels,
                          annotations=config.annotations, runtime_handler=pod.runtime_handler)


def pod_status(pod: PodRecord) -> api.PodSandboxStatus:
    config = pod.config()
    options = config.linux.security_context.namespace_options
    ips = list(pod.network.get("ips", []))
    network = api.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[api.PodIP(ip=ip) for ip in ips[1:]])
    return api.PodSandboxStatus(
        id=pod.id, metadata=config.metadata, state=pod_state(pod), created_at=pod.created_at,
        network=network,
        linux=api.LinuxPodSandboxStatus(namespaces=api.Namespace(options=options)),
        labels=config.labels, annotations=config.annotations,
        runtime_handler=pod.runtime_handler)


def pod_info(pod: PodRecord, sandbox_dir: str) -> dict[str, str]:
    return {"info": json.dumps({
        "id": pod.id, "state": pod.state, "reason": pod.reason, "vm": pod.vm,
        "runtimeHandler": pod.runtime_handler, "sandboxDir": sandbox_dir,
        "network": {k: pod.network.get(k) for k in ("mode", "netns", "network_name", "ips")},
        "netnsPath": f"/var/run/netns/{pod.network['netns']}" if pod.network.get("netns")
        else "",
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
    process = json.loads(container.process_json) if container.process_json else {}
    user = process.get("user", {})
    return api.ContainerStatus(
        id=container.id, metadata=config.metadata, state=CONTAINER_STATES[container.state],
        created_at=container.created_at, started_at=container.started_at,
        finished_at=container.finished_at, exit_code=container.exit_code,
        image=image_spec(container), image_ref=container.image_ref,
        image_id=container.image_ref, reason=container.reason, message=container.message,
        labels=config.labels, annotations=config.annotations, mounts=config.mounts,
        log_path=container.log_path,
        resources=api.ContainerResources(linux=config.linux.resources),
        user=api.ContainerUser(linux=api.LinuxContainerUser(
            uid=user.get("uid", 0), gid=user.get("gid", 0),
            supplemental_groups=user.get("additionalGids", []))),
    )


def container_info(container: ContainerRecord) -> dict[str, str]:
    return {"info": json.dumps({
        "id": container.id, "sandboxID": container.pod_id, "state": container.state,
        "logOffsets": {"stdout": container.stdout_offset, "stderr": container.stderr_offset},
        "process": json.loads(container.process_json) if container.process_json else None,
    }, sort_keys=True)}
