"""CRI ContainerConfig (+ image config) -> OCI runtime spec for the guest.

Guest paths the host cannot know are left as intents for the agent to
resolve (see proto/vmrt/agent/v1/agent.proto): share-relative mount sources,
the pod's shared namespaces, device numbers. Capabilities and seccomp are
in ocisecurity.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt import oci
from vmrt.errors import InvalidArgumentError
from vmrt.images.store import image_user
from vmrt.runtime.ocisecurity import cap_name, capabilities, seccomp


@dataclass(frozen=True)
class SharedMount:
    """A CRI mount whose host side is already in the sandbox share."""

    container_path: str
    share_path: str
    readonly: bool
    propagation: int


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: list[int]
    home: str


# The content of a file of the image, as the container would see it.
ImageFile = Callable[[str], "bytes | None"]


def _read_db(image_file: ImageFile, name: str) -> list[list[str]]:
    """Rows of the image's /etc/passwd or /etc/group."""
    data = image_file(f"etc/{name}")
    if data is None:
        return []
    return [line.split(":") for line in data.decode(errors="replace").splitlines()
            if line.count(":") >= 3]


def resolve_user(image_file: ImageFile, sc: api.LinuxContainerSecurityContext,
                 image_user: str) -> User:
    if sc.HasField("run_as_group") and not sc.HasField("run_as_user") \
            and not sc.run_as_username:
        # As containerd and CRI-O: a group alone would run as the image's
        # user, which the pod spec did not ask for.
        raise InvalidArgumentError("linux.security_context.run_as_group: is set without "
                                   "run_as_user or run_as_username")
    passwd = _read_db(image_file, "passwd")
    groups = _read_db(image_file, "group")
    user_part, _, group_part = image_user.partition(":")
    entry: list[str] | None = None
    if sc.HasField("run_as_user"):
        uid = sc.run_as_user.value
        entry = next((r for r in passwd if r[2] == str(uid)), None)
    else:
        name = sc.run_as_username or user_part
        if not name:
            uid = 0
            entry = next((r for r in passwd if r[2] == "0"), None)
        elif name.isdigit():
            uid = int(name)
            entry = next((r for r in passwd if r[2] == name), None)
        else:
            entry = next((r for r in passwd if r[0] == name), None)
            if entry is None:
                raise InvalidArgumentError(f"linux.security_context.run_as_username: user "
                                           f"{name!r} is not in the image's /etc/passwd")
            uid = int(entry[2])
    if sc.HasField("run_as_group"):
        gid = sc.run_as_group.value
    elif group_part and not sc.HasField("run_as_user") and not sc.run_as_username:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            row = next((g for g in groups if g[0] == group_part), None)
            if row is None:
                raise InvalidArgumentError(f"image.image: the image's group {group_part!r} is "
                                           "not in its /etc/group")
            gid = int(row[2])
    else:
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    additional: list[int] = []
    if sc.supplemental_groups_policy != api.Strict and entry is not None:
        additional = [int(g[2]) for g in groups
                      if g[2].isdigit() and entry[0] in g[3].split(",")]
    for extra in sc.supplemental_groups:
        if extra not in additional:
            additional.append(extra)
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    # The primary gid leads the list, as containerd's: `id` shows groups=0(root),10(wheel).
    return User(uid, gid, [gid] + [g for g in additional if g != gid], home)


def process_args(config: api.ContainerConfig, image_config: dict[str, Any]) -> list[str]:
    """kubelet's command/args on top of the image's Entrypoint/Cmd (Docker's rules)."""
    command, args = list(config.command), list(config.args)
    if not command:
        command = list(image_config.get("Entrypoint") or [])
        if not args:
            args = list(image_config.get("Cmd") or [])
    argv = command + args
    if not argv:
        raise InvalidArgumentError("command: neither the container config nor the image "
                                   "gives one")
    return argv


