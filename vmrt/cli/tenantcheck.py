"""``vmrt tenant check A B``: what a tester checks between two tenants.

A probe pod per tenant (one labelled ``vmrt.io/probe`` is reused, else one
is started and removed afterwards): busybox serving a page of its token on
port 8080, its token in its command line. Each check compares what the two
probes, and the node, see; each can fail, and says what it saw.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.cli.cri_client import Client, CRIError, print_data, print_table
from vmrt.cli.launch import remove_pod
from vmrt.cli.workloads import ensure_image

PROBE_LABEL = "vmrt.io/probe"
PROBE_PORT = 8080
TOKEN = re.compile(r"[0-9a-f]{12}")
MAX_NODE_TARGETS = 64


@dataclass
class Check:
    name: str
    passed: bool
    evidence: str


@dataclass
class Probe:
    tenant: str
    client: Client
    pod_id: str
    container_id: str
    token: str
    ip: str
    started: bool  # by this check, so removed after it
    log_directory: str = ""

    def sh(self, script: str, timeout: int = 30) -> tuple[int, str]:
        reply = self.client.rt("ExecSync", api.ExecSyncRequest(
            container_id=self.container_id, cmd=["sh", "-c", script], timeout=timeout),
            timeout=timeout + 30)
        return int(reply.exit_code), reply.stdout.decode(errors="replace").strip()


def add_parser(verbs: argparse._SubParsersAction,  # type: ignore[type-arg,unused-ignore]
               common: argparse.ArgumentParser, output: argparse.ArgumentParser) -> None:
    p = verbs.add_parser(
        "check", parents=[common, output], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  vmrt tenant check blue green --allow-port 22\n\n"
               "exit code: 0 when every check passes, 1 when one fails, 125 on an error",
        help="check the isolation between two tenants, with a probe pod in each")
    p.add_argument("tenants", nargs=2, metavar="TENANT")
    p.add_argument("--image", default="busybox", help="the probes' image (busybox's tools)")
    p.add_argument("--runtime", default="", metavar="HANDLER", help="the probes' handler")
    p.add_argument("--allow-port", type=int, action="append", default=[], metavar="PORT",
                   help="a node port pods may reach (shown, not failed)")
    p.add_argument("--keep", action="store_true", help="leave the probes it starts running")
    p.add_argument("--log-root", default=os.environ.get("VMRT_LOG_ROOT", "/var/log/vmrt"),
                   help="where the probes' logs go")
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    first, second = args.tenants
    if first == second:
        raise CRIError("tenant check compares two different tenants")
    node = Client.for_args(args, tenant="")
    info = node.rt("Status", api.StatusRequest(verbose=True)).info
    declared: dict[str, Any] = json.loads(info.get("tenants", "{}"))
    stream_port = _port_of(json.loads(info.get("streaming", "{}")).get("url", ""))
    ensure_image(node, args.image, "missing")
    probes: list[Probe] = []
    try:
        for tenant in (first, second):
            probes.append(_probe(Client.for_args(args, tenant=tenant), tenant, args))
        a, b = probes
        networks = [str(declared.get(p.tenant, {}).get("cniNetwork", "")) for p in probes]
        checks = [_kernels(a, b), _memory(a, b), _files(a, b), _processes(a, b),
                  _network(a, b, networks), _node_ports(a, b, stream_port, args.allow_port)]
    finally:
        if not args.keep:
            for probe in probes:
                if probe.started:
                    _remove(probe)
    if args.output != "table":
        print_data({"tenants": [first, second], "passed": all(c.passed for c in checks),
                    "checks": [asdict(c) for c in checks]}, args.output)
    else:
        print_table(["CHECK", "RESULT", "EVIDENCE"],
                    [[c.name, "PASS" if c.passed else "FAIL", c.evidence] for c in checks])
    return 0 if all(c.passed for c in checks) else 1


# -- the probes -------------------------------------------------------------------


def _probe(client: Client, tenant: str, args: argparse.Namespace) -> Probe:
    for pod in client.rt("ListPodSandbox", api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(state=api.PodSandboxStateValue(
                state=api.SANDBOX_READY)))).items:
        token = pod.labels.get(PROBE_LABEL, "")
        if not TOKEN.fullmatch(token):
            continue
        for container in client.rt("ListContainers", api.ListContainersRequest(
                filter=api.ContainerFilter(pod_sandbox_id=pod.id))).containers:
            if container.state == api.CONTAINER_RUNNING:
                return Probe(tenant, client, pod.id, container.id, token, _ip(client, pod.id),
                             started=False)
    token = secrets.token_hex(6)
    name = f"probe-{token}"
    uid = secrets.token_hex(16)
    pod = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        hostname=name, labels={PROBE_LABEL: token},
        log_directory=os.path.join(args.log_root, f"{tenant}_{name}_{uid}"))
    serve = (f"mkdir -p /probe-{token} && echo {token} > /probe-{token}/index.html && "
             f"exec httpd -f -p {PROBE_PORT} -h /probe-{token}")
    container = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="probe"), image=api.ImageSpec(image=args.image),
        command=["sh", "-c", serve], log_path="probe/0.log", labels={PROBE_LABEL: token})
    pod_id = client.rt("RunPodSandbox", api.RunPodSandboxRequest(
        config=pod, runtime_handler=args.runtime), timeout=max(args.timeout, 300.0)
    ).pod_sandbox_id
    probe = Probe(tenant, client, pod_id, "", token, "", started=True,
                  log_directory=pod.log_directory)
    try:
        probe.container_id = client.rt("CreateContainer", api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container, sandbox_config=pod)).container_id
        client.rt("StartContainer", api.StartContainerRequest(container_id=probe.container_id))
        probe.ip = _ip(client, pod_id)
        # httpd listening: the network check must not race its start.
        probe.sh(f"for i in $(seq 50); do nc -w 1 127.0.0.1 {PROBE_PORT} </dev/null "
                 ">/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1")
    except BaseException:
        _remove(probe)
        raise
    return probe


def _ip(client: Client, pod_id: str) -> str:
    status = client.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    return str(status.status.network.ip)


def _remove(probe: Probe) -> None:
    try:
        remove_pod(probe.client, probe.pod_id, probe.log_directory)
    except CRIError as exc:
        print(f"vmrt: removing probe pod {probe.pod_id[:13]}: {exc}")


# -- the checks ------------------------------------------------------------------


def _kernels(a: Probe, b: Probe) -> Check:
    ids = {a.tenant: a.sh("cat /proc/sys/kernel/random/boot_id")[1],
           b.tenant: b.sh("cat /proc/sys/kernel/random/boot_id")[1],
           "node": Path("/proc/sys/kernel/random/boot_id").read_text().strip()}
    distinct = len(set(ids.values())) == 3 and all(ids.values())
    return Check("separate kernels", distinct,
                 "boot_id " + ", ".join(f"{k} {v[:8]}" for k, v in ids.items()))


def _memory(a: Probe, b: Probe) -> Check:
    node = _mem_total(Path("/proc/meminfo").read_text())
    seen = {a.tenant: _mem_total(a.sh("cat /proc/meminfo")[1]),
            b.tenant: _mem_total(b.sh("cat /proc/meminfo")[1])}
    ok = all(0 < kib < node for kib in seen.values())
    return Check("VM-sized memory view", ok,
                 ", ".join(f"{k} {v // 1024} MiB" for k, v in seen.items())
                 + f"; node {node // 1024} MiB")


def _mem_total(meminfo: str) -> int:
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return int(found.group(1)) if found else 0


def _files(a: Probe, b: Probe) -> Check:
    """A marker each writes in /tmp and /dev/shm: seen by its writer (the
    control), by nobody else."""
    problems = []
    for writer, reader in ((a, b), (b, a)):
        marker = secrets.token_hex(8)
        paths = [f"/tmp/vmrt-check-{marker}", f"/dev/shm/vmrt-check-{marker}"]
        writer.sh("; ".join(f"echo {marker} > {p}" for p in paths))
        for path in paths:
            if writer.sh(f"cat {path}")[1] != marker:
                problems.append(f"{writer.tenant} cannot read back {path}")
            if reader.sh(f"cat {path} 2>/dev/null")[1] == marker:
                problems.append(f"{reader.tenant} sees {writer.tenant}'s {path}")
        writer.sh("rm -f " + " ".join(paths))
    return Check("no shared files", not problems,
                 "; ".join(problems) or "markers in /tmp and /dev/shm seen by their writer only")


def _processes(a: Probe, b: Probe) -> Check:
    problems = []
    for owner, other in ((a, b), (b, a)):
        # The pattern does not match itself: grep's own command line holds "[x]".
        pattern = f"probe-[{owner.token[0]}]{owner.token[1:]}"
        find = f"grep -l {shlex.quote(pattern)} /proc/[0-9]*/cmdline 2>/dev/null | wc -l"
        if owner.sh(find)[1] in ("", "0"):
            problems.append(f"{owner.tenant} does not see its own probe process")
        if other.sh(find)[1] not in ("", "0"):
            problems.append(f"{other.tenant} sees {owner.tenant}'s probe process")
    return Check("no shared processes", not problems,
                 "; ".join(problems) or "each sees its own probe process only")


def _network(a: Probe, b: Probe, networks: list[str]) -> Check:
    separate = networks[0] != networks[1]
    reached = []
    for source, target in ((a, b), (b, a)):
        # HTTP by hand: busybox's wget crashes (SIGSEGV) in these images.
        got = source.sh(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | "
                        f"timeout 6 nc -w 3 {target.ip} {PROBE_PORT} 2>/dev/null")[1]
        if got.splitlines()[-1:] == [target.token]:
            reached.append(f"{source.tenant} reaches {target.tenant} at {target.ip}")
    nets = " and ".join(f"{p.tenant} on {n or 'the default network'}"
                        for p, n in zip((a, b), networks, strict=True))
    if separate:
        return Check("pod network", not reached,
                     f"{nets}: " + ("; ".join(reached) + ", though separate" if reached
                                    else "neither reaches the other"))
    return Check("pod network", len(reached) == 2,
                 f"{nets}: " + ("; ".join(reached) if len(reached) == 2
                                else "one network, yet not both reach each other"))


def _node_ports(a: Probe, b: Probe, stream_port: int, allowed: list[int]) -> Check:
    listeners = _listening()
    if stream_port:
        listeners.add(("0.0.0.0", stream_port))
    reached: list[str] = []
    for probe in (a, b):
        gateway = probe.sh("ip route | awk '/^default/ {print $3; exit}'")[1]
        targets = sorted({(addr if _routable(addr) else gateway, port)
                          for addr, port in listeners if _routable(addr) or gateway})
        targets = targets[:MAX_NODE_TARGETS]
        # nc's connect times out after 2 s (1: refused or dropped); a
        # connected nc ends at once (0) or, if the server holds it open, at
        # the timeout's kill (124 or 143): all three mean reachable.
        script = " ".join(f"(timeout 4 nc -w 2 {h} {p} </dev/null >/dev/null 2>&1; "
                          f"case $? in 0|124|143) echo {h}:{p};; esac) &"
                          for h, p in targets) + " wait"
        reached += [f"{probe.tenant}->{t}" for t in probe.sh(script, timeout=60)[1].split()]
    denied = [r for r in reached if int(r.rsplit(":", 1)[1]) not in allowed]
    shown = f"{len(listeners)} node ports tried (streaming {stream_port or 'unknown'})"
    if reached:
        shown += "; reached " + ", ".join(reached)
        if len(denied) < len(reached):
            shown += f" (allowed: {', '.join(map(str, sorted(set(allowed))))})"
    return Check("node ports unreachable", not denied, shown)


def _listening() -> set[tuple[str, int]]:
    """The node's listening TCP sockets (address, port), from /proc/net/tcp{,6}."""
    found: set[tuple[str, int]] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def _routable(address: str) -> bool:
    """An address a pod can aim at itself (not a wildcard, not loopback)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        return False  # the pods' networks here are IPv4
    return not (ip.is_unspecified or ip.is_loopback)


def _port_of(url: str) -> int:
    found = re.search(r":(\d+)/?$", url)
    return int(found.group(1)) if found else 0
