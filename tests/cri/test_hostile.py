"""Attacks from a hostile guest, each run from a privileged container that
shares the VM's pid namespace (so ``nsenter -t 1`` reaches the agent's own
namespaces: as much of the guest as root in the guest kernel has).

Each test states the attack, then checks that the host is untouched.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error, wait_for
from tests.helpers import leaks
from tests.helpers.registry import free_port

pytestmark = pytest.mark.vm

FORGE_HANDLER = '[runtime_handlers.forge]\nkernel_params = ["vmrt.test_forged_events=1"]\n'


@pytest.fixture(scope="module")
def vmrtd(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    """The module's daemon, with a handler whose agent can be made to lie."""
    for base in _short_dir():
        yield from _daemon(base, guest_image, request, extra_config=FORGE_HANDLER)


def attacker(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> str:
    pod_id, config = pod
    return vmrtd.run_container(pod_id, config, ["sleep", "600"], linux=api.LinuxContainerConfig(
        security_context=api.LinuxContainerSecurityContext(
            privileged=True, namespace_options=api.NamespaceOption(pid=api.NODE))))


def in_agent(vmrtd: Daemon, container: str, script: str,
             timeout: int = 60) -> api.ExecSyncResponse:
    """Run ``script`` in the agent's mount namespace, as guest root."""
    return vmrtd.exec(container, ["nsenter", "-t", "1", "-m", "--", "sh", "-c", script],
                      timeout=timeout)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def canary() -> Iterator[Path]:
    """A host directory worth protecting: files, and a tmpfs mounted under it
    with files of its own (as /var/lib/kubelet holds every pod's volumes)."""
    base = Path("/tmp") / f"vmrt-canary-{secrets.token_hex(4)}"
    (base / "volume").mkdir(parents=True)
    (base / "precious").write_text("keep me\n")
    subprocess.run(["mount", "-t", "tmpfs", "canary", str(base / "volume")], check=True)
    (base / "volume" / "data").write_text("keep me too\n")
    try:
        yield base
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(base / "volume")], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def assert_canary_intact(canary: Path) -> None:
    assert (canary / "precious").read_text() == "keep me\n"
    assert is_mounted(canary / "volume"), "the host unmounted the canary's tmpfs"
    assert (canary / "volume" / "data").read_text() == "keep me too\n"


def test_symlink_planted_in_the_share_never_steers_the_host(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig], canary: Path,
        tmp_path: Path) -> None:
    """Kata's CVE-2020-2026: swap a sibling container's share directory (and
    its root filesystem and volume mount points) for symlinks to a host
    directory, then have the host remove that container."""
    pod_id, config = pod
    volume = tmp_path / "volume"
    volume.mkdir()
    victim = vmrtd.run_container(pod_id, config, ["sleep", "600"], mounts=[
        api.Mount(container_path="/data", host_path=str(volume))])
    evil = attacker(vmrtd, pod)
    share = f"/run/vmrt/share/{victim}"
    seen = in_agent(vmrtd, evil, f"ls {share}/rootfs/bin/sh {share}/mounts/0 >/dev/null && "
                                 "echo seen")
    assert seen.stdout == b"seen\n", seen.stderr  # the attacker does reach the share
    plant = in_agent(vmrtd, evil, f"""
        cd /run/vmrt/share
        mv {victim} {victim}.moved; ln -s {canary} {victim}
        mv {victim}/rootfs {victim}/rootfs.moved; ln -s {canary} {victim}/rootfs
        mv {victim}/mounts/0 {victim}/mounts/0.moved; ln -s {canary} {victim}/mounts/0
        ln -s {canary} {victim}/mounts/1
        ln -s {canary} {victim}/rootfs/escape
        ln -s {canary} {victim}/mounts/0/escape
        ls -la /run/vmrt/share /run/vmrt/share/{victim}
    """)
    refusals = plant.stderr.decode()
    # Three renames and two new names in the share's own directories.
    assert refusals.count("can't rename") == 3, refusals
    assert refusals.count("Read-only file system") == 5, refusals
    vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=victim), timeout=60)
    assert_canary_intact(canary)
    # What the guest could write (inside the root filesystem and the volume)
    # was just that: the volume's symlink is in the volume, pointing nowhere
    # the host goes.
    assert (volume / "escape").is_symlink()


