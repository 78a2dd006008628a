"""Running CNI plugins per the CNI spec: ADD, DEL and CHECK over a conflist.

The network configuration is the first ``.conflist`` (or ``.conf``) in
``cni.conf_dir``, in lexical order, as kubelet's runtimes pick it. Plugins
run one after another with ``prevResult`` chaining; DEL runs them in
reverse with the result ADD produced, which vmrtd keeps in the pod's record
so a DEL after a daemon restart has what it needs. A plugin's error message
reaches the CRI caller word for word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrt.aio import finish
from vmrt.errors import FailedPreconditionError, VmrtError

log = logging.getLogger(__name__)

PLUGIN_TIMEOUT = 60.0


class CNIError(VmrtError):
    """A plugin failed; the message is the plugin's own."""


class NoNetworkConfig(FailedPreconditionError):
    pass


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    source: Path


@dataclass
class PodNetworkArgs:
    container_id: str
    netns_path: str
    ifname: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)
    bandwidth: dict[str, Any] = field(default_factory=dict)


def load_config(conf_dir: str, name: str = "") -> NetworkConfig:
    """The first config in ``conf_dir`` or, given a ``name``, the one of that name."""
    directory = Path(conf_dir)
    try:
        candidates = sorted(p for p in directory.iterdir()
                            if p.suffix in (".conflist", ".conf", ".json") and p.is_file())
    except FileNotFoundError:
        candidates = []
    if not candidates:
        raise NoNetworkConfig(f"no CNI network config in {conf_dir}")
    if not name:
        return _parse(candidates[0])
    for source in candidates:
        with contextlib.suppress(CNIError):
            net = _parse(source)
            if net.name == name:
                return net
    raise NoNetworkConfig(f"no CNI network config named {name!r} in {conf_dir}")


def _parse(source: Path) -> NetworkConfig:
    try:
        data = json.loads(source.read_text())
    except ValueError as exc:
        raise CNIError(f"CNI config {source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CNIError(f"CNI config {source} is not a JSON object")
    if "plugins" in data:
        plugins = data["plugins"]
    elif "type" in data:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    else:
        raise CNIError(f"CNI config {source} has neither 'plugins' nor 'type'")
    if not isinstance(plugins, list) or not plugins or not all(
            isinstance(p, dict) and p.get("type") for p in plugins):
        raise CNIError(f"CNI config {source}: every plugin needs a 'type'")
    name = data.get("name")
    if not name:
        raise CNIError(f"CNI config {source} has no 'name'")
    return NetworkConfig(name=str(name), cni_version=str(data.get("cniVersion", "0.4.0")),
                         plugins=plugins, source=source)


class CNI:
    def __init__(self, conf_dir: str, bin_dirs: list[str]) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs

    def config(self, name: str = "") -> NetworkConfig:
        return load_config(self.conf_dir, name)

    def problem(self) -> str:
        """Why pods cannot get a network now, or "" when they can."""
        try:
            net = self.config()
            for plugin in net.plugins:
                self._plugin_path(str(plugin["type"]))
        except (CNIError, NoNetworkConfig) as exc:
            return str(exc)
        return ""

    def _plugin_path(self, kind: str) -> str:
        if "/" in kind:
            raise CNIError(f"invalid CNI plugin type {kind!r}")
        for directory in self.bin_dirs:
            path = os.path.join(directory, kind)
            if os.access(path, os.X_OK):
                return path
        raise CNIError(f"CNI plugin {kind!r} not found in {', '.join(self.bin_dirs)}")

    def _stdin(self, net: NetworkConfig, plugin: dict[str, Any], args: PodNetworkArgs,
               prev: dict[str, Any] | None) -> bytes:
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        runtime: dict[str, Any] = {}
        capabilities = plugin.get("capabilities") or {}
        if capabilities.get("portMappings") and args.port_mappings:
            runtime["portMappings"] = args.port_mappings
        if capabilities.get("dns") and args.dns:
            runtime["dns"] = args.dns
        if capabilities.get("bandwidth") and args.bandwidth:
            runtime["bandwidth"] = args.bandwidth
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def _env(self, command: str, args: PodNetworkArgs) -> dict[str, str]:
        cni_args = ";".join([
            "IgnoreUnknown=1",
            f"K8S_POD_NAMESPACE={args.pod_namespace}",
            f"K8S_POD_NAME={args.pod_name}",
            f"K8S_POD_INFRA_CONTAINER_ID={args.container_id}",
            f"K8S_POD_UID={args.pod_uid}",
        ])
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": args.container_id,
            "CNI_NETNS": args.netns_path,
            "CNI_IFNAME": args.ifname,
            "CNI_PATH": ":".join(self.bin_dirs),
            "CNI_ARGS": cni_args,
        }

    async def _exec(self, command: str, net: NetworkConfig, plugin: dict[str, Any],
                    args: PodNetworkArgs, prev: dict[str, Any] | None) -> dict[str, Any] | None:
        path = self._plugin_path(str(plugin["type"]))
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self._env(command, args))
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(self._stdin(net, plugin, args, prev)), PLUGIN_TIMEOUT)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise CNIError(_plugin_error(plugin["type"], command, out, err))
        if command != "ADD" or not out.strip():
            return prev
        try:
            result: dict[str, Any] = json.loads(out)
        except ValueError:
            raise CNIError(f"CNI plugin {plugin['type']} ADD printed no JSON result") from None
        return result

    async def add(self, net: NetworkConfig, args: PodNetworkArgs) -> dict[str, Any]:
        """ADD every plugin in order. If one fails, what the earlier ones
        did (a lease, a veth, NAT rules) is undone by a DEL of the list, as
        containerd does; the ADD error is the one reported."""
        result: dict[str, Any] | None = None
        try:
            for plugin in net.plugins:
                result = await self._exec("ADD", net, plugin, args, result)
        except BaseException:
            try:
                await finish(self.delete, net, args, None)
            except Exception as exc:
                log.info("DEL after a failed ADD also failed: %s", exc)
            raise
        return result or {}

    async def delete(self, net: NetworkConfig, args: PodNetworkArgs,
                     result: dict[str, Any] | None) -> None:
        """DEL every plugin, last first; keeps going past failures, then reports the first."""
        first_error: CNIError | None = None
        for plugin in reversed(net.plugins):
            try:
                await self._exec("DEL", net, plugin, args, result or None)
            except CNIError as exc:
                log.warning("CNI DEL: %s", exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error


def _plugin_error(kind: object, command: str, out: bytes, err: bytes) -> str:
    """The plugin's own error: CNI's JSON error object, else whatever it printed."""
    text = out.decode(errors="replace").strip()
    try:
        error = json.loads(text)
        message = str(error.get("msg", ""))
        details = str(error.get("details", ""))
        if message:
            return f"CNI plugin {kind} failed ({command}): {message}" + (
                f"; {details}" if details else "")
    except (ValueError, AttributeError):
        pass
    detail = text or err.decode(errors="replace").strip() or "no message"
    return f"CNI plugin {kind} failed ({command}): {detail}"
