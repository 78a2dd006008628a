"""CRI ContainerConfig (+ image config) -> OCI runtime spec for the guest.

Guest paths the host cannot know are left as intents for the agent to
resolve (see proto/vmrt/agent/v1/agent.proto): share-relative mount sources,
the pod's shared namespaces, device numbers.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt import oci
from vmrt.errors import InvalidArgumentError

ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]

# RuntimeDefault seccomp: allow by default, refuse (EPERM) the syscalls that
# only a capability the container lacks would let through, plus a few that
# no container needs. The VM is the security boundary; this keeps the
# guest kernel's surface small for unprivileged workloads.
_DENIED_UNLESS: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": ["mount", "umount2", "pivot_root", "setns", "unshare", "fsopen",
                      "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
                      "name_to_handle_at", "quotactl", "lookup_dcookie", "syslog",
                      "swapon", "swapoff", "sethostname", "setdomainname", "bpf",
                      "perf_event_open", "fanotify_init", "mount_setattr"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_BOOT": ["reboot", "kexec_load", "kexec_file_load"],
    "CAP_SYS_TIME": ["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
    "CAP_SYS_PTRACE": ["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}
_ALWAYS_DENIED = ["add_key", "request_key", "keyctl", "userfaultfd", "uselib", "vhangup",
                  "get_mempolicy", "set_mempolicy", "mbind", "move_pages"]
_ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
MAX_SECCOMP_PROFILE = 1024 * 1024


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


def _cap_name(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") or name == "ALL" else f"CAP_{name}"


def capabilities(sc: api.LinuxContainerSecurityContext) -> list[str]:
    if sc.privileged:
        return list(ALL_CAPABILITIES)
    add = [_cap_name(c) for c in sc.capabilities.add_capabilities]
    drop = [_cap_name(c) for c in sc.capabilities.drop_capabilities]
    for cap in add + drop:
        if cap != "ALL" and cap not in ALL_CAPABILITIES:
            raise InvalidArgumentError(
                f"linux.security_context.capabilities: unknown capability {cap}")
    caps = list(oci.DEFAULT_CAPABILITIES)
    if "ALL" in drop:
        caps = []
    if "ALL" in add:
        caps = list(ALL_CAPABILITIES)
    caps += [c for c in add if c != "ALL" and c not in caps]
    return [c for c in caps if c not in drop]


def default_seccomp(caps: Sequence[str]) -> dict[str, Any]:
    denied = list(_ALWAYS_DENIED)
    for cap, syscalls in _DENIED_UNLESS.items():
        if cap not in caps:
            denied += syscalls
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": _ARCHITECTURES,
        "syscalls": [{"names": sorted(set(denied)), "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}],
    }


def _bad_profile(path: str, problem: str | None) -> InvalidArgumentError:
    return InvalidArgumentError(f"linux.security_context.seccomp.localhost_ref: profile "
                                f"{path!r} {problem}")


def _localhost_seccomp(path: str) -> dict[str, Any]:
    if not os.path.isabs(path):
        raise _bad_profile(path, "must be an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _bad_profile(path, "does not exist") from None
    except OSError as exc:
        raise _bad_profile(path, exc.strerror) from None
    try:
        # Not a FIFO that never answers, not /dev/zero that never ends.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _bad_profile(path, "is not a regular file")
        data = os.read(fd, MAX_SECCOMP_PROFILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECCOMP_PROFILE:
        raise _bad_profile(path, f"is larger than {MAX_SECCOMP_PROFILE} bytes")
    try:
        profile = json.loads(data)
    except ValueError as exc:
        raise _bad_profile(path, f"is not JSON: {exc}") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise _bad_profile(path, "has no defaultAction")
    try:
        return _oci_seccomp(profile)
    except (KeyError, TypeError, AttributeError) as exc:
        raise _bad_profile(path, f"is malformed: {type(exc).__name__} {exc}") from None


def _oci_seccomp(profile: dict[str, Any]) -> dict[str, Any]:
    """A Docker or OCI seccomp profile in the OCI spec's form."""
    arches = profile.get("architectures") or [
        m["architecture"] for m in profile.get("archMap", []) if "architecture" in m]
    result: dict[str, Any] = {"defaultAction": str(profile["defaultAction"]),
                              "architectures": list(arches or _ARCHITECTURES), "syscalls": []}
    for rule in profile.get("syscalls", []):
        names = rule.get("names") or ([rule["name"]] if "name" in rule else [])
        entry = {"names": [str(n) for n in names], "action": str(rule["action"])}
        for key in ("args", "errnoRet"):
            if key in rule:
                entry[key] = rule[key]
        result["syscalls"].append(entry)
    return result


def seccomp(sc: api.LinuxContainerSecurityContext, caps: Sequence[str]) -> dict[str, Any] | None:
    if sc.privileged:
        return None
    if sc.HasField("seccomp"):
        kind = sc.seccomp.profile_type
        if kind == api.SecurityProfile.RuntimeDefault:
            return default_seccomp(caps)
        if kind == api.SecurityProfile.Unconfined:
            return None
        return _localhost_seccomp(sc.seccomp.localhost_ref)
    legacy = sc.seccomp_profile_path
    if legacy in ("runtime/default", "docker/default"):
        return default_seccomp(caps)
    if legacy.startswith("localhost/"):
        return _localhost_seccomp(legacy[len("localhost/"):])
    return None


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
    return User(uid, gid, [g for g in additional if g != gid], home)


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


def pod_hostname(pod_config: api.PodSandboxConfig) -> str:
    """The pod's hostname; as containerd does, the node's when the config names none."""
    return pod_config.hostname or socket.gethostname()


def build(*, config: api.ContainerConfig, pod_config: api.PodSandboxConfig,
          image_config: dict[str, Any], image_file: ImageFile,
          mounts: Sequence[SharedMount]) -> dict[str, Any]:
    linux = config.linux
    sc = linux.security_context
    hostname = pod_hostname(pod_config)
    user = resolve_user(image_file, sc, str(image_config.get("User", "")))
    caps = capabilities(sc)
    cwd = config.working_dir or str(image_config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise InvalidArgumentError(f"working_dir: {cwd!r} must be an absolute path")
    process = oci.process(process_args(config, image_config),
                          environment(config, image_config, hostname, user.home),
                          cwd, terminal=config.tty, uid=user.uid, gid=user.gid)
    process["user"]["additionalGids"] = user.additional_gids
    process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    ambient = [_cap_name(c) for c in sc.capabilities.add_ambient_capabilities]
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
