"""Exec, attach and port-forward through the streaming server, over SPDY and WebSocket.

One pod and one long-running container serve every test of the module: the
container runs busybox httpd on port 8080 and echoes its stdin back as
"got LINE", so attach and port-forward have something real to talk to.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error, wait_for
from tests.helpers import streamclient as sc
from tests.helpers.terminal import PtyChild

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

SERVER = ("mkdir -p /www && head -c 262144 /dev/urandom > /www/blob && "
          "echo hello-page > /www/index.html && httpd -p 8080 -h /www && "
          "while read line; do echo \"got $line\"; done")


class Box:
    def __init__(self, daemon: Daemon, pod_id: str, container_id: str) -> None:
        self.d = daemon
        self.pod_id = pod_id
        self.cid = container_id

    def exec_url(self, cmd: list[str], *, stdin: bool = False, stdout: bool = True,
                 stderr: bool = True, tty: bool = False) -> str:
        return self.d.runtime.Exec(api.ExecRequest(
            container_id=self.cid, cmd=cmd, stdin=stdin, stdout=stdout, stderr=stderr,
            tty=tty), timeout=30).url

    def attach_url(self, *, stdin: bool = True) -> str:
        return self.d.runtime.Attach(api.AttachRequest(
            container_id=self.cid, stdin=stdin, stdout=True, stderr=True), timeout=30).url

    def forward_url(self, *ports: int) -> str:
        return self.d.runtime.PortForward(api.PortForwardRequest(
            pod_sandbox_id=self.pod_id, port=list(ports)), timeout=30).url

    def sh(self, script: str) -> str:
        reply = self.d.exec(self.cid, ["sh", "-c", script])
        assert reply.exit_code == 0, reply.stderr
        return reply.stdout.decode()

    def streaming(self) -> dict[str, Any]:
        status = self.d.runtime.Status(api.StatusRequest(verbose=True), timeout=30)
        return json.loads(status.info["streaming"])


@pytest.fixture(scope="module")
def box(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> Iterator[Box]:
    pod_id, pod_config = pod
    cid = vmrtd.run_container(pod_id, pod_config, ["sh", "-c", SERVER], stdin=True)
    box = Box(vmrtd, pod_id, cid)
    assert wait_for(lambda: "8080" in box.sh("netstat -ltn"), timeout=30)
    yield box


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def command(box: Box, transport: str, cmd: list[str], stdin: bytes | None = None,
            resize: tuple[int, int] | None = None, **streams: bool) -> sc.Outcome:
    """One exec over ``transport`` (spdy, ws-v4, ws-v5); ``streams``: stdout/stderr/tty."""
    url = box.exec_url(cmd, stdin=stdin is not None, **streams)
    if transport == "spdy":
        return run(sc.spdy_command(url, stdin=stdin, resize=resize, **streams))
    protocol = {"ws-v4": "v4.channel.k8s.io", "ws-v5": "v5.channel.k8s.io"}[transport]
    return run(sc.ws_command(url, protocol, stdin=stdin, resize=resize))


# -- exec ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["spdy", "ws-v4", "ws-v5"])
def test_exec_exit_codes_and_separate_streams(box: Box, transport: str) -> None:
    ok = command(box, transport, ["sh", "-c", "echo out; echo err >&2"])
    assert (ok.stdout, ok.stderr, ok.exit_code) == (b"out\n", b"err\n", 0)
    assert ok.status == {"metadata": {}, "status": "Success"}
    failed = command(box, transport, ["sh", "-c", "echo before; exit 1"])
    assert (failed.stdout, failed.exit_code) == (b"before\n", 1)
    assert failed.status["reason"] == "NonZeroExitCode"
    killed = command(box, transport, ["sh", "-c", "kill -9 $$"])
    assert killed.exit_code == 137


def test_websocket_signals_ready_on_the_first_output_channel(box: Box) -> None:
    outcome = command(box, "ws-v5", ["true"])
    assert outcome.events[0] == "empty:1"


@pytest.mark.parametrize("transport", ["spdy", "ws-v5"])
def test_exec_10mb_stdout_byte_exact_with_stderr_apart(box: Box, transport: str) -> None:
    digest = box.sh("head -c 10485760 /dev/urandom > /tmp/big && sha256sum /tmp/big").split()[0]
    outcome = command(box, transport, [
        "sh", "-c", "head -c 5242880 /tmp/big; echo middle >&2; tail -c +5242881 /tmp/big"])
    assert len(outcome.stdout) == 10485760
    assert hashlib.sha256(outcome.stdout).hexdigest() == digest
    assert outcome.stderr == b"middle\n"
    assert outcome.exit_code == 0


@pytest.mark.parametrize("transport", ["spdy", "ws-v5"])
def test_exec_stdin_piped_in_and_closed(box: Box, transport: str) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    outcome = command(box, transport, ["sh", "-c", "sha256sum; echo eof-seen >&2"], stdin=data)
    assert outcome.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert outcome.stderr == b"eof-seen\n"
    assert outcome.exit_code == 0


@pytest.mark.parametrize("transport", ["spdy", "ws-v5"])
def test_exec_tty_resize_reaches_stty(box: Box, transport: str) -> None:
    # Until the resize arrives the terminal is 0x0, which stty reports as an error.
    script = ('for i in $(seq 100); do [ "$(stty size 2>/dev/null)" = "33 101" ] && break; '
              'sleep 0.1; done; stty size; [ -t 1 ] && echo is-a-tty; exit 7')
    outcome = command(box, transport, ["sh", "-c", script], tty=True, stderr=False,
                      resize=(101, 33))
    assert outcome.stdout.replace(b"\r\n", b"\n") == b"33 101\nis-a-tty\n"
    assert outcome.stderr == b""
    assert outcome.exit_code == 7


def test_exec_errors_are_clear(box: Box) -> None:
    runtime = box.d.runtime
    message = expect_error(grpc.StatusCode.NOT_FOUND, runtime.Exec,
                           api.ExecRequest(container_id="nosuchcontainer", cmd=["true"],
                                           stdout=True), timeout=30)
    assert "nosuchcontainer" in message
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, runtime.Exec, api.ExecRequest(
        container_id=box.cid, cmd=["true"], stdout=True, stderr=True, tty=True), timeout=30)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, runtime.Exec, api.ExecRequest(
        container_id=box.cid, cmd=["true"]), timeout=30)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, runtime.Exec, api.ExecRequest(
        container_id=box.cid, stdout=True), timeout=30)
    expect_error(grpc.StatusCode.NOT_FOUND, runtime.PortForward, api.PortForwardRequest(
        pod_sandbox_id="nosuchpod", port=[80]), timeout=30)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, runtime.PortForward, api.PortForwardRequest(
        pod_sandbox_id=box.pod_id, port=[70000]), timeout=30)
    # A command that cannot start: the error stream says why.
    missing = command(box, "spdy", ["/no/such/binary"])
    assert missing.status["status"] == "Failure"
    assert "/no/such/binary" in missing.status["message"]


def test_tokens_are_single_use_and_upgrades_are_checked(box: Box) -> None:
    url = box.exec_url(["true"])
    assert run(sc.spdy_command(url)).exit_code == 0
    with pytest.raises(sc.HTTPError) as used:
        run(sc.spdy_command(url))
    assert used.value.status == 404
    base = url.rsplit("/", 2)[0]
    with pytest.raises(sc.HTTPError) as unknown:
        run(sc.upgrade(f"{base}/exec/not-a-token", ["v4.channel.k8s.io"]))
    assert unknown.value.status == 404
    # An exec token is not an attach token.
    with pytest.raises(sc.HTTPError) as wrong_kind:
        run(sc.upgrade(box.exec_url(["true"]).replace("/exec/", "/attach/"),
                       ["v4.channel.k8s.io"]))
    assert wrong_kind.value.status == 404
    with pytest.raises(sc.HTTPError) as refused:
        run(sc.upgrade(box.exec_url(["true"]), ["v9.channel.k8s.io"]))
    assert refused.value.status == 403
    assert refused.value.headers["x-accepted-stream-protocol-versions"]


# -- attach ------------------------------------------------------------------------


def test_attach_over_spdy_sees_output_and_writes_stdin(box: Box) -> None:
    async def scenario() -> sc.Outcome:
        session, serving, _ = await sc.spdy_session(box.attach_url(), ["v4.channel.k8s.io"])
        error = await session.open_stream([("streamType", "error")])
        await error.close()
        stdin = await session.open_stream([("streamType", "stdin")])
        stdout = await session.open_stream([("streamType", "stdout")])
        await session.open_stream([("streamType", "stderr")])
        await stdin.write(b"hello over spdy\n")
        seen = b""
        while b"got hello over spdy\n" not in seen:
            chunk = await stdout.read()
            assert chunk, f"stdout ended early: {seen!r}"
            seen += chunk
        # Closing stdin detaches (the container was not created stdin_once).
        await stdin.close()
        outcome = sc.Outcome(stdout=seen, error=await sc.read_all(error))
        await session.close()
        serving.cancel()
        return outcome

    outcome = run(scenario())
    assert outcome.status == {"metadata": {}, "status": "Success"}
    # The main process is still there for the next client.
    assert box.d.status(box.cid).state == api.CONTAINER_RUNNING


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io"])
def test_attach_over_websocket(box: Box, protocol: str) -> None:
    import websockets

    async def scenario() -> bytes:
        url = box.attach_url().replace("http://", "ws://")
        async with websockets.connect(url, subprotocols=[protocol]) as ws:
            await ws.send(b"\x00" + protocol.encode() + b"\n")
            seen = b""
            while f"got {protocol}\n".encode() not in seen:
                message = await ws.recv()
                assert isinstance(message, bytes)
                if message[0] == 1:
                    seen += message[1:]
            return seen

    assert f"got {protocol}".encode() in run(scenario())


# -- port-forward ---------------------------------------------------------------------


def _body(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


def test_port_forward_fetches_a_page_over_spdy_and_websocket(box: Box) -> None:
    """Plain SPDY, WebSocket channels, and SPDY tunnelled in a WebSocket."""
    request = b"GET /index.html HTTP/1.0\r\n\r\n"

    async def over_spdy() -> tuple[bytes, bytes]:
        session, serving, chosen = await sc.spdy_session(box.forward_url(8080),
                                                         ["portforward.k8s.io"])
        assert chosen == "portforward.k8s.io"
        try:
            return await sc.spdy_forward(session, 8080, 0, request)
        finally:
            await session.close()
            serving.cancel()

    received, problem = run(over_spdy())
    assert (_body(received), problem) == (b"hello-page\n", b"")
    received, problem = run(sc.ws_forward(box.forward_url(8080), 8080, request))
    assert (_body(received), problem) == (b"hello-page\n", b"")

    async def tunnelled() -> list[tuple[bytes, bytes]]:
        session, serving = await sc.tunnelled_session(box.forward_url())
        try:
            return await asyncio.gather(*(sc.spdy_forward(session, 8080, i, request)
                                          for i in range(3)))
        finally:
            await session.close()
            serving.cancel()

    for received, problem in run(tunnelled()):
        assert (_body(received), problem) == (b"hello-page\n", b"")


def test_port_forward_20_concurrent_connections_byte_exact(box: Box) -> None:
    digest = box.sh("sha256sum /www/blob").split()[0]

    async def scenario() -> list[tuple[bytes, bytes]]:
        session, serving, _ = await sc.spdy_session(box.forward_url(8080),
                                                    ["portforward.k8s.io"])
        try:
            return await asyncio.gather(*(
                sc.spdy_forward(session, 8080, i, b"GET /blob HTTP/1.0\r\n\r\n")
                for i in range(20)))
        finally:
            await session.close()
            serving.cancel()

    results = run(scenario())
    assert len(results) == 20
    for received, problem in results:
        assert problem == b""
        assert hashlib.sha256(_body(received)).hexdigest() == digest


def test_port_forward_to_a_closed_port_reports_why(box: Box) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        session, serving, _ = await sc.spdy_session(box.forward_url(), ["portforward.k8s.io"])
        try:
            return await sc.spdy_forward(session, 9, 0, b"")
        finally:
            await session.close()
            serving.cancel()

    received, problem = run(scenario())
    assert received == b""
    assert b"port 9" in problem and b"refused" in problem.lower()
    _, problem = run(sc.ws_forward(box.forward_url(9), 9, b"x"))
    assert b"refused" in problem.lower()


# -- clients that vanish -----------------------------------------------------------


def _settled(box: Box, baseline: dict[str, Any]) -> dict[str, Any]:
    now = box.streaming()
    ok = now["connections"] == 0 and now["tasks"] <= baseline["tasks"] and \
        now["threads"] <= baseline["threads"]
    return now if ok else {}


def test_exec_client_that_disconnects_leaves_nothing(box: Box) -> None:
    baseline = wait_for(lambda: _settled(box, box.streaming()), timeout=30)

    async def vanish(transport: str) -> str:
        marker = {"spdy": "sleep 1001", "ws": "sleep 1002"}[transport]
        url = box.exec_url(["sh", "-c", f"echo started; exec {marker}"])
        if transport == "spdy":
            session, serving, _ = await sc.spdy_session(url, ["v4.channel.k8s.io"])
            error = await session.open_stream([("streamType", "error")])
            stdout = await session.open_stream([("streamType", "stdout")])
            await session.open_stream([("streamType", "stderr")])
            assert await stdout.read() == b"started\n"
            del error
            assert wait_for(lambda: marker in box.sh("ps -o args"), timeout=10)
            session._writer.transport.abort()  # no GOAWAY, no FIN: just gone
            serving.cancel()
        else:
            import websockets

            ws = await websockets.connect(url.replace("http://", "ws://"),
                                          subprotocols=["v5.channel.k8s.io"])
            while (await ws.recv())[1:] != b"started\n":
                pass
            assert wait_for(lambda: marker in box.sh("ps -o args"), timeout=10)
            ws.transport.abort()
        return marker

    for transport in ("spdy", "ws"):
        # Checked once the client's loop is gone: an aborted transport only
        # closes its socket on the loop's next turn.
        marker = run(vanish(transport))
        assert wait_for(lambda m=marker: m not in box.sh("ps -o args"), timeout=20), \
            f"{marker} still runs in the guest"
    assert wait_for(lambda: _settled(box, baseline), timeout=20), box.streaming()


def test_port_forward_client_that_disconnects_leaves_nothing(box: Box) -> None:
    baseline = wait_for(lambda: _settled(box, box.streaming()), timeout=30)
    box.sh("nc -l -p 9000 < /dev/zero > /dev/null 2>&1 &")
    assert wait_for(lambda: ":9000" in box.sh("netstat -ltn"), timeout=20)

    async def vanish() -> None:
        session, serving, _ = await sc.spdy_session(box.forward_url(9000),
                                                    ["portforward.k8s.io"])
        headers = [("streamType", "error"), ("port", "9000"), ("requestID", "0")]
        await session.open_stream(headers)
        data = await session.open_stream([("streamType", "data"), *headers[1:]])
        received = 0
        while received < 1 << 20:
            chunk = await data.read()
            assert chunk
            received += len(chunk)
        session._writer.transport.abort()
        serving.cancel()

    run(vanish())
    # The guest side of the connection is closed, so the endless sender ends.
    assert wait_for(lambda: "nc -l -p 9000" not in box.sh("ps -o args"), timeout=20)
    assert wait_for(lambda: _settled(box, baseline), timeout=20), box.streaming()
    assert box.streaming()["pendingTokens"] == 0


@pytest.fixture
def idle_box(guest_image: Any, request: pytest.FixtureRequest) -> Iterator[Box]:
    """A daemon of its own whose streaming connections time out after 2 s idle."""
    for base in _short_dir():
        for daemon in _daemon(base, guest_image, request,
                              cri_config="stream_idle_timeout = 2.0\n"):
            config = daemon.pod_config()
            pod_id = daemon.run_pod(config)
            yield Box(daemon, pod_id, daemon.run_container(pod_id, config, ["sleep", "3600"]))


def test_idle_connections_are_closed_and_their_exec_ends(idle_box: Box) -> None:
    box = idle_box

    async def scenario() -> bytes:
        url = box.exec_url(["sh", "-c", "cat; echo idle-marker"], stdin=True)
        session, serving, _ = await sc.spdy_session(url, ["v4.channel.k8s.io"])
        await session.open_stream([("streamType", "error")])
        stdin = await session.open_stream([("streamType", "stdin")])
        stdout = await session.open_stream([("streamType", "stdout")])
        await session.open_stream([("streamType", "stderr")])
        echoed = b""
        # A line every 0.5 s for three timeouts' worth: traffic keeps it open.
        for line in range(12):
            await stdin.write(b"%d\n" % line)
            while not echoed.endswith(b"%d\n" % line):
                chunk = await stdout.read()
                assert chunk, f"closed while in use, after {echoed!r}"
                echoed += chunk
            await asyncio.sleep(0.5)
        # Then silence: the server hangs up on its own.
        await asyncio.wait_for(serving, 60)
        assert session.closed.is_set()
        return echoed

    assert run(scenario()) == b"".join(b"%d\n" % n for n in range(12))
    # Logged once the connection's clean-up is over, which may be just after
    # the client saw the close.
    assert wait_for(lambda: "closed a streaming connection idle for 2 s"
                    in box.d.log_file.read_text(), timeout=20)
    assert wait_for(lambda: "idle-marker" not in box.sh("ps -o args"), timeout=20), \
        "the idle exec still runs in the guest"
    assert wait_for(lambda: box.streaming()["connections"] == 0, timeout=20)


# -- the vmrt CLI --------------------------------------------------------------------


def _vmrt(box: Box, *args: str) -> list[str]:
    return [sys.executable, "-m", "vmrt.cli.main", args[0], "-r", f"unix://{box.d.socket}",
            *args[1:]]


def test_cli_exec_pipes_stdin_and_returns_the_exit_code(box: Box) -> None:
    done = subprocess.run(_vmrt(box, "exec", "-i", box.pod_id[:12], "--", "sh", "-c",
                                "tr a-z A-Z; echo to-err >&2; exit 3"),
                          input=b"shout\n", capture_output=True, timeout=120, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"SHOUT\n", b"to-err\n")
    missing = subprocess.run(_vmrt(box, "exec", "nosuchthing", "--", "true"),
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 125 and "nosuchthing" in missing.stderr


def test_cli_exec_tty_is_raw_and_passes_window_changes(box: Box) -> None:
    with PtyChild(_vmrt(box, "exec", "-it", box.cid, "--", "sh")) as term:
        fcntl.ioctl(term.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        term.until(b"# ")
        term.write(b"stty size\n")
        term.until(b"33 101")
        fcntl.ioctl(term.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 120, 0, 0))
        os.kill(term.pid, signal.SIGWINCH)
        term.write(b"for i in $(seq 50); do [ \"$(stty size)\" = '44 120' ] && break; "
                   b"sleep 0.1; done; stty size; exit 5\n")
        term.until(b"44 120\r\n")
        assert term.exit_code() == 5, term.seen


def test_cli_attach_and_port_forward(box: Box) -> None:
    attach = subprocess.Popen(_vmrt(box, "attach", "-i", box.cid), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert attach.stdin is not None and attach.stdout is not None
    try:
        attach.stdin.write(b"from the cli\n")
        attach.stdin.flush()
        assert attach.stdout.readline() == b"got from the cli\n"
    finally:
        attach.kill()
        attach.wait()
    forward = subprocess.Popen(_vmrt(box, "port-forward", box.pod_id, ":8080"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert forward.stdout is not None
    try:
        line = forward.stdout.readline()
        assert line.startswith("Forwarding from 127.0.0.1:") and line.endswith("-> 8080\n")
        local = int(line.split(":")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=30) as r:
            assert r.read() == b"hello-page\n"
    finally:
        forward.send_signal(signal.SIGINT)
        assert forward.wait(30) == 0, forward.stderr.read() if forward.stderr else ""
