"""Checks of every CRI field that reaches a path, a command line, the kernel,
the guest or a record, before anything is done with it.

Each check raises InvalidArgumentError with the field's path in the request
(``config.dns_config.servers[0]: ...``), so a caller always learns what was
wrong. The rules follow Kubernetes' own (names, hostnames, sysctls) where it
has them, and otherwise refuse what no kubelet sends: NUL bytes, relative
paths where absolute ones are meant, ``..`` components, out-of-range
numbers, sizes past any real use.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.errors import InvalidArgumentError

# Kubernetes' names: DNS subdomains, but CRI callers (critest) also use
# upper case and underscores.
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9_])?")
_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")
_DOMAIN = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*\.?")
_SYSCTL = re.compile(r"[A-Za-z0-9_-]+([./][A-Za-z0-9_-]+)*")
_UNIFIED_KEY = re.compile(r"[a-z0-9_]+\.[a-z0-9_.]+")
_CGROUP_PARENT = re.compile(r"[A-Za-z0-9_.:@/-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_NAME = 253
MAX_PATH = 4096
MAX_HOSTNAME = 64
MAX_ITEMS = 1024
MAX_KEY_VALUE_BYTES = 256 * 1024
MAX_ARGV_BYTES = 1024 * 1024
MAX_ID = 0xFFFF_FFFE  # uid/gid: (uid_t)-1 means "no change" to the kernel
MAX_TIMEOUT = 10 * 365 * 86400  # seconds; beyond this it is not a timeout

PROTOCOLS = (api.TCP, api.UDP, api.SCTP)
NAMESPACE_MODES = (api.POD, api.CONTAINER, api.NODE, api.TARGET)
PROPAGATIONS = (api.PROPAGATION_PRIVATE, api.PROPAGATION_HOST_TO_CONTAINER,
                api.PROPAGATION_BIDIRECTIONAL)


def fail(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {problem}")


def _no_nul(value: str, field: str) -> None:
    if "\0" in value:
        raise fail(field, "contains a NUL byte")


def name(value: str, field: str, required: bool = True) -> None:
    if not value:
        if required:
            raise fail(field, "is required")
        return
    if len(value) > MAX_NAME or not _NAME.fullmatch(value):
        raise fail(field, f"{_show(value)} is not a valid name (letters, digits, '.', '_' "
                          f"and '-', at most {MAX_NAME} characters)")


def _show(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def absolute_path(value: str, field: str, required: bool = True) -> None:
    if not value:
        if required:
            raise fail(field, "is required")
        return
    _no_nul(value, field)
    if len(value) > MAX_PATH:
        raise fail(field, f"is longer than {MAX_PATH} bytes")
    if not value.startswith("/"):
        raise fail(field, f"{_show(value)} must be an absolute path")
    if any(part in (".", "..") for part in value.split("/")):
        raise fail(field, f"{_show(value)} must not contain '.' or '..' components")


def relative_path(value: str, field: str, base: str = "the pod's log_directory") -> None:
    _no_nul(value, field)
    if len(value) > MAX_PATH:
        raise fail(field, f"is longer than {MAX_PATH} bytes")
    if value.startswith("/"):
        raise fail(field, f"{_show(value)} must be relative to {base}")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise fail(field, f"{_show(value)} must be a plain relative path (no '..', '.' or "
                          "empty components)")


def hostname(value: str, field: str) -> None:
    if value and (len(value) > MAX_HOSTNAME or not _HOSTNAME.fullmatch(value)):
        raise fail(field, f"{_show(value)} is not a valid hostname (RFC 1123 labels, at most "
                          f"{MAX_HOSTNAME} characters)")


def ip(value: str, field: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise fail(field, f"{_show(value)} is not an IP address") from None


def count(items: Sequence[object] | Mapping[str, str], field: str,
          limit: int = MAX_ITEMS) -> None:
    if len(items) > limit:
        raise fail(field, f"has {len(items)} entries, more than {limit}")


def key_values(items: Mapping[str, str], field: str) -> None:
    """Labels and annotations: stored and returned, never interpreted; bounded."""
    size = 0
    for key, value in items.items():
        if not key:
            raise fail(field, "has an empty key")
        size += len(key.encode()) + len(value.encode())
    if size > MAX_KEY_VALUE_BYTES:
        raise fail(field, f"total {size} bytes, more than {MAX_KEY_VALUE_BYTES}")


def strings(values: Iterable[str], field: str, limit_bytes: int = MAX_ARGV_BYTES) -> None:
    total = 0
    for index, value in enumerate(values):
        _no_nul(value, f"{field}[{index}]")
        total += len(value.encode())
    if total > limit_bytes:
        raise fail(field, f"total {total} bytes, more than {limit_bytes}")


def settings(items: Mapping[str, str], field: str, key_form: re.Pattern[str], limit: int,
             what: str, key_length: int) -> None:
    """Kernel settings by name (sysctls, cgroup files): at most ``limit`` names
    of one form and ``key_length``, values of one line."""
    count(items, field, limit)
    for key, value in items.items():
        if len(key) > key_length or not key_form.fullmatch(key):
            raise fail(field, f"{_show(key)} is not {what}")
        if len(value) > 4096 or _CONTROL.search(value):
            raise fail(f"{field}[{key}]", f"{_show(value)} is not a valid value")


def enum(value: int, allowed: Iterable[int], field: str) -> None:
    if value not in tuple(allowed):
        raise fail(field, f"{value} is not a known value")


def timeout(seconds: int, field: str) -> None:
    if seconds < 0:
        raise fail(field, f"{seconds} is negative")
    if seconds > MAX_TIMEOUT:
        raise fail(field, f"{seconds} s is more than {MAX_TIMEOUT} s")


def id_number(value: int, field: str) -> None:
    if not 0 <= value <= MAX_ID:
        raise fail(field, f"{value} is not a valid user or group id")


# -- pods ------------------------------------------------------------------------


def pod_config(config: api.PodSandboxConfig, field: str = "config") -> None:
    meta = config.metadata
    name(meta.name, f"{field}.metadata.name")
    name(meta.namespace, f"{field}.metadata.namespace")
    name(meta.uid, f"{field}.metadata.uid")
    hostname(config.hostname, f"{field}.hostname")
    absolute_path(config.log_directory, f"{field}.log_directory", required=False)
    dns = config.dns_config
    for key, items in (("servers", dns.servers), ("searches", dns.searches),
                       ("options", dns.options)):
        count(items, f"{field}.dns_config.{key}", 64)
    for index, server in enumerate(dns.servers):
        ip(server, f"{field}.dns_config.servers[{index}]")
    for index, search in enumerate(dns.searches):
        if len(search) > MAX_NAME or not _DOMAIN.fullmatch(search):
            raise fail(f"{field}.dns_config.searches[{index}]",
                       f"{_show(search)} is not a domain name")
    for index, option in enumerate(dns.options):
        if not option or len(option) > 256 or _CONTROL.search(option) or " " in option:
            raise fail(f"{field}.dns_config.options[{index}]",
                       f"{_show(option)} is not a resolver option")
    count(config.port_mappings, f"{field}.port_mappings")
    for index, port in enumerate(config.port_mappings):
        where = f"{field}.port_mappings[{index}]"
        enum(port.protocol, PROTOCOLS, f"{where}.protocol")
        if not 0 < port.container_port < 65536:
            raise fail(f"{where}.container_port", f"{port.container_port} is not a port number")
        if not 0 <= port.host_port < 65536:
            raise fail(f"{where}.host_port", f"{port.host_port} is not a port number")
        if port.host_ip:
            ip(port.host_ip, f"{where}.host_ip")
    key_values(config.labels, f"{field}.labels")
    key_values(config.annotations, f"{field}.annotations")
    linux = config.linux
    cgroup_parent(linux.cgroup_parent, f"{field}.linux.cgroup_parent")
    settings(linux.sysctls, f"{field}.linux.sysctls", _SYSCTL, 256, "a sysctl name", 256)
    pod_security(linux.security_context, f"{field}.linux.security_context")
    if config.hostname and linux.security_context.namespace_options.network == api.NODE:
        # As containerd: a pod in the node's network namespace has the node's name.
        raise fail(f"{field}.hostname", "cannot be set for a pod with the node's network "
                   "(namespace_options.network NODE); it has the node's hostname")
    resources(linux.resources, f"{field}.linux.resources")
    resources(linux.overhead, f"{field}.linux.overhead")


def cgroup_parent(value: str, field: str) -> None:
    if not value:
        return
    if len(value) > MAX_PATH or not _CGROUP_PARENT.fullmatch(value) \
            or any(part in (".", "..") for part in value.split("/")):
        raise fail(field, f"{_show(value)} is not a cgroup path or systemd slice")


ID_LIMIT = 1 << 32


def _id_mapping(mappings: Any, field: str) -> None:
    # As containerd and runc: one range, container id 0 in it.
    if len(mappings) != 1:
        raise fail(field, f"{len(mappings)} mappings; exactly one is supported")
    (mapping,) = mappings
    if mapping.container_id != 0:
        raise fail(field, f"container id 0 must be mapped (the range starts at "
                          f"{mapping.container_id})")
    if not 0 < mapping.length < ID_LIMIT or mapping.host_id + mapping.length > ID_LIMIT - 1:
        raise fail(field, f"host ids {mapping.host_id}+{mapping.length} are not a range of "
                          "32-bit ids")


def user_namespace(userns: api.UserNamespace, field: str) -> None:
    """NODE: the guest's own user namespace (no mapping). POD: one of the
    pod's, with one uid and one gid range that maps container id 0."""
    if userns.mode == api.NODE:
        if userns.uids or userns.gids:
            raise fail(field, "mappings are for mode POD, not NODE")
        return
    if userns.mode != api.POD:
        raise fail(f"{field}.mode", f"{userns.mode} is not supported: a user namespace is "
                   "the pod's (POD) or the node's (NODE)")
    _id_mapping(userns.uids, f"{field}.uids")
    _id_mapping(userns.gids, f"{field}.gids")


