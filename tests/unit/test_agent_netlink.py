"""The agent's rtnetlink requests against the real kernel, in a network
namespace of their own: what they set is read back with iproute2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmrt.agent import netlink

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.root


def in_new_netns(script: str) -> dict[str, object]:
    """Run ``script`` (Python, vmrt.agent.netlink imported) in a new network
    namespace with a veth link ``d0`` (its peer ``p0``); returns iproute2's view afterwards
    and the errors the script recorded in ``errors``."""
    if os.geteuid() != 0:
        pytest.fail("needs root (a network namespace)")
    program = textwrap.dedent("""
        import json, subprocess, sys
        from vmrt.agent import netlink
        subprocess.run(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "p0"],
                       check=True)
        errors = []
        def refused(call, *args):
            try:
                call(*args)
            except (OSError, ValueError) as exc:
                kind = "OSError" if isinstance(exc, OSError) else type(exc).__name__
                errors.append(f"{kind}: {exc}")
            else:
                errors.append("accepted")
    """) + textwrap.dedent(script) + textwrap.dedent("""
        def ip(*args):
            return json.loads(subprocess.run(["ip", "-j", *args], check=True,
                                             capture_output=True, text=True).stdout or "[]")
        print(json.dumps({"links": ip("link"), "addrs": ip("addr", "show", "dev", "d1"),
                          "routes4": ip("-4", "route"), "routes6": ip("-6", "route"),
                          "errors": errors}))
    """)
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", program],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_names_addresses_and_routes_are_set_as_ip_would() -> None:
    seen = in_new_netns("""
        netlink.rename_link("d0", "d1")
        subprocess.run(["ip", "link", "set", "d1", "up"], check=True)
        subprocess.run(["ip", "link", "set", "p0", "up"], check=True)
        subprocess.run(["sysctl", "-qw", "net.ipv6.conf.d1.disable_ipv6=0"])
        netlink.add_address("d1", "10.88.0.5/16")
        netlink.add_address("d1", "fd00:10::5/64")
        netlink.replace_route("10.99.0.0/24", "", "d1")
        netlink.replace_route("0.0.0.0/0", "10.88.0.1", "d1")
        netlink.replace_route("0.0.0.0/0", "10.88.0.2", "d1")   # replace: one default
        netlink.replace_route("::/0", "fd00:10::1", "d1")
        refused(netlink.add_address, "d1", "10.88.0.5/16")      # EEXIST, as ip says
        refused(netlink.add_address, "nosuch", "10.1.0.1/24")
        refused(netlink.replace_route, "10.0.0.0/8", "fd00::1", "d1")
        refused(netlink.add_address, "d1", "10.1.0.1/33")
        refused(netlink.add_address, "d1", "not-an-address")
    """)
    assert {link["ifname"] for link in seen["links"]} == {"lo", "d1", "p0"}
    addresses = {(a["local"], a["prefixlen"]) for a in seen["addrs"][0]["addr_info"]}
    assert {("10.88.0.5", 16), ("fd00:10::5", 64)} <= addresses
    routes4 = {(r["dst"], r.get("gateway", ""), r.get("scope", "")) for r in seen["routes4"]}
    assert ("10.99.0.0/24", "", "link") in routes4
    defaults = [r for r in seen["routes4"] if r["dst"] == "default"]
    assert [r["gateway"] for r in defaults] == ["10.88.0.2"]
    assert any(r["dst"] == "default" and r.get("gateway") == "fd00:10::1"
               for r in seen["routes6"])
    errors = seen["errors"]
    assert errors[0].startswith("OSError") and "exists" in errors[0]
    assert errors[1].startswith("OSError") and "no interface" in errors[1]
    assert errors[2].startswith("ValueError") and "family" in errors[2]
    assert errors[3].startswith("ValueError") and "prefix" in errors[3]
    assert errors[4].startswith("ValueError") and "not-an-address" in errors[4]


def test_a_route_destination_is_masked_to_its_network() -> None:
    assert netlink._network(bytes([10, 99, 7, 200]), 20) == bytes([10, 99, 0, 0])
    assert netlink._cidr("fd00::1") == (netlink.socket.AF_INET6,
                                         netlink.socket.inet_pton(netlink.socket.AF_INET6,
                                                                  "fd00::1"), 128)