def test_host_ip_cannot_inject_qemu_options(vmrtd: Daemon) -> None:
    """A hostNetwork pod whose port's host_ip carries QEMU -netdev options
    (tftp=/ would serve every host file to the guest)."""
    config = vmrtd.pod_config(port_mappings=[api.PortMapping(
        container_port=80, host_port=8080,
        host_ip="127.0.0.1:1-:1,tftp=/,hostfwd=tcp:127.0.0.1")])
    config.linux.security_context.namespace_options.network = api.NODE
    config.hostname = ""  # a hostNetwork pod has the node's
    before = vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                           api.RunPodSandboxRequest(config=config), timeout=60)
    assert details.startswith("config.port_mappings[0].host_ip:"), details
    assert not leaks.qemu_processes("tftp=")
    assert vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items == before


@pytest.mark.parametrize("size", [
    48_000_000,
    # Larger than the VM's 256 MiB of RAM: about 4 min at this machine's
    # 1.4 MB/s through TCG, so out of the default run (``-m slow``).
    pytest.param(300_000_000, marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
])
def test_output_burst_reaches_the_log_and_the_container_lives(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig], size: int) -> None:
    """A container writes stdout as fast as it can: the guest keeps only what
    the host has not taken yet (the spool stays within its limit plus the
    segment being written, measured in the guest while the burst runs), it
    all reaches the CRI log, and the container and the pod still answer."""
    from vmrt.agent.stdio import SEGMENT, SPOOL_LIMIT

    pod_id, config = pod
    spy = attacker(vmrtd, pod)
    line = "x" * 99
    script = f"yes {line} | head -c {size}; echo; echo burst-done; exec sleep 600"
    container = vmrtd.run_container(pod_id, config, ["sh", "-c", script], name=f"burst-{size}")
    log_path = Path(vmrtd.status(container).log_path)
    tail = b""

    def finished() -> bool:
        nonlocal tail
        with log_path.open("rb") as f:
            f.seek(max(0, log_path.stat().st_size - 4096))
            tail = f.read()
        return b" stdout F burst-done\n" in tail

    io_dir = f"/run/vmrt/containers/{container}/io"
    # The segment files only: stdout.fifo is there too, and reading it would
    # take the container's bytes.
    spooled: list[int] = []
    while not finished():
        reply = in_agent(vmrtd, spy, f"cat {io_dir}/stdout.[0-9]* 2>/dev/null | wc -c")
        spooled.append(int(reply.stdout))
        assert len(spooled) < 1200, (spooled[-10:], tail[-500:])
        time.sleep(0.5)
    print(f"guest spool samples: {len(spooled)}, largest {max(spooled, default=0)} bytes")
    assert max(spooled) > 0  # the samples saw the spool while it held bytes
    assert max(spooled) <= SPOOL_LIMIT + 2 * SEGMENT, spooled
    assert log_path.stat().st_size > size
    assert vmrtd.status(container).state == api.CONTAINER_RUNNING
    reply = vmrtd.exec(container, ["sh", "-c", "echo alive"])
    assert reply.stdout == b"alive\n"


