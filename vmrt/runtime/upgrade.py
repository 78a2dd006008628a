"""Records written before the schema had a version, read as version 1.

Those files were flat: every field at the top, the VM and the network as
loose dicts. A vmrtd upgraded over running pods must still find them (or it
would kill their VMs as leaked), so the store converts them on load; the
next status change writes them back in the current form.
"""

from __future__ import annotations

import json
from typing import Any

from vmrt.runtime.records import SCHEMA_VERSION, ContainerMeta, ContainerStatus, PodMeta

_POD_META = {f for f in PodMeta.__dataclass_fields__}
_CONTAINER_META = {f for f in ContainerMeta.__dataclass_fields__}
_CONTAINER_STATUS = {f for f in ContainerStatus.__dataclass_fields__}
_VM_RUNNING = ("pid", "start_time", "boot_seconds")


def pod(data: dict[str, Any]) -> dict[str, Any]:
    if "version" in data:
        return data
    old_vm = dict(data.get("vm") or {})
    vm = None
    if old_vm:
        settings = {k: v for k, v in old_vm.items() if k not in (*_VM_RUNNING, "cgroup")}
        relative = old_vm.get("cgroup", "")
        settings["cgroup"] = {"driver": "systemd" if relative.endswith(".scope") else "cgroupfs",
                              "relative": relative, "root": "/sys/fs/cgroup"} if relative else None
        vm = {"settings": settings, "pid": old_vm.get("pid", 0),
              "start_time": old_vm.get("start_time", 0),
              "boot_seconds": old_vm.get("boot_seconds", 0.0)}
    network = dict(data.get("network") or {})
    for name in ("network_config", "args", "cni_result"):
        value = network.get(name)
        network[name] = json.dumps(value) if value else ""
    state = data.get("state", "notready")
    return {"version": SCHEMA_VERSION,
            "meta": {k: v for k, v in data.items() if k in _POD_META},
            "status": {"state": "notready" if state == "unknown" else state,
                       "reason": data.get("reason", ""), "vm": vm, "network": network}}


def container(data: dict[str, Any]) -> dict[str, Any]:
    if "version" in data:
        return data
    status = {k: v for k, v in data.items() if k in _CONTAINER_STATUS}
    if status.get("state") == "unknown":  # a state vmrt no longer has
        status["state"] = "exited"
    return {"version": SCHEMA_VERSION,
            "meta": {k: v for k, v in data.items() if k in _CONTAINER_META},
            "status": status}
