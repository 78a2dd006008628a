"""Turning the host's guest-path intents in an OCI spec into real guest paths.

See the comment at the top of proto/vmrt/agent/v1/agent.proto for the forms.
The host cannot know the guest's PIDs or device numbers, or where the share
is mounted; the agent can.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from vmrt.agent.errors import FailedPrecondition, InvalidArgument, NotFound
from vmrt.agent.proctable import ProcessTable

POD_DIR = "/run/vmrt/pod"
POD_FILES = ("hosts", "hostname", "resolv.conf")


# Sysctls that belong to an IPC namespace rather than to the whole kernel.
IPC_SYSCTL_PREFIXES = ("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")


class PodNamespaces:
    """A holder process that keeps the pod's shared pid and ipc namespaces alive.

    The pod's IPC sysctls are written by the holder itself, inside its new
    IPC namespace, before it goes to sleep: containers that share the pod's
    IPC namespace see them, as under containerd's pause container.
    """

    def __init__(self, table: ProcessTable) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._pid = 0
        self.ipc_sysctls: list[tuple[str, str]] = []

    def path(self, kind: str) -> str:
        with self._lock:
            if not self._pid or not os.path.exists(f"/proc/{self._pid}"):
                self._pid = self._start()
            return f"/proc/{self._pid}/ns/{kind}"

    def _start(self) -> int:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            # unshare forks: its child is PID 1 of the new namespace, and the
            # namespace is the child's. "sleep" never exits on its own. It
            # runs as "pause", like the pause container's PID 1: containers
            # sharing the pod's pid namespace see it, and "pgrep sleep" in a
            # container must find only the container's own sleeps.
            writes = "".join(
                f"printf %s {shlex.quote(value)} > /proc/sys/{key.replace('.', '/')} && "
                for key, value in self.ipc_sysctls)
            pid = self._table.spawn(
                ["/bin/unshare", "--pid", "--ipc", "--fork", "--", "/bin/sh", "-c",
                 f"{writes}exec -a sleep {_pause_binary()} 2147483647"],
                stdin=null, stdout=null, stderr=null)
        finally:
            os.close(null)
        return _wait_for_child(pid)


PAUSE = "/run/vmrt-pause/pause"


def _pause_binary() -> str:
    """busybox under the name "pause": the kernel names the process after the file it
    runs, while busybox picks its applet by argv[0] ("sleep")."""
    if not os.path.islink(PAUSE):
        os.makedirs(os.path.dirname(PAUSE), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.symlink(os.path.realpath("/bin/sleep"), PAUSE)
    return PAUSE


def _wait_for_child(parent: int, attempts: int = 500) -> int:
    for _ in range(attempts):
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = f.read().split()
        except FileNotFoundError:
            raise FailedPrecondition("the pod namespace holder exited at once") from None
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise FailedPrecondition("the pod namespace holder did not start")


def pod_file(name: str, ensure_shm: Callable[[], None]) -> str:
    if name == "shm":
        ensure_shm()
        return os.path.join(POD_DIR, "shm")
    if name not in POD_FILES:
        raise InvalidArgument(f"unknown pod file vmrt-pod:{name}")
    path = os.path.join(POD_DIR, name)
    if not os.path.exists(path):
        raise FailedPrecondition(f"pod file {name} is missing: was the sandbox set up?")
    return path


def resolve(spec: dict[str, Any], share_dir: str, pod_ns: PodNamespaces,
            container_init_pid: Callable[[str], int], ensure_shm: Callable[[], None]) -> None:
    """Rewrite the intents in ``spec`` in place."""
    for mount in spec.get("mounts", []):
        source = str(mount.get("source", ""))
        if source.startswith("vmrt-share:"):
            rel = source[len("vmrt-share:"):].lstrip("/")
            path = os.path.normpath(os.path.join(share_dir, rel))
            if not path.startswith(share_dir + "/"):
                raise InvalidArgument(f"mount source {source!r} leaves the sandbox share")
            if not os.path.exists(path):
                raise InvalidArgument(f"mount source {source!r} is not in the sandbox share")
            mount["source"] = path
        elif source.startswith("vmrt-pod:"):
            mount["source"] = pod_file(source[len("vmrt-pod:"):], ensure_shm)
    linux = spec.get("linux", {})
    for namespace in linux.get("namespaces", []):
        path = str(namespace.get("path", ""))
        kind = str(namespace.get("type", ""))
        proc_name = {"network": "net", "mount": "mnt"}.get(kind, kind)
        if path == "vmrt:pod":
            namespace["path"] = pod_ns.path(proc_name)
        elif path.startswith("vmrt:container:"):
            target = path[len("vmrt:container:"):]
            try:
                pid = container_init_pid(target)
            except NotFound:
                raise NotFound(f"target container {target} of the {kind} namespace is not "
                               "in this sandbox") from None
            namespace["path"] = f"/proc/{pid}/ns/{proc_name}"
    devices = linux.get("devices", [])
    if devices:
        allow = linux.setdefault("resources", {}).setdefault("devices", [])
        for device in devices:
            _fill_device(device, allow)


def _fill_device(device: dict[str, Any], allow: list[dict[str, Any]]) -> None:
    path = str(device.get("path", ""))
    source = str(device.pop("vmrtGuestPath", path))
    access = str(device.pop("vmrtAccess", "rwm"))
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise InvalidArgument(f"device {source} does not exist in the VM") from None
    if stat.S_ISCHR(info.st_mode):
        device["type"] = "c"
    elif stat.S_ISBLK(info.st_mode):
        device["type"] = "b"
    else:
        raise InvalidArgument(f"{source} is not a device node")
    device["major"] = os.major(info.st_rdev)
    device["minor"] = os.minor(info.st_rdev)
    device.setdefault("fileMode", stat.S_IMODE(info.st_mode))
    device.setdefault("uid", 0)
    device.setdefault("gid", 0)
    allow.append({"allow": True, "type": device["type"], "major": device["major"],
                  "minor": device["minor"], "access": access})