def environment(config: api.ContainerConfig, image_config: dict[str, Any],
                hostname: str, home: str) -> list[str]:
    env: dict[str, str] = {}
    for item in image_config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    env.setdefault("PATH", oci.DEFAULT_PATH)
    env["HOSTNAME"] = hostname
    for kv in config.envs:
        if not kv.key:
            raise InvalidArgumentError("envs: an environment variable has an empty name")
        env[kv.key] = kv.value
    env.setdefault("HOME", home)
    if config.tty:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def resources(r: api.LinuxContainerResources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        memory["swap"] = r.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                 for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


_PROPAGATION: dict[int, str] = {
    api.PROPAGATION_PRIVATE: "rprivate",
    api.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def _namespaces(options: api.NamespaceOption) -> list[dict[str, str]]:
    spaces = [{"type": "mount"}, {"type": "uts"}, {"type": "cgroup"}]
    if options.pid == api.CONTAINER:
        spaces.append({"type": "pid"})
    elif options.pid == api.POD:
        spaces.append({"type": "pid", "path": "vmrt:pod"})
    elif options.pid == api.TARGET:
        if not options.target_id:
            raise InvalidArgumentError("linux.security_context.namespace_options.target_id: is "
                                   "required for pid TARGET")
        spaces.append({"type": "pid", "path": f"vmrt:container:{options.target_id}"})
    if options.ipc == api.POD:
        spaces.append({"type": "ipc", "path": "vmrt:pod"})
    elif options.ipc == api.CONTAINER:
        spaces.append({"type": "ipc"})
    # Network: every container shares the VM's, which is the pod's.
    return spaces


def pod_user_namespace(pod_config: api.PodSandboxConfig) -> api.UserNamespace | None:
    """The pod's own user namespace (mode POD, validated to one range each),
    or None: its containers are in the guest's."""
    options = pod_config.linux.security_context.namespace_options
    if options.HasField("userns_options") and options.userns_options.mode == api.POD:
        return options.userns_options
    return None


def _id_mappings(ranges: Any) -> list[dict[str, int]]:
    return [{"containerID": r.container_id, "hostID": r.host_id, "size": r.length}
            for r in ranges]


def pod_hostname(pod_config: api.PodSandboxConfig) -> str:
    """The pod's hostname; as containerd does, the node's when the config names none."""
    return pod_config.hostname or socket.gethostname()


def build(*, config: api.ContainerConfig, pod_config: api.PodSandboxConfig,
          image_config: dict[str, Any], image_file: ImageFile,
          mounts: Sequence[SharedMount]) -> dict[str, Any]:
    linux = config.linux
    sc = linux.security_context
    hostname = pod_hostname(pod_config)
    user = resolve_user(image_file, sc, image_user(image_config))
    caps = capabilities(sc)
    cwd = config.working_dir or str(image_config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise InvalidArgumentError(f"working_dir: {cwd!r} must be an absolute path")
    process = oci.process(process_args(config, image_config),
                          environment(config, image_config, hostname, user.home),
                          cwd, terminal=config.tty, uid=user.uid, gid=user.gid)
    process["user"]["additionalGids"] = user.additional_gids
    process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    ambient = [cap_name(c) for c in sc.capabilities.add_ambient_capabilities]
    if ambient:
        process["capabilities"]["ambient"] = ambient
        process["capabilities"]["inheritable"] = ambient
    process["noNewPrivileges"] = sc.no_new_privs
    if linux.resources.oom_score_adj:
        process["oomScoreAdj"] = linux.resources.oom_score_adj

    spec_mounts = _mounts(config, sc, mounts)
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "hostname": hostname,
        "mounts": spec_mounts,
        "linux": {
            "namespaces": _namespaces(sc.namespace_options),
            "resources": resources(linux.resources),
            "maskedPaths": [] if sc.privileged else list(sc.masked_paths or oci.MASKED_PATHS),
            "readonlyPaths": [] if sc.privileged else list(sc.readonly_paths
                                                            or oci.READONLY_PATHS),
        },
        "annotations": dict(config.annotations),
    }
    userns = pod_user_namespace(pod_config)
    if userns is not None:
        # In the guest, ids the pod's root filesystem (id-mapped on the host)
        # already belongs to: the container's root is an unprivileged guest uid.
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = _id_mappings(userns.uids)
        spec["linux"]["gidMappings"] = _id_mappings(userns.gids)
    profile = seccomp(sc, caps)
    if profile is not None:
        spec["linux"]["seccomp"] = profile
    if sc.privileged:
        spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    devices = []
    for device in config.devices:
        if not device.container_path.startswith("/") or not device.host_path.startswith("/"):
            raise InvalidArgumentError(f"devices: {device.host_path!r} -> "
                                       f"{device.container_path!r}: paths must be absolute")
        devices.append({"path": device.container_path, "vmrtGuestPath": device.host_path,
                        "vmrtAccess": device.permissions or "rwm"})
    if devices:
        spec["linux"]["devices"] = devices
    return spec


def _mounts(config: api.ContainerConfig, sc: api.LinuxContainerSecurityContext,
            shared: Sequence[SharedMount]) -> list[dict[str, Any]]:
    wanted = {m.container_path for m in shared}
    mounts = [m for m in oci.default_mounts() if m["destination"] not in wanted]
    if sc.privileged:
        for m in mounts:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"]
    if sc.namespace_options.ipc == api.POD and "/dev/shm" not in wanted:
        mounts = [m for m in mounts if m["destination"] != "/dev/shm"]
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": "vmrt-pod:shm",
                       "options": ["rbind", "nosuid", "nodev", "noexec"]})
    for name in ("hostname", "hosts", "resolv.conf"):
        destination = f"/etc/{name}"
        if destination not in wanted:
            options = ["rbind", "rprivate"] + (["ro"] if sc.readonly_rootfs else [])
            mounts.append({"destination": destination, "type": "bind",
                           "source": f"vmrt-pod:{name}", "options": options})
    for share in shared:
        options = ["rbind", _PROPAGATION.get(share.propagation, "rprivate")]
        if share.readonly:
            options.append("ro")
        mounts.append({"destination": share.container_path, "type": "bind",
                       "source": f"vmrt-share:{share.share_path}", "options": options})
    # Parents before children, whatever order they were given in.
    return sorted(mounts, key=lambda m: len(Path(m["destination"]).parts))
