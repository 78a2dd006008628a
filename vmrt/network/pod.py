"""A pod's network from start to end: netns, tap, CNI ADD, tc, and back.

Two modes:

* ``cni`` (the normal case): a network namespace per pod, named after it and
  pinned under /var/run/netns; a tap there becomes the VM's NIC; CNI ADD
  (while the VM starts) puts a veth beside it, and tc mirred joins the two;
  the agent gives the guest's NIC the veth's MAC, addresses, routes and MTU.
* hostNetwork pods: a VM cannot share the node's network namespace. They
  get the same set-up on vmrt's own network instead of the node's CNI one:
  ``ptp`` (a veth with NAT out through the node) and ``portmap``, with each
  declared port's host port defaulting to its container port, so the pod's
  ports are the node's ports, as kubelet expects. Its netns is its own, so
  the node's loopback is not its loopback (QEMU's user-mode network, used
  before, made the node's 127.0.0.1 reachable at 10.0.2.2). Documented in
  README.

Everything ``setup`` does registers its undo on the caller's exit stack;
``teardown`` works from the pod record alone (after a restart, or twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cri_api.v1 import api_pb2 as api

from vmrt import crashpoint
from vmrt.aio import push_cleanup
from vmrt.errors import InvalidArgumentError
from vmrt.hypervisor.spec import NetSpec
from vmrt.network import link
from vmrt.network.cni import CNI, NetworkConfig, PodNetworkArgs

log = logging.getLogger(__name__)

IFNAME = "eth0"
HOST_NETWORK_NAME = "vmrt-hostnet"
_PROTOCOLS = {api.TCP: "tcp", api.UDP: "udp", api.SCTP: "sctp"}


def host_network_config(subnet: str) -> NetworkConfig:
    """vmrt's own network for hostNetwork pods (not a file: nobody edits it)."""
    return NetworkConfig(
        name=HOST_NETWORK_NAME, cni_version="1.0.0", source=Path("<vmrt built-in>"),
        plugins=[
            {"type": "ptp", "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ])


@dataclass(frozen=True)
class PodNetworkState:
    """What the pod record keeps about its network.

    CNI's own documents (the conflist as it was at ADD, the arguments, and
    ADD's result) are kept verbatim as JSON text: DEL must run the same
    plugins with the same arguments even if the file has changed or gone
    since, and vmrt reads nothing else from them.
    """

    mode: str = "none"  # cni | none
    netns: str = ""
    network_name: str = ""
    network_config: str = ""
    args: str = ""
    cni_result: str = ""
    ips: tuple[str, ...] = ()

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> PodNetworkState:
        if not data:
            return cls()
        return cls(**{**data, "ips": tuple(data.get("ips", ()))})


@dataclass
class PreparedNetwork:
    state: PodNetworkState
    nic: NetSpec
    interface: link.GuestInterface
    routes: list[link.GuestRoute]


@dataclass
class PodNIC:
    """A pod's NIC before its network: the netns and the tap QEMU opens.
    CNI ADD comes after (``Networking.connect``), while the VM starts: the
    VM needs its tap at launch, its addresses only once the guest is up."""

    state: PodNetworkState
    spec: NetSpec  # the tap's fd; no MAC yet (the veth's, once CNI made it)
    config: NetworkConfig
    args: PodNetworkArgs
    tap: str


class Networking(Protocol):
    """A pod's network, as the runtime uses it (``PodNetworking``; a fake in unit tests).

    ``create_nic`` then ``connect``; each registers its undo steps on
    ``undo``, so the caller unwinds them once both have returned."""

    async def create_nic(self, pod_id: str, config: api.PodSandboxConfig,
                         undo: contextlib.AsyncExitStack,
                         remember: Callable[[PodNetworkState], None],
                         network_name: str = "") -> PodNIC: ...

    async def connect(self, nic: PodNIC, undo: contextlib.AsyncExitStack) -> PreparedNetwork: ...

    async def teardown(self, state: PodNetworkState) -> None: ...

    async def discard(self, pod_id: str, state: PodNetworkState) -> None: ...


def is_host_network(config: api.PodSandboxConfig) -> bool:
    return bool(config.linux.security_context.namespace_options.network == api.NODE)


def netns_name(pod_id: str) -> str:
    return f"vmrt-{pod_id[:32]}"


def tap_name(pod_id: str) -> str:
    return f"vmrtap{pod_id[:8]}"


def _port_mappings(config: api.PodSandboxConfig) -> list[dict[str, Any]]:
    """portmap's mappings; a hostNetwork pod's ports are the node's, so its
    host port defaults to the container port."""
    host_network = is_host_network(config)
    mappings = []
    for declared in config.port_mappings:
        port = api.PortMapping()
        port.CopyFrom(declared)
        if host_network and port.host_port <= 0:
            port.host_port = port.container_port
        if port.host_port <= 0:
            continue
        if not 0 < port.container_port < 65536 or port.host_port > 65535:
            raise InvalidArgumentError(f"config.port_mappings: {port.host_port}->"
                                       f"{port.container_port} is out of range")
        mapping = {"hostPort": port.host_port, "containerPort": port.container_port,
                   "protocol": _PROTOCOLS.get(port.protocol, "tcp")}
        if port.host_ip:
            mapping["hostIP"] = port.host_ip
        mappings.append(mapping)
    return mappings


class PodNetworking:
    def __init__(self, cni: CNI, host_network_subnet: str) -> None:
        self.cni = cni
        self.host_network = host_network_config(host_network_subnet)

    async def create_nic(self, pod_id: str, config: api.PodSandboxConfig,
                         undo: contextlib.AsyncExitStack,
                         remember: Callable[[PodNetworkState], None],
                         network_name: str = "") -> PodNIC:
        """The netns and the tap. ``remember`` is given the state before
        CNI ADD can run, so that a vmrtd killed part-way can still undo it
        after a restart (DEL with no result is fine by the CNI spec).
        ``network_name``: the CNI network of that name (a tenant's), else
        the node's default."""
        net = (self.host_network if is_host_network(config)
               else self.cni.config(network_name))
        name = netns_name(pod_id)
        path = await link.create_netns(name)
        push_cleanup(undo, link.remove_netns, name)
        crashpoint.reached("run", "netns")
        meta = config.metadata
        dns = {"nameservers": list(config.dns_config.servers),
               "search": list(config.dns_config.searches),
               "options": list(config.dns_config.options)}
        args = PodNetworkArgs(container_id=pod_id, netns_path=path, ifname=IFNAME,
                              pod_namespace=meta.namespace, pod_name=meta.name,
                              pod_uid=meta.uid, port_mappings=_port_mappings(config), dns=dns)
        state = PodNetworkState(
            mode="cni", netns=name, network_name=net.name, args=json.dumps(asdict(args)),
            network_config=json.dumps({"name": net.name, "cniVersion": net.cni_version,
                                       "plugins": net.plugins, "source": str(net.source)}))
        remember(state)
        # The tap before the veth: nothing of CNI's depends on it, and the
        # VM can be launched on it while CNI ADD runs.
        tap = tap_name(pod_id)
        fd = await link.create_tap(tap, name)
        undo.callback(os.close, fd)
        return PodNIC(state, NetSpec("tap", "", tap_fd=fd), net, args, tap)

    async def connect(self, nic: PodNIC, undo: contextlib.AsyncExitStack) -> PreparedNetwork:
        """CNI ADD, the tap joined to the veth it made, and what the guest must copy."""
        result = await self.cni.add(nic.config, nic.args)
        state = dataclasses.replace(nic.state, cni_result=json.dumps(result))
        push_cleanup(undo, self._cni_del, state)
        await link.connect_tap(state.netns, IFNAME, nic.tap)
        interface, routes = await link.describe(state.netns, IFNAME)
        state = dataclasses.replace(
            state, ips=tuple(address.split("/")[0] for address in interface.addresses))
        if not state.ips:
            raise link.LinkError(f"CNI network {nic.config.name} gave the pod no IP address")
        return PreparedNetwork(state, NetSpec("tap", interface.mac, tap_fd=nic.spec.tap_fd),
                               interface, routes)

    @staticmethod
    def _config_of(state: PodNetworkState) -> NetworkConfig:
        conf = json.loads(state.network_config)
        return NetworkConfig(name=conf["name"], cni_version=conf["cniVersion"],
                             plugins=conf["plugins"], source=Path(conf["source"]))

    async def _cni_del(self, state: PodNetworkState) -> None:
        await self.cni.delete(self._config_of(state), PodNetworkArgs(**json.loads(state.args)),
                              json.loads(state.cni_result) if state.cni_result else {})

    async def teardown(self, state: PodNetworkState) -> None:
        """CNI DEL and the netns; safe to repeat, and after a restart."""
        if state.mode != "cni":
            return
        try:
            await self._cni_del(state)
        finally:
            await link.remove_netns(state.netns)

    async def discard(self, pod_id: str, state: PodNetworkState) -> None:
        """Undo a set-up that a killed vmrtd left part-way: ``teardown`` of
        what the record knows, plus the netns and tap, which exist before
        the record mentions them."""
        try:
            await self.teardown(state)
        finally:
            await link.remove_netns(netns_name(pod_id))
            await link.remove_link(tap_name(pod_id))