def namespace_options(options: api.NamespaceOption, field: str) -> None:
    for kind in ("network", "pid", "ipc"):
        enum(getattr(options, kind), NAMESPACE_MODES, f"{field}.{kind}")
    if options.target_id:
        name(options.target_id, f"{field}.target_id")
    if options.HasField("userns_options"):
        user_namespace(options.userns_options, f"{field}.userns_options")


def _security_common(sc: api.LinuxSandboxSecurityContext | api.LinuxContainerSecurityContext,
                     field: str) -> None:
    namespace_options(sc.namespace_options, f"{field}.namespace_options")
    if sc.HasField("run_as_user"):
        id_number(sc.run_as_user.value, f"{field}.run_as_user")
    if sc.HasField("run_as_group"):
        id_number(sc.run_as_group.value, f"{field}.run_as_group")
    count(sc.supplemental_groups, f"{field}.supplemental_groups", 256)
    for index, group in enumerate(sc.supplemental_groups):
        id_number(group, f"{field}.supplemental_groups[{index}]")
    if sc.HasField("seccomp") and sc.seccomp.localhost_ref:
        absolute_path(sc.seccomp.localhost_ref, f"{field}.seccomp.localhost_ref")


def pod_security(sc: api.LinuxSandboxSecurityContext, field: str) -> None:
    _security_common(sc, field)


