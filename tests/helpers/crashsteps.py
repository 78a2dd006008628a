"""vmrtd killed at one step of RunPodSandbox, CreateContainer or StopPodSandbox
(``VMRT_CRASH_AT``, see vmrt/crashpoint.py), restarted, and judged.

``crash_and_recover`` is shared by the suite (one step of each operation)
and ``bench/crash_steps.py`` (every step). It returns what it found; the
caller asserts (the suite) or records (the script).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, wait_for
from tests.helpers import leaks
from vmrt import crashpoint


def _crash(daemon: Daemon, call: Any) -> str:
    """Run ``call``, which must take vmrtd down with it; the call's error code."""
    try:
        call()
    except grpc.RpcError as exc:
        code = exc.code().name
    else:
        code = "OK"
    assert daemon.proc is not None
    daemon.proc.wait(30)
    return code


def _works(daemon: Daemon, pod_id: str, config: api.PodSandboxConfig) -> bool:
    container = daemon.run_container(pod_id, config, ["sleep", "300"])
    return daemon.exec(container, ["echo", "ok"]).stdout == b"ok\n"


def _strays(daemon: Daemon) -> dict[str, object]:
    """Host leftovers of containers that the restarted vmrtd does not list."""
    listed = {c.id for c in daemon.runtime.ListContainers(api.ListContainersRequest()).containers}
    found: dict[str, object] = {}
    directory = daemon.root / "containers"
    dirs = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if set(dirs) - listed:
        found["container_dirs"] = sorted(set(dirs) - listed)
    intents = sorted(p.name for p in daemon.root.glob("pods/*/creating/*"))
    if intents:
        found["intents"] = intents
    return found


def crash_and_recover(daemon: Daemon, op: str, step: str) -> dict[str, Any]:
    """``daemon`` is started, without a crash step. Afterwards it runs again,
    with no pods; the result says what recovery made of the step."""
    assert step in crashpoint.STEPS[op]
    daemon.stop()
    daemon.env = {crashpoint.ENV: f"{op}:{step}"}
    daemon.start()
    config = daemon.pod_config()
    result: dict[str, Any] = {"op": op, "step": step}
    pod_id = ""
    if op == "run":
        result["call"] = _crash(daemon, lambda: daemon.run_pod(config))
        pod_id = next((p.name for p in (daemon.root / "pods").iterdir()), "")
    else:
        pod_id = daemon.run_pod(config)
        if op == "create":
            result["call"] = _crash(daemon, lambda: daemon.create(pod_id, config, ["sleep", "300"]))
        else:
            daemon.run_container(pod_id, config, ["sleep", "300"])
            result["call"] = _crash(daemon, lambda: daemon.runtime.StopPodSandbox(
                api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60))
    if pod_id and pod_id not in daemon.pod_ids:
        daemon.pod_ids.append(pod_id)
    daemon.env = {}
    began = time.monotonic()
    daemon.start()
    pods = {p.id: p for p in daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items}
    result["served_after_s"] = round(time.monotonic() - began, 2)
    pod = pods.get(pod_id)
    if pod is None:
        result["pod"] = "gone"
    elif pod.state == api.SANDBOX_READY:
        result["pod"] = "ready"
        result["containers"] = sorted(
            api.ContainerState.Name(c.state) for c in daemon.runtime.ListContainers(
                api.ListContainersRequest()).containers)
        result["works"] = _works(daemon, pod_id, config)
    else:
        result["pod"] = "notready"
        result["reason"] = daemon.notready_reason(pod_id)
    result["strays"] = _strays(daemon)
    # kubelet's next step: stop and remove; then nothing of the pod may be left.
    for listed in pods:
        daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=listed),
                                      timeout=60)
        daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=listed),
                                        timeout=60)
    wait_for(lambda: not leaks.qemu_processes(str(daemon.state)), timeout=30)
    result["leaks"] = {**leaks.find(daemon.state), **daemon.network_leaks()}
    left = leaks.cgroup_leaks(daemon.cgroup_parent)
    if left:
        result["leaks"]["cgroups"] = left
    result["ok"] = not result["leaks"] and not result["strays"] and (
        result["pod"] != "ready" or result["works"])
    return result
