"""The CLI against another node's vmrtd through a real OpenSSH server.

The "node" is a network namespace holding vmrtd and sshd, reached through
a veth pair: vmrtd's streaming server is on the namespace's loopback. sshd
also has a mount namespace of its own in which an empty directory,
``remote-view``, shows the daemon's base: the CLI is pointed at the CRI
socket under it, which exists only as sshd sees it. A CLI that bypassed the
tunnel would find neither.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, wait_for
from tests.helpers.registry import free_port
from tests.helpers.terminal import PtyChild

pytestmark = pytest.mark.vm


@dataclass
class Sshd:
    address: str
    port: int
    home: Path  # the CLI's $HOME: ~/.ssh/known_hosts and the user's key
    key: Path
    socket: str  # the CRI socket as the node (sshd) sees it
    proc: subprocess.Popen[bytes]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)
    return (path.parent / (path.name + ".pub")).read_text().strip()


@pytest.fixture(scope="module")
def node_ns() -> Iterator[tuple[str, str]]:
    """A network namespace with a veth to the host: (its name, its address)."""
    tag = secrets.token_hex(3)
    ns, outside, inside = f"vft-{tag}", f"vfh{tag}", f"vfn{tag}"
    subnet = f"10.254.{secrets.randbelow(250)}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    ip("netns", "add", ns)
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", ns)
        ip("addr", "add", f"{subnet}.1/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", ns, "addr", "add", f"{subnet}.2/30", "dev", inside)
        ip("-n", ns, "link", "set", inside, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, f"{subnet}.2"
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture(scope="module")
def vmrtd(guest_image, node_ns: tuple[str, str],  # type: ignore[no-untyped-def]
          request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """vmrtd inside the node's network namespace."""
    for base in _short_dir():
        # nsenter, not `ip netns exec`, which remounts /sys and hides the cgroups.
        yield from _daemon(base, guest_image, request,
                           prefix=["nsenter", f"--net=/run/netns/{node_ns[0]}", "--"])


@pytest.fixture(scope="module")
def sshd(vmrtd: Daemon, node_ns: tuple[str, str]) -> Iterator[Sshd]:
    base = vmrtd.base / "ssh"
    base.mkdir()
    host_key = keygen(base / "host_key")
    user_key = keygen(base / "user_key")
    (base / "authorized_keys").write_text(user_key + "\n")
    view = vmrtd.base / "remote-view"
    view.mkdir()
    ns, address = node_ns
    port = 2222
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {base}/host_key\n"
        f"AuthorizedKeysFile {base}/authorized_keys\nPidFile {base}/sshd.pid\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "AllowStreamLocalForwarding no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    inside = (f"mount --bind {shlex.quote(str(vmrtd.base))} {shlex.quote(str(view))} && "
              f"exec /usr/sbin/sshd -D -e -f {shlex.quote(str(base / 'sshd_config'))}")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--", "unshare", "--mount",
                             "--propagation", "private", "sh", "-c", inside],
                            stderr=(base / "sshd.log").open("wb"))
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(f"[{address}]:{port} {host_key}\n")
    try:
        assert wait_for(lambda: _listening(address, port), timeout=20), \
            (base / "sshd.log").read_text()
        yield Sshd(address, port, home, base / "user_key", f"unix://{view}/vmrt.sock", proc)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.returncode not in (0, -15):
            print((base / "sshd.log").read_text(), file=sys.stderr)


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, port)) == 0


def argv(sshd: Sshd, *args: str, key: Path | None = None, endpoint: str = "") -> list[str]:
    return [sys.executable, "-m", "vmrt.cli.main", "--host", f"ssh://root@{sshd.address}:{sshd.port}",
            "-i", str(key or sshd.key), "--remote-vmrt", f"{sys.executable} -m vmrt.cli.main",
            "-r", endpoint or sshd.socket, *args]


def remote(sshd: Sshd, *args: str, key: Path | None = None, known_hosts: str | None = None,
           endpoint: str = "", timeout: float = 180,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(sshd.home)}
    env.pop("SSH_AUTH_SOCK", None)
    if known_hosts is not None:
        (sshd.home / ".ssh" / "known_hosts").write_text(known_hosts)
    return subprocess.run(
        argv(sshd, *args, key=key, endpoint=endpoint), capture_output=True, text=True,
        timeout=timeout, check=False, env=env, input=stdin if stdin is not None else "")


def test_the_remote_socket_exists_only_through_sshd(vmrtd: Daemon, sshd: Sshd) -> None:
    assert not Path(sshd.socket.removeprefix("unix://")).exists()
    direct = subprocess.run([sys.executable, "-m", "vmrt.cli.main", "-r", sshd.socket, "pods",
                             "--timeout", "3"], capture_output=True, text=True, timeout=60)
    assert direct.returncode == 125 and "cannot reach vmrtd" in direct.stderr
    # The streaming server is on the node's loopback, not this one's.
    status = vmrtd.runtime.Status(api.StatusRequest(verbose=True))
    url = urllib.parse.urlsplit(json.loads(status.info["streaming"])["url"])
    assert url.hostname == "127.0.0.1" and url.port
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", url.port)) != 0


