"""Netlink work for a pod's network, all through pyroute2: the netns, the tap, tc.

The pod model is Kata's "tcfilter": CNI puts a veth into the pod's network
namespace; we add a tap beside it and join the two with tc ingress qdiscs
and mirred redirects both ways, so every frame in from the veth goes to the
VM and every frame from the VM goes out of the veth. QEMU holds the tap's fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute, netns

from vmrt.errors import VmrtError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
ETH_P_ALL = 0x0003
RTPROT_KERNEL = 2
NETNS_DIR = "/var/run/netns"
T = TypeVar("T")


class LinkError(VmrtError):
    pass


@dataclass
class GuestInterface:
    mac: str
    name: str
    mtu: int
    addresses: list[str] = field(default_factory=list)


@dataclass
class GuestRoute:
    destination: str
    gateway: str
    interface: str


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


# pyroute2's netns helpers fork a child to enter a namespace; forking a
# process that runs gRPC's threads crashes the child. Entering a network
# namespace is per thread, so we do it in a worker thread instead and come
# straight back.
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def _in_thread_netns(path: str, work: Callable[[], T]) -> T:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if path:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
        elif _libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        try:
            return work()
        finally:
            # If this fails the thread is stranded in the pod's namespace:
            # better to stop than to run anything else in it.
            _setns(own)
    finally:
        os.close(own)


def _create_pinned(name: str) -> None:
    _in_thread_netns("", lambda: netns._create(name, pid="thread-self"))


async def create_netns(name: str) -> str:
    if name in await asyncio.to_thread(netns.listnetns):
        raise LinkError(f"network namespace {name} already exists")
    await asyncio.to_thread(_create_pinned, name)
    return netns_path(name)


async def ipr_in(name: str) -> AsyncIPRoute:
    """An AsyncIPRoute whose socket lives in netns ``name``."""
    sock = await asyncio.to_thread(
        _in_thread_netns, netns_path(name),
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0))
    return AsyncIPRoute(use_socket=sock)


async def remove_netns(name: str) -> None:
    if name in await asyncio.to_thread(netns.listnetns):
        await asyncio.to_thread(netns.remove, name)


async def create_tap(name: str, namespace: str) -> int:
    """A tap in ``namespace``, attached to a new fd that QEMU will use.

    The tap is made and opened in the host namespace, then moved: an open
    tap fd stays bound to its device across namespaces.
    """
    async with AsyncIPRoute() as ipr:
        await ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    fd = -1
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        ns_fd = os.open(netns_path(namespace), os.O_RDONLY | os.O_CLOEXEC)
        try:
            async with AsyncIPRoute() as ipr:
                (index,) = await ipr.link_lookup(ifname=name)
                await ipr.link("set", index=index, net_ns_fd=ns_fd)
        finally:
            os.close(ns_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(Exception):
            await remove_link(name)
        raise
    return fd


async def remove_link(name: str) -> None:
    """Delete the host-namespace link ``name`` if there is one."""
    async with AsyncIPRoute() as ipr:
        for index in await ipr.link_lookup(ifname=name):
            await ipr.link("del", index=index)


async def _links(ipr: AsyncIPRoute) -> dict[str, Any]:
    return {link.get("ifname"): link async for link in await ipr.link("dump")}


async def connect_tap(namespace: str, veth: str, tap: str) -> None:
    """tc ingress + mirred redirect, veth -> tap and tap -> veth."""
    async with await ipr_in(namespace) as ipr:
        links = await _links(ipr)
        if veth not in links:
            raise LinkError(f"CNI left no interface {veth} in {namespace}")
        veth_index, tap_index = links[veth]["index"], links[tap]["index"]
        await ipr.link("set", index=tap_index, state="up",
                       mtu=links[veth].get("mtu") or 1500)
        for source, target in ((veth_index, tap_index), (tap_index, veth_index)):
            await ipr.tc("add", "ingress", source, "ffff:")
            await ipr.tc("add-filter", "u32", source, ":1", parent="ffff:", protocol=ETH_P_ALL,
                         keys=["0x0/0x0+0"], target=0x10000,
                         action={"kind": "mirred", "direction": "egress",
                                 "action": "redirect", "ifindex": target})


async def describe(namespace: str, veth: str) -> tuple[GuestInterface, list[GuestRoute]]:
    """What the guest must copy: the veth's MAC, MTU and addresses, and its routes."""
    async with await ipr_in(namespace) as ipr:
        links = await _links(ipr)
        link = links[veth]
        index = link["index"]
        addresses = []
        async for addr in await ipr.addr("dump", index=index):
            ip = ipaddress.ip_address(addr.get("address"))
            if ip.is_link_local:
                continue
            addresses.append(f"{ip}/{addr['prefixlen']}")
        routes = []
        for family in (2, 10):
            async for route in await ipr.route("dump", family=family):
                if route.get("oif") != index or route.get("proto") == RTPROT_KERNEL:
                    continue
                if route.get("table") not in (None, 254):
                    continue
                dst = route.get("dst")
                destination = f"{dst}/{route['dst_len']}" if dst else (
                    "0.0.0.0/0" if family == 2 else "::/0")
                gateway = route.get("gateway") or ""
                if family == 10 and ipaddress.ip_address(gateway or "::").is_link_local \
                        and gateway:
                    gateway = ""
                routes.append(GuestRoute(destination, gateway, veth))
        return GuestInterface(link.get("address"), veth, link.get("mtu") or 1500,
                              addresses), routes
