"""Pod networking through real CNI plugins into the VM, checked with real traffic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as api
from pyroute2 import netns

from tests.cri.conftest import Daemon, expect_error, wait_for
from tests.helpers import leaks
from tests.helpers.registry import free_port

pytestmark = pytest.mark.vm

SERVE = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && "
                     "exec httpd -f -p 8080 -h /www"]


def pod_ip(daemon: Daemon, pod_id: str) -> str:
    return daemon.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.network.ip


def fetch(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pod_ip_reachability_dns_and_hostname(vmrtd: Daemon) -> None:
    net = vmrtd.network
    config = vmrtd.pod_config(dns_config=api.DNSConfig(servers=["10.96.0.10"],
                                                        searches=["ns.svc.cluster.local"]))
    pod_id = vmrtd.run_pod(config)
    ip = pod_ip(vmrtd, pod_id)
    assert ip.startswith(net.subnet.rsplit(".", 1)[0] + ".")
    info = json.loads(vmrtd.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id, verbose=True)).info["info"])
    assert info["netnsPath"] == f"/var/run/netns/vmrt-{pod_id[:32]}"
    server = vmrtd.run_container(pod_id, config, SERVE)
    # From the host's network namespace to the pod's IP, into the VM.
    assert fetch(f"http://{ip}:8080/").strip() == config.hostname
    reply = vmrtd.exec(server, ["sh", "-c", f"ping -c1 -W5 {net.gateway} >/dev/null && echo gw;"
                                            " cat /etc/resolv.conf; hostname; ip -4 -o addr"])
    out = reply.stdout.decode()
    assert out.startswith("gw\n"), reply
    assert "nameserver 10.96.0.10" in out and "search ns.svc.cluster.local" in out
    assert config.hostname in out and f"inet {ip}/24" in out
    hosts = vmrtd.exec(server, ["cat", "/etc/hosts"]).stdout.decode()
    assert f"{ip}\t{config.hostname}" in hosts


def test_two_pods_reach_each_other(vmrtd: Daemon) -> None:
    first_config, second_config = vmrtd.pod_config(), vmrtd.pod_config()
    first = vmrtd.run_pod(first_config)
    second = vmrtd.run_pod(second_config)
    vmrtd.run_container(first, first_config, SERVE)
    client = vmrtd.run_container(second, second_config, ["sleep", "300"])
    target = pod_ip(vmrtd, first)
    assert wait_for(lambda: vmrtd.exec(client, [
        "wget", "-q", "-O-", f"http://{target}:8080/"]).stdout.strip()
        == first_config.hostname.encode(), timeout=30)


def test_port_mapping_through_portmap(vmrtd: Daemon) -> None:
    port = free_port()
    config = vmrtd.pod_config(port_mappings=[api.PortMapping(
        protocol=api.TCP, container_port=8080, host_port=port)])
    pod_id = vmrtd.run_pod(config)
    vmrtd.run_container(pod_id, config, SERVE)
    # portmap DNATs traffic to a host address; any host IP but loopback works.
    host_ip = vmrtd.network.gateway
    assert fetch(f"http://{host_ip}:{port}/").strip() == config.hostname
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                         text=True).stdout
    assert pod_id in rules
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                         text=True).stdout
    assert pod_id not in rules


def test_stop_leaves_no_network_behind(vmrtd: Daemon) -> None:
    config = vmrtd.pod_config(port_mappings=[api.PortMapping(
        protocol=api.TCP, container_port=80, host_port=free_port())])
    pod_id = vmrtd.run_pod(config)
    assert leaks.network_leaks([pod_id], vmrtd.network.ipam_dir), "nothing was set up?"
    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert not leaks.network_leaks([pod_id], vmrtd.network.ipam_dir)
    # Stop twice, then remove: still fine, the IP stays reported for the record.
    vmrtd.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert pod_ip(vmrtd, pod_id)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def snapshot(daemon: Daemon) -> tuple[set[str], set[str], str]:
    """Namespaces, IP leases and NAT rules on the machine right now."""
    leases = {p.name for p in daemon.network.ipam_dir.rglob("*")
              if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved")} \
        if daemon.network.ipam_dir.exists() else set()
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                           check=False).stdout
    return set(netns.listnetns()), leases, "\n".join(
        line for line in rules.splitlines() if not line.startswith(("#", ":")))


def test_failed_run_pod_sandbox_leaves_no_network(vmrtd: Daemon) -> None:
    before = snapshot(vmrtd)
    config = vmrtd.pod_config(port_mappings=[api.PortMapping(
        protocol=api.TCP, container_port=80, host_port=free_port())])
    # The VM dies while booting (96 MiB): netns, CNI and tap are all undone.
    expect_error(grpc.StatusCode.INTERNAL, vmrtd.runtime.RunPodSandbox,
                 api.RunPodSandboxRequest(config=config, runtime_handler="tiny"), timeout=120)
    assert snapshot(vmrtd) == before
    assert not leaks.network_leaks([], vmrtd.network.ipam_dir)


def test_hostnetwork_pod_gets_forwarded_ports(vmrtd: Daemon) -> None:
    port = free_port()
    config = vmrtd.pod_config(
        port_mappings=[api.PortMapping(protocol=api.TCP, container_port=8080, host_port=port,
                                       host_ip="127.0.0.1")],
        linux=api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NODE))))
    # As containerd: no hostname of its own (kubelet sends none); it has the node's.
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=config))
    assert details.startswith("config.hostname: cannot be set"), details
    config.hostname = ""
    pod_id = vmrtd.run_pod(config)
    container = vmrtd.run_container(pod_id, config, SERVE)
    assert fetch(f"http://127.0.0.1:{port}/").strip() == socket.gethostname()
    # On vmrt's own network (ptp), in a netns of its own.
    out = vmrtd.exec(container, ["sh", "-c", "ip -4 -o addr show eth0; ip route"]).stdout
    assert b"inet 10.90." in out and b"default via 10.90." in out, out
    assert f"vmrt-{pod_id[:32]}" in netns.listnetns()
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert f"vmrt-{pod_id[:32]}" not in netns.listnetns()


def test_broken_cni_config_and_failing_plugin(vmrtd: Daemon) -> None:
    conflist = next(vmrtd.cni_dir.iterdir())
    good = conflist.read_text()
    before = snapshot(vmrtd)

    def network_condition() -> api.RuntimeCondition:
        status = vmrtd.runtime.Status(api.StatusRequest())
        return {c.type: c for c in status.status.conditions}["NetworkReady"]

    def run_pod_fails(code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> str:
        return expect_error(code, vmrtd.runtime.RunPodSandbox,
                            api.RunPodSandboxRequest(config=vmrtd.pod_config()))

    def write_broken(change: Callable[[dict[str, Any]], None]) -> None:
        broken = json.loads(good)
        change(broken)
        conflist.write_text(json.dumps(broken))

    try:
        conflist.write_text("{ this is not json")
        network = network_condition()
        assert not network.status and "not valid JSON" in network.message
        assert "not valid JSON" in run_pod_fails()
        # A plugin that fails after others succeeded: what bridge and
        # host-local did (veth, lease, NAT rules) is undone.
        write_broken(lambda c: c["plugins"].append({"type": "tuning", "mac": "not-a-mac"}))
        details = run_pod_fails()
        assert details.startswith("CNI plugin tuning failed (ADD):"), details
        assert snapshot(vmrtd) == before
        # A plugin that fails: host-local given a subnet it cannot parse. Its
        # error reaches the caller word for word.
        write_broken(lambda c: c["plugins"][0]["ipam"].update(
            ranges=[[{"subnet": "not-a-subnet"}]]))
        details = run_pod_fails()
        assert details.startswith("CNI plugin bridge failed (ADD):"), details
        assert "not-a-subnet" in details
        conflist.unlink()
        network = network_condition()
        assert not network.status and "no CNI network config" in network.message
        assert "no CNI network config" in run_pod_fails(grpc.StatusCode.FAILED_PRECONDITION)
        assert snapshot(vmrtd) == before
    finally:
        conflist.write_text(good)
    assert network_condition().status


def test_doctor_reports_the_network(vmrtd: Daemon, tmp_path: Path) -> None:
    def doctor(config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmrt.cli.main", "doctor", "--config",
                               str(config)], capture_output=True, text=True, timeout=60,
                              check=False)

    good = doctor(vmrtd.config)
    assert "ok    cni config" in good.stdout and "ok    guest image" in good.stdout
    empty = tmp_path / "no-cni"
    empty.mkdir()
    bad_config = tmp_path / "config.toml"
    bad_config.write_text(vmrtd.config.read_text().replace(str(vmrtd.cni_dir), str(empty)))
    bad = doctor(bad_config)
    assert bad.returncode == 1
    assert f"FAIL  cni config: no CNI network config in {empty}" in bad.stdout