def resources(r: api.LinuxContainerResources, field: str) -> None:
    if r.memory_limit_in_bytes < 0:
        raise fail(f"{field}.memory_limit_in_bytes", f"{r.memory_limit_in_bytes} is negative")
    if r.memory_swap_limit_in_bytes < -1:
        raise fail(f"{field}.memory_swap_limit_in_bytes",
                   f"{r.memory_swap_limit_in_bytes} is below -1 (unlimited)")
    if r.memory_swap_limit_in_bytes > 0 and not (
            0 < r.memory_limit_in_bytes <= r.memory_swap_limit_in_bytes):
        raise fail(f"{field}.memory_swap_limit_in_bytes",
                   f"{r.memory_swap_limit_in_bytes} needs a memory_limit_in_bytes that is set "
                   "and not larger (memory plus swap)")
    if r.cpu_quota < -1:
        raise fail(f"{field}.cpu_quota", f"{r.cpu_quota} is below -1 (unlimited)")
    if not 0 <= r.cpu_period <= 1_000_000:
        raise fail(f"{field}.cpu_period", f"{r.cpu_period} is not between 0 and 1000000 us")
    if not 0 <= r.cpu_shares <= 262_144:
        raise fail(f"{field}.cpu_shares", f"{r.cpu_shares} is not between 0 and 262144")
    if not -1000 <= r.oom_score_adj <= 1000:
        raise fail(f"{field}.oom_score_adj", f"{r.oom_score_adj} is not between -1000 and 1000")
    for key in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(r, key)
        if value and not re.fullmatch(r"[0-9,\-]{1,1024}", value):
            raise fail(f"{field}.{key}", f"{_show(value)} is not a CPU or node list")
    count(r.hugepage_limits, f"{field}.hugepage_limits", 16)
    for index, page in enumerate(r.hugepage_limits):
        if not re.fullmatch(r"[0-9]{1,4}[KMG]B", page.page_size):
            raise fail(f"{field}.hugepage_limits[{index}].page_size",
                       f"{_show(page.page_size)} is not a page size")
    settings(r.unified, f"{field}.unified", _UNIFIED_KEY, 64, "a cgroup file name", 128)


# -- containers ------------------------------------------------------------------


def image_reference(value: str, field: str) -> None:
    if not value:
        raise fail(field, "is required")
    if len(value) > MAX_PATH or _CONTROL.search(value):
        raise fail(field, f"{_show(value)} is not an image reference")


