"""The few rtnetlink requests the agent makes, without a process each.

A pod's start used to run busybox ``ip`` for each address and route: a fork
of the agent and an exec, which under TCG cost tens of milliseconds apiece.
These are the same requests ``ip`` sends (``addr add``, ``route replace``,
``link set name``), built with struct: a netlink library would be a large
import for a guest that boots in Python (docs/design-notes.md, "Boot time").
Every request asks for an acknowledgement; a refusal raises OSError with
the kernel's errno.
"""

from __future__ import annotations

import os
import socket
import struct

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + bytes(-length % 4)


def _request(kind: int, flags: int, body: bytes) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sequence = 1
        header = struct.pack("IHHII", 16 + len(body), kind,
                             NLM_F_REQUEST | NLM_F_ACK | flags, sequence, 0)
        sock.send(header + body)
        while True:
            reply = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(reply):
                length, kind_back, _, seq, _ = struct.unpack_from("IHHII", reply, offset)
                if length < 16:
                    raise OSError(0, "malformed netlink reply")
                if kind_back == NLMSG_ERROR and seq == sequence:
                    error = struct.unpack_from("i", reply, offset + 16)[0]
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return
                offset += (length + 3) & ~3


def _address(text: str) -> tuple[int, bytes]:
    """(family, packed) of an IPv4 or IPv6 address; ValueError if neither."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, socket.inet_pton(family, text)
        except OSError:
            continue
    raise ValueError(f"invalid IP address {text!r}")


def _cidr(text: str) -> tuple[int, bytes, int]:
    """(family, packed address, prefix length) of ``ADDRESS[/LENGTH]``."""
    address, _, length = text.partition("/")
    family, packed = _address(address)
    bits = len(packed) * 8
    if not length:
        return family, packed, bits
    if not length.isdigit() or int(length) > bits:
        raise ValueError(f"invalid prefix length in {text!r}")
    return family, packed, int(length)


def _network(packed: bytes, prefix: int) -> bytes:
    value = int.from_bytes(packed, "big")
    bits = len(packed) * 8
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return (value & mask).to_bytes(len(packed), "big")


def add_address(interface: str, cidr: str) -> None:
    """``ip addr add CIDR dev INTERFACE``."""
    family, packed, prefix = _cidr(cidr)
    body = struct.pack("BBBBI", family, prefix, 0, RT_SCOPE_UNIVERSE,
                       socket.if_nametoindex(interface))
    body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    _request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def replace_route(destination: str, gateway: str = "", interface: str = "") -> None:
    """``ip route replace DESTINATION [via GATEWAY] [dev INTERFACE]``, in
    the main table; as ``ip`` does, a route without a gateway has link scope
    (IPv4) and one of IPv6 universe scope."""
    family, packed, prefix = _cidr(destination)
    scope = RT_SCOPE_LINK if not gateway and family == socket.AF_INET else RT_SCOPE_UNIVERSE
    body = struct.pack("BBBBBBBBI", family, prefix, 0, 0, RT_TABLE_MAIN,
                       RTPROT_BOOT, scope, RTN_UNICAST, 0)
    if prefix:
        body += _attr(RTA_DST, _network(packed, prefix))
    if gateway:
        via_family, via = _address(gateway)
        if via_family != family:
            raise ValueError(f"gateway {gateway} is not of {destination}'s family")
        body += _attr(RTA_GATEWAY, via)
    if interface:
        body += _attr(RTA_OIF, struct.pack("I", socket.if_nametoindex(interface)))
    _request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)


def rename_link(current: str, name: str) -> None:
    """``ip link set dev CURRENT name NAME`` (the link must be down)."""
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex(current), 0, 0)
    body += _attr(IFLA_IFNAME, name.encode() + b"\0")
    _request(RTM_NEWLINK, 0, body)
