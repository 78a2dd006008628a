"""Another node's vmrtd, over SSH (paramiko): ``--host ssh://USER@HOST[:PORT]``.

gRPC needs a socket it can dial, and the node's CRI socket is a unix socket
on the node: a local unix socket relays each connection over an SSH exec
channel running ``vmrt dial-stdio`` on the node (docker's ``ssh://``
design; paramiko has no client for OpenSSH's direct-streamlocal channel).
The streaming URLs vmrtd returns (exec, attach, port-forward) are on the
node's loopback: each is served by a local TCP listener whose connections
are ``direct-tcpip`` channels to the URL's address, as the node sees it.

Host keys are checked against ``~/.ssh/known_hosts`` and nothing else: an
unknown or changed key is refused. Keys come from ``-i``, the SSH agent,
``~/.ssh/config``'s IdentityFile, or the default ~/.ssh/id_* files.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import socket
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass

import paramiko

from vmrt.errors import VmrtError

DEFAULT_PORT = 22
_URL = re.compile(r"ssh://(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^@/:]+)(?::(?P<port>\d+))?/?")
_nodes: dict[tuple[str, str], RemoteNode] = {}


class RemoteError(VmrtError):
    pass


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int

    @property
    def shown(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse(url: str) -> Target:
    found = _URL.fullmatch(url)
    if not found:
        raise RemoteError(f"--host {url!r}: not ssh://[USER@]HOST[:PORT]")
    host = found.group("host").strip("[]")
    config = _ssh_config(host)
    user = found.group("user") or config.get("user") or os.environ.get("USER", "root")
    port = int(found.group("port") or config.get("port") or DEFAULT_PORT)
    return Target(user, config.get("hostname", host), port)


def _ssh_config(host: str) -> dict[str, str]:
    path = os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return {}
    config = paramiko.SSHConfig.from_path(path).lookup(host)
    identity = config.get("identityfile")
    result = {k: str(v) for k, v in config.items() if isinstance(v, str)}
    if identity:
        result["identityfile"] = os.path.expanduser(identity[0])
    return result


def node(url: str, identity: str = "", remote_command: str = "vmrt") -> RemoteNode:
    """One SSH connection per node and key, shared by the clients of one command."""
    key = (url, identity)
    if key not in _nodes:
        _nodes[key] = RemoteNode(url, identity, remote_command)
    return _nodes[key]


class RemoteNode:
    def __init__(self, url: str, identity: str = "", remote_command: str = "vmrt") -> None:
        self.target = parse(url)
        self.remote_command = shlex.split(remote_command)
        t = self.target
        key_file = identity or _ssh_config(t.host).get("identityfile") or None
        client = paramiko.SSHClient()
        known = os.path.expanduser("~/.ssh/known_hosts")
        if os.path.exists(known):
            client.load_host_keys(known)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        trust = (f"ssh-keyscan -p {t.port} {t.host} >> ~/.ssh/known_hosts "
                 "(after checking the key's fingerprint with the node's owner)")
        try:
            client.connect(t.host, t.port, username=t.user, key_filename=key_file,
                           timeout=15, auth_timeout=15, banner_timeout=15)
        except paramiko.BadHostKeyException:
            raise RemoteError(
                f"ssh {t.shown}: the node's host key is not the one in ~/.ssh/known_hosts: "
                f"refused. If the node was reinstalled: ssh-keygen -R '[{t.host}]:{t.port}', "
                f"then {trust}") from None
        except paramiko.AuthenticationException as exc:
            raise RemoteError(f"ssh {t.shown}: authentication failed ({exc}); give a key with "
                              "-i KEY, an SSH agent or ~/.ssh/config's IdentityFile") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise RemoteError(f"ssh {t.shown}: the node's host key is unknown: refused. "
                                  f"To trust it: {trust}") from None
            raise RemoteError(f"ssh {t.shown}: {exc}") from None
        except OSError as exc:
            raise RemoteError(f"ssh {t.shown}: cannot connect: {exc}") from None
        self.client = client
        transport = client.get_transport()
        assert transport is not None
        self.transport = transport
        self.last_error = ""
        self._said = threading.Event()
        self._sftp: paramiko.SFTPClient | None = None
        self._dir = tempfile.mkdtemp(prefix="vmrt-ssh-")
        atexit.register(self.close)

    def open_file(self, path: str) -> paramiko.SFTPFile:
        """A file of the node's, read over SFTP (container logs)."""
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp.open(path, "rb")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- the CRI socket ---------------------------------------------------------

    def relay(self, endpoint: str) -> str:
        """A local unix socket that reaches ``endpoint`` on the node."""
        path = os.path.join(self._dir, f"cri-{len(os.listdir(self._dir))}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        command = shlex.join([*self.remote_command, "-r", endpoint, "dial-stdio"])

        def open_channel() -> paramiko.Channel:
            channel = self.transport.open_session(timeout=15)
            channel.exec_command(command)
            threading.Thread(target=self._stderr_of, args=(channel,), daemon=True).start()
            return channel

        threading.Thread(target=_serve, args=(listener, open_channel), daemon=True).start()
        return f"unix://{path}"

    def _stderr_of(self, channel: paramiko.Channel) -> None:
        """What ``dial-stdio`` said on the node, for the error message."""
        data = b""
        with contextlib.suppress(Exception):
            while chunk := channel.recv_stderr(4096):
                data = (data + chunk)[-4096:]
        text = data.decode(errors="replace").strip()
        if text:
            self.last_error = text.splitlines()[-1]
            self._said.set()

    def error(self, wait: float = 2.0) -> str:
        """The last line the node's end wrote on stderr, waiting a little for it."""
        self._said.wait(wait)
        return self.last_error

    # -- streaming URLs -----------------------------------------------------------

    def tunnel(self, url: str) -> str:
        """``url`` (on the node's network) rewritten to a local listener."""
        parts = urllib.parse.urlsplit(url)
        if parts.hostname is None:
            return url
        default = 443 if parts.scheme in ("https", "wss") else 80
        destination = (parts.hostname, parts.port or default)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def open_channel() -> paramiko.Channel:
            return self.transport.open_channel("direct-tcpip", destination, ("127.0.0.1", 0),
                                               timeout=15)

        threading.Thread(target=_serve, args=(listener, open_channel), daemon=True).start()
        local = f"127.0.0.1:{listener.getsockname()[1]}"
        return urllib.parse.urlunsplit(parts._replace(netloc=local))


def _serve(listener: socket.socket, open_channel: object) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            channel = open_channel()  # type: ignore[operator]
        except Exception:
            conn.close()
            continue
        _splice(conn, channel)


def _splice(conn: socket.socket, channel: paramiko.Channel) -> None:
    def up() -> None:
        with contextlib.suppress(Exception):
            while data := conn.recv(65536):
                channel.sendall(data)
        with contextlib.suppress(Exception):
            channel.shutdown_write()

    def down() -> None:
        with contextlib.suppress(Exception):
            while data := channel.recv(65536):
                conn.sendall(data)
        with contextlib.suppress(Exception):
            conn.shutdown(socket.SHUT_WR)
        with contextlib.suppress(Exception):
            channel.close()

    threading.Thread(target=up, daemon=True).start()
    threading.Thread(target=down, daemon=True).start()


def dial_stdio(endpoint: str) -> int:
    """On the node: stdin to vmrtd's socket, its answers to stdout."""
    path = endpoint.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        raise RemoteError(f"cannot reach vmrtd at {endpoint} on this node: "
                          f"{exc.strerror or exc}") from None

    def up() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(0, 65536):
                sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=up, daemon=True).start()
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    return 0
