"""``vmrt exec``, ``vmrt attach`` and ``vmrt port-forward``: streaming through vmrtd.

Exec and attach speak the v5 channel protocol over WebSocket (its close
signal carries the end of stdin); port-forward keeps one SPDY session open,
as kubectl does, and opens a pair of streams per local connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Iterator
from typing import Any

import websockets
from cri_api.v1 import api_pb2 as api
from websockets.typing import Subprotocol

from vmrt.cli.cri_client import Client, CRIError
from vmrt.streaming import client as spdy_client
from vmrt.streaming import spdy, spdy_frames

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOL = Subprotocol("v5.channel.k8s.io")


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("exec", parents=[common],
                       help="run a command in a container (or a pod's first container)")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin on")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument("--exec-timeout", type=int, default=0,
                   help="kill the command after this many seconds (0: no limit)")
    p.add_argument("target", metavar="POD|CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=_exec)
    p = sub.add_parser("attach", parents=[common],
                       help="attach to the main process of a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin on")
    p.add_argument("-t", "--tty", action="store_true",
                   help="the container has a terminal (raw mode, resizes passed on)")
    p.add_argument("target", metavar="POD|CONTAINER")
    p.set_defaults(func=_attach)
    p = sub.add_parser("port-forward", parents=[common],
                       help="forward local ports to ports in a pod")
    p.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    p.add_argument("pod", metavar="POD")
    p.add_argument("ports", nargs="+", metavar="[LOCAL]:REMOTE",
                   help="REMOTE alone listens on the same port here; :REMOTE on any free one")
    p.set_defaults(func=_port_forward)


# -- finding the target ------------------------------------------------------------


def _container(client: Client, target: str) -> str:
    """A container id from a container or pod id/prefix (the pod's first running container)."""
    status = client.find_container(target)
    if status is not None:
        return str(status.id)
    pod = client.find_pod(target)
    if pod is None:
        raise CRIError(f"no container or pod {target!r}")
    listed = client.rt("ListContainers", api.ListContainersRequest(filter=api.ContainerFilter(
        pod_sandbox_id=pod.id,
        state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))))
    if not listed.containers:
        raise CRIError(f"pod {pod.id[:13]} has no running container")
    first = min(listed.containers, key=lambda c: c.created_at)
    return str(first.id)


# -- exec and attach ----------------------------------------------------------------


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not os.isatty(0):
        yield
        return
    saved = termios.tcgetattr(0)
    ttymod.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """A thread: stdin may be a file, which event loops cannot watch."""
    while True:
        try:
            data = os.read(0, 32 * 1024)
        except OSError:
            data = b""
        loop.call_soon_threadsafe(queue.put_nowait, data)
        if not data:
            return


