"""vmrt tenant check between two tenants on separate CNI networks: failing
while the networks route to each other and a node port is open to pods,
passing once the CNI firewall plugin isolates the bridges."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir
from tests.helpers.network import TestNetwork
from vmrt.cli.tenantcheck import _listening

pytestmark = pytest.mark.vm

ISOLATE = {"type": "firewall", "ingressPolicy": "same-bridge"}


@pytest.fixture(scope="module")
def node(guest_image, request: pytest.FixtureRequest  # type: ignore[no-untyped-def]
         ) -> Iterator[tuple[Daemon, TestNetwork]]:
    for base in _short_dir():
        green = TestNetwork(base / "green")
        config = f'[tenants.blue]\n[tenants.green]\ncni_network = "{green.name}"\n'
        try:
            for daemon in _daemon(base, guest_image, request, extra_config=config):
                green.write_as(daemon.cni_dir, "20-green.conflist")
                yield daemon, green
        finally:
            green.remove_bridge()


def check(daemon: Daemon, *args: str) -> tuple[int, dict[str, Any]]:
    ran = subprocess.run([sys.executable, "-m", "vmrt.cli.main", "-r", f"unix://{daemon.socket}",
                          "tenant", "check", "blue", "green", "-o", "json",
                          "--log-root", str(daemon.logs), *args],
                         capture_output=True, text=True, timeout=400, check=False)
    assert ran.returncode in (0, 1), ran.stderr
    result: dict[str, Any] = json.loads(ran.stdout)
    return ran.returncode, result


def rows(result: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {c["name"]: (c["passed"], c["evidence"]) for c in result["checks"]}


def test_tenant_check_fails_on_routed_networks_and_passes_when_isolated(
        node: tuple[Daemon, TestNetwork]) -> None:
    daemon, green = node
    # Ports already open to pods on this machine are the operator's to allow.
    allowed = [f"--allow-port={port}" for address, port in _listening()
               if not address.startswith("127.") and address != "::1"]
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        code, result = check(daemon, *allowed)
    seen = rows(result)
    assert code == 1 and result["passed"] is False
    passed, evidence = seen["pod network"]
    assert not passed and "though separate" in evidence, json.dumps(result, indent=1)
    assert "blue reaches green" in evidence and "green reaches blue" in evidence
    passed, evidence = seen["node ports unreachable"]
    assert not passed and f":{open_port}" in evidence
    for name in ("separate kernels", "VM-sized memory view", "no shared files",
                 "no shared processes"):
        assert seen[name][0], (name, seen[name][1])
    assert not daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items, \
        "the probes it started are removed"

    # The CNI firewall plugin keeps traffic from other bridges out of each.
    daemon.network.write_as(daemon.cni_dir, "10-test.conflist", extra=[ISOLATE])
    green.write_as(daemon.cni_dir, "20-green.conflist", extra=[ISOLATE])
    code, result = check(daemon, *allowed)
    seen = rows(result)
    assert code == 0 and result["passed"] is True, seen
    assert "neither reaches the other" in seen["pod network"][1]