def test_writable_layer_usage_counts_a_deep_tree_and_follows_no_symlink(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    """The host walks the container's writable layer for ContainerStats: a tree
    as deep as the guest can make one is counted to the bottom (os.walk's
    recursion gave up near 1000), and symlinks the guest plants there (to /
    and /etc) are not followed into the host."""
    container = attacker(vmrtd, pod)
    # As deep as the guest can go (9p gives up near the host's PATH_MAX).
    reply = vmrtd.exec(container, ["sh", "-c",
                                   "cd / && ln -s / escape-root && ln -s /etc escape-etc && "
                                   "i=0; while [ $i -lt 5000 ] && mkdir d 2>/dev/null && cd d; "
                                   "do i=$((i+1)); done; head -c 1048576 /dev/zero > big && "
                                   "echo $i"], timeout=300)
    depth = int(reply.stdout)
    print(f"the guest made a tree {depth} deep")
    assert depth > 1000, reply
    stats = vmrtd.runtime.ContainerStats(api.ContainerStatsRequest(container_id=container),
                                         timeout=120).stats
    layer = stats.writable_layer
    assert layer.used_bytes.value >= 1 << 20  # the file at the bottom is counted
    # Every directory, the file and the two links, and little else: the
    # host's / and /etc behind the links hold far more than 200 entries.
    assert depth + 3 <= layer.inodes_used.value < depth + 3 + 200, layer


def test_serial_flood_stays_under_the_console_cap(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    """Guest root writes its serial port as fast as it can: the host keeps a
    bounded file, and the most recent output is in it."""
    from vmrt.hypervisor.console import CONSOLE_CAP

    pod_id, _ = pod
    evil = attacker(vmrtd, pod)
    flood = in_agent(vmrtd, evil, "mknod /dev/ttyS0-flood c 4 64 && (yes flood-flood-flood "
                                  "> /dev/ttyS0-flood 2>/dev/null </dev/null &) ; echo ok")
    assert flood.stdout == b"ok\n", flood.stderr
    directory = next(vmrtd.state.glob(f"sandboxes/{pod_id[:32]}"))
    logs = [directory / "console.log", directory / "console.log.1"]

    def total() -> int:
        return sum(p.stat().st_size for p in logs if p.exists())

    try:
        # The flood outruns the cap several times over in this time.
        assert wait_for(lambda: (directory / "console.log.1").exists(), timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert total() <= 2 * CONSOLE_CAP, total()
            time.sleep(0.5)
    finally:
        in_agent(vmrtd, evil, "killall yes; sleep 1; echo flood-ended-marker > /dev/ttyS0-flood")
    assert wait_for(lambda: b"flood-ended-marker" in logs[0].read_bytes(), timeout=30)
    assert total() <= 2 * CONSOLE_CAP


def test_forged_exit_event_for_another_pods_container_is_ignored(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    """A compromised guest that learned another pod's container id tells the
    host, over the real agent channel, that it exited."""
    pod_id, config = pod
    victim = vmrtd.run_container(pod_id, config, ["sleep", "600"], name="victim")
    hostile_config = vmrtd.pod_config()
    hostile_pod = vmrtd.run_pod(hostile_config, handler="forge")
    own = vmrtd.run_container(hostile_pod, hostile_config, ["sleep", "600"], name="own")
    evil = attacker(vmrtd, (hostile_pod, hostile_config))
    forge = in_agent(vmrtd, evil, f"echo '{victim} 0' > /run/vmrt/test/forge-event && "
                                  f"echo '{own} 3' > /run/vmrt/test/forge-event && echo sent")
    assert forge.stdout == b"sent\n", forge.stderr
    # The lie about its own container is believed (the guest owns it): the
    # channel works. The one about the other pod's is not.
    assert wait_for(lambda: vmrtd.status(own).state == api.CONTAINER_EXITED, timeout=30)
    assert vmrtd.status(own).exit_code == 3
    assert vmrtd.status(victim).state == api.CONTAINER_RUNNING
    assert f"reported an exit of container {victim!r}, which is not in this pod; ignored" \
        in vmrtd.log_file.read_text()
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=hostile_pod),
                                   timeout=60)


def test_raw_bytes_on_the_serial_line_cost_the_guest_its_own_session_only(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    """Guest root writes its own bytes on the agent's serial line, outside
    the framing (an HTTP/2 preface, then a header that claims a 4 GiB frame):
    vmrtd's relay ends that pod's session and reconnects; the pod stays
    READY and answers, and another pod never notices."""
    bystander_id, bystander_config = pod
    bystander = vmrtd.run_container(bystander_id, bystander_config, ["sleep", "600"])
    hostile_config = vmrtd.pod_config()
    hostile_pod = vmrtd.run_pod(hostile_config, handler="forge")
    own = vmrtd.run_container(hostile_pod, hostile_config, ["sleep", "600"])
    evil = attacker(vmrtd, (hostile_pod, hostile_config))
    garbage = r"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\366vm\003\377\377\377\377zzzzzzzz"
    # Later, in the background: the exec that arms it must get its answer.
    armed = in_agent(vmrtd, evil, f"(sleep 1; printf '{garbage}' > /run/vmrt/test/forge-serial)"
                                  " >/dev/null 2>&1 & echo armed")
    assert armed.stdout == b"armed\n", armed.stderr
    assert wait_for(lambda: "the guest broke the framing" in vmrtd.log_file.read_text(),
                    timeout=30), vmrtd.log_file.read_text()[-2000:]

    def answers(container: str) -> bool:
        try:
            return vmrtd.exec(container, ["echo", "ok"]).stdout == b"ok\n"
        except grpc.RpcError:
            return False  # the call that was in flight on the broken session

    assert wait_for(lambda: answers(own), timeout=60)
    assert vmrtd.notready_reason(hostile_pod) == ""
    assert answers(bystander)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=hostile_pod),
                                   timeout=60)


def node_address() -> str:
    """An IPv4 address of this node that is not loopback (the tests' own
    network namespaces and bridges aside)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=socket.AF_INET):
            name = links.get(addr["index"], "")
            if name != "lo" and not name.startswith(("vmrt", "veth", "cni", "podbr", "vt")):
                return str(addr.get_attr("IFA_ADDRESS"))
    pytest.skip("this node has no non-loopback IPv4 address")


@pytest.fixture
def node_server() -> Iterator[tuple[str, int]]:
    """A TCP server on one of the node's own non-loopback addresses."""
    server = socket.create_server((node_address(), 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"node-hello\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[:2]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_host_network_pod_cannot_reach_the_nodes_loopback(
        vmrtd: Daemon, node_server: tuple[str, int]) -> None:
    """A hostNetwork pod (on QEMU's user-mode network, the node's loopback
    was at 10.0.2.2) goes for vmrtd's streaming port on the node's
    loopback, every way a guest root can: 10.0.2.2, its gateway, and
    127.0.0.0/8 routed out of the VM to the gateway by hand."""
    port = free_port()
    config = vmrtd.pod_config(port_mappings=[api.PortMapping(container_port=8080,
                                                             host_port=port)])
    config.linux.security_context.namespace_options.network = api.NODE
    config.hostname = ""  # a hostNetwork pod has the node's
    pod_id = vmrtd.run_pod(config)
    evil = attacker(vmrtd, (pod_id, config))
    status = vmrtd.runtime.Status(api.StatusRequest(verbose=True))
    stream_port = int(json.loads(status.info["streaming"])["url"].rsplit(":", 1)[1])
    # Egress still works: a server on one of the node's own addresses.
    host, server_port = node_server
    reached = vmrtd.exec(evil, ["sh", "-c", f"nc -w 5 {host} {server_port} </dev/null"])
    assert reached.stdout == b"node-hello\n", reached.stderr
    gateway = vmrtd.exec(evil, ["sh", "-c", "ip route | awk '/default/ {print $3}'"]
                         ).stdout.decode().strip()
    assert gateway, "the pod has no default route"

    def connects(address: str) -> bool:
        probe = vmrtd.exec(evil, ["sh", "-c", f"echo | nc -w 3 {address} {stream_port} "
                                              f">/dev/null 2>&1 && echo open || echo closed"])
        return probe.stdout.strip() == b"open"

    assert not connects("10.0.2.2")
    assert not connects(gateway)
    # Route the whole of 127.0.0.0/8 out of the VM, to the gateway.
    routed = vmrtd.exec(evil, ["sh", "-c", f"""
        sysctl -w net.ipv4.conf.eth0.route_localnet=1 >/dev/null &&
        ip route del local 127.0.0.1 dev lo table local &&
        ip route del local 127.0.0.0/8 dev lo table local &&
        ip route add 127.0.0.0/8 via {gateway} dev eth0 && ip route get 127.0.0.1"""])
    assert routed.exit_code == 0 and b"via " + gateway.encode() in routed.stdout, routed.stderr
    assert not connects("127.0.0.1")
    # TCP could not answer back from 127.0.0.1 anyway; a datagram needs no
    # answer. The node's loopback must not even hear it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(3)
        udp_port = listener.getsockname()[1]
        # busybox nc has no UDP here; the guest's own python3 has.
        sent = in_agent(vmrtd, evil, "python3 -c \"import socket; s = socket.socket("
                                     "socket.AF_INET, socket.SOCK_DGRAM); "
                                     f"[s.sendto(b'datagram', ('127.0.0.1', {udp_port})) "
                                     "for _ in range(3)]; print('sent')\"")
        assert sent.stdout == b"sent\n", sent.stderr
        with pytest.raises(TimeoutError):
            listener.recv(100)
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