def _terminal_size() -> tuple[int, int] | None:
    for fd in (1, 0, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
    return None


async def _stream(url: str, stdin: bool, tty: bool) -> dict[str, Any]:
    """Run a v5 channel session; the final status from the error channel."""
    loop = asyncio.get_running_loop()
    status: dict[str, Any] = {}
    async with websockets.connect(url.replace("http://", "ws://", 1), subprotocols=[PROTOCOL],
                                  max_size=None) as ws:
        tasks: list[asyncio.Task[None]] = []

        async def resize() -> None:
            size = _terminal_size()
            if size is not None:
                await ws.send(bytes([RESIZE]) + json.dumps(
                    {"Width": size[0], "Height": size[1]}).encode())

        async def feed() -> None:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            threading.Thread(target=_stdin_reader, args=(loop, queue), daemon=True).start()
            while data := await queue.get():
                await ws.send(bytes([STDIN]) + data)
            await ws.send(bytes([CLOSE, STDIN]))

        if tty:
            await resize()
            loop.add_signal_handler(signal.SIGWINCH, lambda: tasks.append(
                asyncio.ensure_future(resize())))
        if stdin:
            tasks.append(asyncio.ensure_future(feed()))
        try:
            async for message in ws:
                if not isinstance(message, bytes) or not message:
                    continue
                channel, data = message[0], message[1:]
                if channel == STDOUT:
                    sys.stdout.buffer.write(data)
                    sys.stdout.flush()
                elif channel == STDERR:
                    sys.stderr.buffer.write(data)
                    sys.stderr.flush()
                elif channel == ERROR and data:
                    status = json.loads(data)
        finally:
            if tty:
                loop.remove_signal_handler(signal.SIGWINCH)
            for task in tasks:
                task.cancel()
    return status


def _exit_code(status: dict[str, Any]) -> int:
    if status.get("status") == "Success":
        return 0
    for cause in status.get("details", {}).get("causes", []):
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1"))
    raise CRIError(status.get("message") or "the session ended without a status")


def run_session(url: str, stdin: bool, tty: bool, timeout: float | None) -> int:
    async def session() -> dict[str, Any]:
        return await asyncio.wait_for(_stream(url, stdin, tty), timeout)

    with _raw_terminal(tty and stdin):
        try:
            status = asyncio.run(session())
        except TimeoutError:
            raise CRIError(f"the command did not finish within {timeout:.0f} s; "
                           "it was killed") from None
        except (OSError, websockets.WebSocketException) as exc:
            raise CRIError(f"streaming from vmrtd failed: {exc}") from None
    return _exit_code(status)


def _exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CRIError("no command given: vmrt exec [-it] POD|CONTAINER -- CMD [ARGS...]")
    client = Client.for_args(args)
    reply = client.rt("Exec", api.ExecRequest(
        container_id=_container(client, args.target), cmd=command, tty=args.tty,
        stdin=args.interactive, stdout=True, stderr=not args.tty))
    return run_session(reply.url, args.interactive, args.tty, args.exec_timeout or None)


def _attach(args: argparse.Namespace) -> int:
    client = Client.for_args(args)
    reply = client.rt("Attach", api.AttachRequest(
        container_id=_container(client, args.target), tty=args.tty, stdin=args.interactive,
        stdout=True, stderr=not args.tty))
    return run_session(reply.url, args.interactive, args.tty, None)


# -- port-forward -------------------------------------------------------------------


def _mappings(specs: list[str]) -> list[tuple[int, int]]:
    pairs = []
    for spec in specs:
        # kubectl's forms: "8080" (same port here), "9000:8080", ":8080" (any free port)
        local, colon, remote = spec.rpartition(":")
        try:
            pair = (int(local) if local else 0 if colon else int(remote), int(remote))
        except ValueError:
            raise CRIError(f"bad port mapping {spec!r}: expected [LOCAL:]REMOTE") from None
        if not all(0 <= p < 65536 for p in pair) or pair[1] == 0:
            raise CRIError(f"bad port mapping {spec!r}: ports are 1-65535 (LOCAL 0: any)")
        pairs.append(pair)
    return pairs


class _Forwarder:
    def __init__(self, session: spdy.Session) -> None:
        self.session = session
        self.next_request = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def handler(self, remote: int) -> Any:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await self._forward(remote, reader, writer)
            except (ConnectionError, spdy_frames.ProtocolError) as exc:
                print(f"vmrt: connection to port {remote} ended: {exc}", file=sys.stderr)
            finally:
                self.tasks.discard(task)
                writer.close()

        return accepted

    async def _forward(self, remote: int, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        request_id = self.next_request
        self.next_request += 1
        print(f"Handling connection for {remote}", flush=True)
        headers = [("streamType", "error"), ("port", str(remote)),
                   ("requestID", str(request_id))]
        error = await self.session.open_stream(headers)
        await error.close()
        data = await self.session.open_stream([("streamType", "data"), *headers[1:]])

        async def upstream() -> None:
            while chunk := await reader.read(64 * 1024):
                await data.write(chunk)
            await data.close()

        sending = asyncio.create_task(upstream())
        problem = asyncio.create_task(spdy_client.read_all(error))
        finished = False
        try:
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            message = await problem
            if message:
                print(f"vmrt: port {remote}: {message.decode(errors='replace')}",
                      file=sys.stderr)
            finished = True
        finally:
            sending.cancel()
            problem.cancel()
            if finished:
                await data.close()  # the server need not wait for our side
            else:
                # The local side went away: tell the pod's side to stop sending.
                await data.abort()
                await error.abort()


async def _serve_forwards(url: str, address: str, pairs: list[tuple[int, int]]) -> None:
    session, serving, _ = await spdy_client.connect(url, ["portforward.k8s.io"])
    forwarder = _Forwarder(session)
    servers = []
    try:
        for local, remote in pairs:
            server = await asyncio.start_server(forwarder.handler(remote), address, local)
            bound = server.sockets[0].getsockname()[1]
            print(f"Forwarding from {address}:{bound} -> {remote}", flush=True)
            servers.append(server)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signo in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signo, stop.set)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if serving.done():
            raise CRIError("vmrtd closed the port-forward session (is the pod still ready?)")
    finally:
        for server in servers:
            server.close()
        for task in list(forwarder.tasks):
            task.cancel()
        await session.close()
        serving.cancel()


def _port_forward(args: argparse.Namespace) -> int:
    pairs = _mappings(args.ports)
    client = Client.for_args(args)
    pod = client.find_pod(args.pod)
    if pod is None:
        raise CRIError(f"no pod {args.pod!r}")
    reply = client.rt("PortForward", api.PortForwardRequest(
        pod_sandbox_id=pod.id, port=[remote for _, remote in pairs]))
    try:
        asyncio.run(_serve_forwards(reply.url, args.address, pairs))
    except OSError as exc:
        raise CRIError(f"port-forward: {exc}") from None
    return 0