def container_config(config: api.ContainerConfig, log_directory: str,
                     field: str = "config") -> None:
    name(config.metadata.name, f"{field}.metadata.name")
    image_reference(config.image.image, f"{field}.image.image")
    if config.stop_signal not in api.Signal.values():
        raise fail(f"{field}.stop_signal", f"{config.stop_signal} is not a known signal")
    count(config.command, f"{field}.command")
    count(config.args, f"{field}.args")
    strings([*config.command, *config.args], f"{field}.command+args")
    absolute_path(config.working_dir, f"{field}.working_dir", required=False)
    count(config.envs, f"{field}.envs", 4096)
    for index, kv in enumerate(config.envs):
        where = f"{field}.envs[{index}]"
        if not kv.key:
            raise fail(where, "an environment variable has an empty name")
        if "=" in kv.key:
            raise fail(where, f"{_show(kv.key)}: a name cannot contain '='")
        strings([kv.key, kv.value], where)
    count(config.mounts, f"{field}.mounts", 256)
    for index, mount in enumerate(config.mounts):
        where = f"{field}.mounts[{index}]"
        absolute_path(mount.container_path, f"{where}.container_path")
        if mount.container_path.rstrip("/") == "":
            raise fail(f"{where}.container_path", "cannot mount over the container's /")
        if mount.HasField("image") and mount.image.image:
            # An image volume (KEP-4639): the image's root filesystem, read-only.
            image_reference(mount.image.image, f"{where}.image.image")
            if not mount.readonly:
                raise fail(f"{where}.readonly", "an image volume is read-only; set readonly")
            if mount.host_path:
                raise fail(f"{where}.host_path", "an image volume has no host path")
            if mount.image_sub_path:
                relative_path(mount.image_sub_path.rstrip("/"), f"{where}.image_sub_path",
                              "the image's root")
            continue
        if mount.image_sub_path:
            raise fail(f"{where}.image_sub_path", "is only for an image volume")
        absolute_path(mount.host_path, f"{where}.host_path")
        enum(mount.propagation, PROPAGATIONS, f"{where}.propagation")
        if mount.recursive_read_only:
            # As containerd: every mount below read-only too, which only holds
            # for a read-only mount that nothing later propagates into.
            if not mount.readonly:
                raise fail(f"{where}.recursive_read_only", "needs readonly")
            if mount.propagation != api.PROPAGATION_PRIVATE:
                kind = api.MountPropagation.Name(mount.propagation)
                raise fail(f"{where}.recursive_read_only",
                           f"needs propagation PROPAGATION_PRIVATE, not {kind}")
    count(config.devices, f"{field}.devices", 256)
    for index, device in enumerate(config.devices):
        where = f"{field}.devices[{index}]"
        absolute_path(device.container_path, f"{where}.container_path")
        absolute_path(device.host_path, f"{where}.host_path")
        if not set(device.permissions) <= set("rwm") or len(device.permissions) > 3:
            raise fail(f"{where}.permissions", f"{_show(device.permissions)} is not a subset "
                                               "of 'rwm'")
    if config.log_path:
        relative_path(config.log_path, f"{field}.log_path")
        if not log_directory:
            raise fail(f"{field}.log_path", "is set but the pod has no log_directory")
    key_values(config.labels, f"{field}.labels")
    key_values(config.annotations, f"{field}.annotations")
    linux = config.linux
    resources(linux.resources, f"{field}.linux.resources")
    container_security(linux.security_context, f"{field}.linux.security_context")


def container_security(sc: api.LinuxContainerSecurityContext, field: str) -> None:
    _security_common(sc, field)
    if sc.run_as_username and (len(sc.run_as_username) > 256
                               or not re.fullmatch(r"[A-Za-z0-9._@$-]+", sc.run_as_username)):
        raise fail(f"{field}.run_as_username", f"{_show(sc.run_as_username)} is not a user name")
    for key in ("masked_paths", "readonly_paths"):
        paths = getattr(sc, key)
        count(paths, f"{field}.{key}")
        for index, path in enumerate(paths):
            absolute_path(path, f"{field}.{key}[{index}]")
    caps = sc.capabilities
    for key in ("add_capabilities", "drop_capabilities", "add_ambient_capabilities"):
        values = getattr(caps, key)
        count(values, f"{field}.capabilities.{key}", 64)
        for index, cap in enumerate(values):
            if not re.fullmatch(r"[A-Za-z_]{1,64}", cap):
                raise fail(f"{field}.capabilities.{key}[{index}]",
                           f"{_show(cap)} is not a capability name")
    if sc.seccomp_profile_path:
        _no_nul(sc.seccomp_profile_path, f"{field}.seccomp_profile_path")


def command(cmd: Sequence[str], field: str = "cmd") -> None:
    if not cmd:
        raise fail(field, "is required")
    count(cmd, field)
    strings(cmd, field)


def pod_cidrs(value: str, field: str) -> None:
    for index, cidr in enumerate(p for p in value.split(",") if p):
        try:
            ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise fail(f"{field}[{index}]", f"{_show(cidr)} is not a CIDR") from None