def test_pods_run_and_exec_over_ssh(vmrtd: Daemon, sshd: Sshd) -> None:
    ran = remote(sshd, "run", "-d", "--name", "far", "--log-root", str(vmrtd.logs),
                 "busybox", "--", "sh", "-c",
                 "echo started far; mkdir -p /www && echo far-away > /www/index.html && "
                 "exec httpd -f -p 8080 -h /www")
    assert ran.returncode == 0, ran.stderr
    container_id = ran.stdout.strip()
    pods = remote(sshd, "pods")
    assert pods.returncode == 0 and "far" in pods.stdout, pods.stderr
    # In the foreground: the log read over SFTP, each stream to its own.
    once = remote(sshd, "run", "--rm", "--log-root", str(vmrtd.logs), "busybox", "--",
                  "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (once.returncode, once.stdout, once.stderr) == (4, "out\n", "err\n")
    # Two nodes, one of them down: its own row, the other's pods under HOST.
    here = f"ssh://root@{sshd.address}:{sshd.port}"
    gone = f"ssh://root@127.0.0.1:{free_port()}"
    both = remote(sshd, "--host", gone, "pods")
    lines = both.stdout.splitlines()
    assert both.returncode == 125 and lines[0].startswith("HOST "), both.stdout + both.stderr
    assert any(line.startswith(here) and "far" in line for line in lines[1:]), both.stdout
    assert any(line.startswith(gone) and "cannot connect" in line for line in lines), both.stdout
    # exec goes through the streaming server on the node's loopback: a
    # direct-tcpip channel.
    executed = remote(sshd, "exec", container_id, "--", "sh", "-c", "echo over-ssh; exit 5")
    assert executed.returncode == 5 and executed.stdout == "over-ssh\n", executed.stderr
    fed = remote(sshd, "exec", "-i", container_id, "--", "tr", "a-z", "A-Z", stdin="abc\n")
    assert fed.returncode == 0 and fed.stdout == "ABC\n", fed.stderr
    assert wait_for(lambda: remote(sshd, "logs", container_id).stdout == "started far\n")
    # attach: the main process's stdin and stdout, through the same tunnel.
    reader = remote(sshd, "run", "-d", "-i", "--name", "reader", "--log-root", str(vmrtd.logs),
                    "busybox", "--", "sh", "-c", "read line; echo got $line")
    assert reader.returncode == 0, reader.stderr
    attached = remote(sshd, "attach", "-i", reader.stdout.strip(), stdin="hello\n")
    assert attached.returncode == 0 and attached.stdout == "got hello\n", attached.stderr
    [reader_pod] = [p["id"] for p in json.loads(remote(sshd, "pods", "-o", "json").stdout)["items"]
                    if p["metadata"]["name"] == "reader"]
    assert remote(sshd, "rm", reader_pod).returncode == 0
    # port-forward: the node's streaming server, then the pod, through SSH.
    [pod_id] = [p["id"] for p in json.loads(remote(sshd, "pods", "-o", "json").stdout)["items"]
                if p["metadata"]["name"] == "far"]
    local = free_port()
    env = {**os.environ, "HOME": str(sshd.home)}
    forward = subprocess.Popen(
        argv(sshd, "port-forward", pod_id, f"{local}:8080"), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def page() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5) as reply:
                    return str(reply.read().decode())
            except OSError:
                return ""

        assert wait_for(lambda: page() == "far-away\n", timeout=60), \
            forward.stderr.read1().decode() if forward.poll() is not None else "no answer"
    finally:
        forward.terminate()
        forward.wait(10)
    # exec -it on a real terminal, through SSH.
    with PtyChild(argv(sshd, "exec", "-it", container_id, "--", "sh"), env) as term:
        term.until(b"# ")
        term.write(b"echo $((6 * 7)); exit 6\n")
        term.until(b"42\r\n")
        assert term.exit_code() == 6, term.seen
    stopped = remote(sshd, "stop", container_id)
    assert stopped.returncode == 0, stopped.stderr
    assert remote(sshd, "rm", pod_id).returncode == 0
    assert "far" not in remote(sshd, "pods").stdout


def test_unknown_and_wrong_keys_and_a_down_daemon_are_one_line_errors(
        vmrtd: Daemon, sshd: Sshd, tmp_path: Path) -> None:
    good = (sshd.home / ".ssh" / "known_hosts").read_text()
    try:
        unknown = remote(sshd, "pods", known_hosts="")
        assert unknown.returncode == 125 and "host key is unknown" in unknown.stderr
        assert "ssh-keyscan" in unknown.stderr
        other = keygen(tmp_path / "other_host")
        changed = remote(sshd, "pods", known_hosts=f"[{sshd.address}]:{sshd.port} {other}\n")
        assert changed.returncode == 125 and "not the one in ~/.ssh/known_hosts" in \
            changed.stderr
    finally:
        (sshd.home / ".ssh" / "known_hosts").write_text(good)
    keygen(tmp_path / "stranger")
    refused = remote(sshd, "pods", key=tmp_path / "stranger")
    assert refused.returncode == 125 and "authentication failed" in refused.stderr
    started = time.monotonic()
    down = remote(sshd, "pods", "--timeout", "10",
                  endpoint=sshd.socket.replace("vmrt.sock", "absent.sock"))
    assert down.returncode == 125 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "cannot reach vmrtd" in down.stderr and "absent.sock" in down.stderr
    assert time.monotonic() - started < 60
