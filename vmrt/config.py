"""vmrtd's configuration: TOML read into typed, validated dataclasses.

An unknown key, a value of the wrong type or an out-of-range value stops
start-up with a message that names it (``hypervisor.memory_mib: ...``).
With no file, every default applies.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrt.errors import VmrtError
from vmrt.hypervisor.confine import DEFAULT_CAPABILITIES, capability_problem
from vmrt.hypervisor.spec import vm_settings_problem

_KERNEL_WORD = re.compile(r"[A-Za-z0-9_.,=:/+-]{1,256}")


class ConfigError(VmrtError):
    pass


@dataclass(frozen=True)
class CRIConfig:
    socket: str = "/run/vmrt/vmrt.sock"
    stream_address: str = "127.0.0.1"
    stream_port: int = 0
    # Seconds without a frame either way before a streaming connection is
    # closed (containerd's and kubelet's default: 4 h); 0 never.
    stream_idle_timeout: float = 14400.0
    # A delegating handler (see DelegateConfig) for pods that ask for the
    # node's network, PID or IPC namespace, which a VM cannot share; "" keeps
    # them in VMs (user-mode networking for hostNetwork, a refusal for the
    # others).
    host_namespace_handler: str = ""


@dataclass(frozen=True)
class StorageConfig:
    root: str = "/var/lib/vmrt"
    state: str = "/run/vmrt"


@dataclass(frozen=True)
class HypervisorConfig:
    accel: str = "auto"
    memory_mib: int = 256
    vcpus: int = 1
    machine: str = "microvm"
    transport: str = "serial"
    # A guest image directory; empty means <storage.root>/guest-images/default.
    image: str = ""
    qemu_binary: str = "qemu-system-x86_64"
    tb_size_mib: int = 128
    boot_timeout: float = 120.0
    debug: bool = False
    # More words for the guest kernel's command line (the agent reads
    # vmrt.* ones, Kata style).
    kernel_params: list[str] = field(default_factory=list)
    # The capabilities QEMU keeps in its jail (names without CAP_).
    qemu_capabilities: list[str] = field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    # The largest VM a pod may ask for; 0: the host's memory.
    max_memory_mib: int = 0
    # Seconds without traffic before vmrtd PINGs a guest's agent (the
    # watchdog's cheap probe); 0 turns the pings off.
    agent_keepalive_s: float = 10.0
    # The hang watchdog: a PING unanswered this long ends the connection to
    # the agent; then Health probes of watchdog_probe_timeout_s, and
    # watchdog_probes missed in a row make the guest dead (NOTREADY). A hung
    # guest is declared dead after about keepalive + ping timeout + probes x
    # probe timeout. The defaults suit a TCG host under load, where a healthy
    # guest took up to 25 s to answer; a KVM host can be much tighter.
    agent_ping_timeout_s: float = 20.0
    watchdog_probe_timeout_s: float = 10.0
    watchdog_probes: int = 3
    # Start pods from a saved VM template (guest RAM shared copy-on-write
    # between the pods of a handler). Turn it off for tenants who must not
    # share memory pages with others: page sharing is a timing side channel
    # (docs/design-notes.md, "VM templates").
    template: bool = True
    # Node-wide (only in [hypervisor]): how far the full sizes of all VMs may
    # exceed the node's memory (see vmrt.runtime.sizing.admit); 1.0: not at all.
    memory_overcommit: float = 1.0

    def validate(self, where: str) -> None:
        if self.accel not in ("auto", "kvm", "tcg"):
            raise ConfigError(f"{where}.accel: {self.accel!r} is not one of auto, kvm, tcg")
        problem = vm_settings_problem(self.memory_mib, self.vcpus, self.machine,
                                      self.transport)
        if problem:
            raise ConfigError(f"{where}.{problem}")
        if self.tb_size_mib < 16:
            raise ConfigError(f"{where}.tb_size_mib: {self.tb_size_mib} is below 16")
        if self.boot_timeout <= 0:
            raise ConfigError(f"{where}.boot_timeout: must be positive")
        problem = capability_problem(self.qemu_capabilities)
        if problem:
            raise ConfigError(f"{where}.qemu_capabilities: {problem}")
        if self.agent_keepalive_s < 0:
            raise ConfigError(f"{where}.agent_keepalive_s: {self.agent_keepalive_s} is negative")
        for key in ("agent_ping_timeout_s", "watchdog_probe_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} is not positive")
        if self.watchdog_probes < 1:
            raise ConfigError(f"{where}.watchdog_probes: {self.watchdog_probes} is below 1")
        if self.memory_overcommit <= 0:
            raise ConfigError(f"{where}.memory_overcommit: {self.memory_overcommit} is not "
                              "positive")
        if self.max_memory_mib < 0:
            raise ConfigError(f"{where}.max_memory_mib: {self.max_memory_mib} is negative")
        if self.max_memory_mib and self.max_memory_mib < self.memory_mib:
            raise ConfigError(f"{where}.max_memory_mib: {self.max_memory_mib} is below "
                              f"memory_mib ({self.memory_mib})")
        for word in self.kernel_params:
            if not _KERNEL_WORD.fullmatch(word):
                raise ConfigError(f"{where}.kernel_params: {word!r} is not one kernel "
                                  "parameter (no spaces or quotes)")


@dataclass(frozen=True)
class CgroupConfig:
    # kubelet's --cgroup-driver: "cgroupfs" (paths) or "systemd" (slices).
    driver: str = "cgroupfs"
    root: str = "/sys/fs/cgroup"
    # Where a pod without a cgroup_parent goes; "": /vmrt (cgroupfs) or
    # vmrt.slice (systemd).
    default_parent: str = ""


@dataclass(frozen=True)
class RegistryMirror:
    endpoints: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegistryConfig:
    # None by default, as in containerd: a mirror is a place the node trusts
    # to serve any image under the registry's names, so the operator names it.
    mirrors: dict[str, RegistryMirror] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsConfig:
    # host:port of the Prometheus endpoint ("127.0.0.1:9464"); empty: none.
    address: str = ""

    def host_port(self) -> tuple[str, int]:
        """The address as (IP, port); ConfigError when it is not IP:PORT."""
        host, _, port = self.address.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            number = int(port)
        except ValueError:
            number = -1
        if not 0 <= number <= 65535:
            raise ConfigError(f"metrics.address: {self.address!r} is not IP:PORT "
                              "(\"127.0.0.1:9464\"; empty: no endpoint)")
        return host.strip("[]"), number


@dataclass(frozen=True)
class CNIConfig:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    # vmrt's own network for hostNetwork pods (ptp + portmap): pick a range
    # the node does not use.
    host_network_subnet: str = "10.90.0.0/16"
    # Drop packets to 127.0.0.0/8 that arrive on any interface but lo (as
    # kube-proxy does, CVE-2020-8558): portmap's localhost hairpin turns on
    # route_localnet, which would let a pod reach the node's loopback.
    protect_node_loopback: bool = True


# A Kubernetes namespace name (an RFC 1123 label): what names a tenant too.
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# As the CNI spec has a network name.
CNI_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True)
class TenantConfig:
    """[tenants.NAME]: CRI namespaces grouped under one tenant, and its limits.
    A namespace that no tenant lists is a tenant of its own, of its name."""

    # The tenant's namespaces besides the one of its own name; the first is
    # where the CLI's pods of the tenant go.
    namespaces: list[str] = field(default_factory=list)
    # Limits over the tenant's running pods (0: none): how many, and the
    # full size of their VMs.
    max_pods: int = 0
    max_memory_mib: int = 0
    # The "name" of a network config in cni.conf_dir for the tenant's pods;
    # "": the node's default network (the first config, as for kubelet).
    cni_network: str = ""

    def validate(self, where: str) -> None:
        if self.cni_network and not CNI_NETWORK_NAME.fullmatch(self.cni_network):
            raise ConfigError(f"{where}.cni_network: {self.cni_network[:80]!r} is not a CNI "
                              "network name (letters, digits, '_', '.', '-')")
        for name in self.namespaces:
            if not NAMESPACE_NAME.fullmatch(name):
                raise ConfigError(f"{where}.namespaces: {name[:80]!r} is not a namespace name "
                                  "(lower-case letters, digits and '-', at most 63)")
        for key in ("max_pods", "max_memory_mib"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} is negative "
                                  "(0: no limit)")


@dataclass(frozen=True)
class DelegateConfig:
    """A RuntimeClass handler run by another CRI runtime (containerd + runc,
    Frakti's mixed runtimes): ``[runtime_handlers.X] cri_endpoint = ...``."""
    cri_endpoint: str = ""
    # The handler to ask the delegate for ("" is the delegate's default).
    runtime_handler: str = ""
    # Seconds a forwarded call may take when its caller set no deadline.
    timeout: float = 120.0

    def validate(self, where: str) -> None:
        if not self.cri_endpoint.startswith("unix:///"):
            raise ConfigError(f"{where}.cri_endpoint: {self.cri_endpoint!r} is not a unix "
                              "socket address (unix:///path)")
        if self.timeout <= 0:
            raise ConfigError(f"{where}.timeout: {self.timeout} is not positive")


@dataclass(frozen=True)
class Config:
    cri: CRIConfig = field(default_factory=CRIConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    # RuntimeClass handler name -> the [hypervisor] keys it overrides.
    runtime_handlers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"vmrt": {}})
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    cgroups: CgroupConfig = field(default_factory=CgroupConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # The runtime_handlers blocks that name a cri_endpoint, taken out of
    # runtime_handlers when the file is read (those are VM handlers only).
    delegates: dict[str, DelegateConfig] = field(default_factory=dict)

    def handler(self, name: str) -> HypervisorConfig:
        """The hypervisor settings for a RuntimeClass handler ("" is the default)."""
        if not name:
            return self.hypervisor
        if name not in self.runtime_handlers:
            known = ", ".join(sorted(self.runtime_handlers)) or "none"
            raise ConfigError(f"unknown runtime handler {name[:80]!r} (configured: {known})")
        return dataclasses.replace(self.hypervisor, **self.runtime_handlers[name])


def _type_name(tp: Any) -> str:
    return {int: "an integer", str: "a string", bool: "true or false",
            float: "a number"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _key, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return {k: _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and (not isinstance(value, tp) or
                                 (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        values[name] = _convert(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**values)


NODE_WIDE = frozenset({"memory_overcommit"})  # [hypervisor] keys a handler cannot override


def _split_delegates(data: dict[str, Any]) -> dict[str, DelegateConfig]:
    """Take the delegating blocks (those with cri_endpoint) out of
    ``data["runtime_handlers"]``: they are not VM settings."""
    handlers = data.get("runtime_handlers")
    if not isinstance(handlers, dict):
        return {}
    delegates = {}
    for name in [n for n, block in handlers.items()
                 if isinstance(block, dict) and "cri_endpoint" in block]:
        where = f"runtime_handlers.{name}"
        delegate: DelegateConfig = _build(DelegateConfig, handlers.pop(name), where)
        delegate.validate(where)
        delegates[name] = delegate
    return delegates


def _validate_handlers(config: Config) -> None:
    allowed = {f.name for f in dataclasses.fields(HypervisorConfig)} - NODE_WIDE
    hints = typing.get_type_hints(HypervisorConfig)
    for name, overrides in config.runtime_handlers.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"runtime_handlers.{name}: expected a table")
        for key, value in overrides.items():
            if key in NODE_WIDE:
                raise ConfigError(f"runtime_handlers.{name}.{key}: is node-wide; set it in "
                                  "[hypervisor]")
            if key not in allowed:
                raise ConfigError(f"unknown key runtime_handlers.{name}.{key} "
                                  f"(known: {', '.join(sorted(allowed))})")
            _convert(value, hints[key], f"runtime_handlers.{name}.{key}")
        config.handler(name).validate(f"runtime_handlers.{name}")


def _validate_tenants(config: Config) -> None:
    owner: dict[str, str] = {}
    for name, tenant in config.tenants.items():
        if not NAMESPACE_NAME.fullmatch(name):
            raise ConfigError(f"tenants.{name[:80]}: a tenant's name is a namespace name "
                              "(lower-case letters, digits and '-', at most 63)")
        tenant.validate(f"tenants.{name}")
        for namespace in dict.fromkeys([name, *tenant.namespaces]):
            if namespace in owner:
                raise ConfigError(f"tenants.{name}: namespace {namespace!r} is also in tenant "
                                  f"{owner[namespace]!r}; a namespace has one tenant")
            owner[namespace] = name


def parse(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if "delegates" in data:
        raise ConfigError("unknown key delegates (a delegating handler is a "
                          "[runtime_handlers.X] block with cri_endpoint)")
    delegates = _split_delegates(data)
    config: Config = dataclasses.replace(_build(Config, data, ""), delegates=delegates)
    host_handler = config.cri.host_namespace_handler
    if host_handler and host_handler not in delegates:
        known = ", ".join(sorted(delegates)) or "none"
        raise ConfigError(f"cri.host_namespace_handler: {host_handler!r} is not a handler with "
                          f"a cri_endpoint (those configured: {known})")
    config.hypervisor.validate("hypervisor")
    _validate_handlers(config)
    _validate_tenants(config)
    try:
        ipaddress.ip_network(config.cni.host_network_subnet)
    except ValueError:
        raise ConfigError(f"cni.host_network_subnet: {config.cni.host_network_subnet!r} is "
                          "not a network (CIDR)") from None
    if config.cgroups.driver not in ("cgroupfs", "systemd"):
        raise ConfigError(f"cgroups.driver: {config.cgroups.driver!r} is not cgroupfs or "
                          "systemd")
    if not 0 <= config.cri.stream_port <= 65535:
        raise ConfigError(f"cri.stream_port: {config.cri.stream_port} is not a port number")
    if config.cri.stream_idle_timeout < 0:
        raise ConfigError(f"cri.stream_idle_timeout: {config.cri.stream_idle_timeout} is "
                          f"negative (0 turns the timeout off)")
    if config.metrics.address:
        config.metrics.host_port()
    return config


def load(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse(text, str(path))
