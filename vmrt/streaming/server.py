"""The streaming server: the URLs CRI Exec, Attach and PortForward hand out.

One HTTP/1.1 request per connection: ``GET|POST /{exec,attach,portforward}/TOKEN``
upgraded to WebSocket or SPDY/3.1. The token is taken (single use) before
anything else, and a request that is not an upgrade gets a plain error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

import h11

from vmrt.runtime.streams import StreamService
from vmrt.streaming import over_spdy, over_websocket, spdy, spdy_frames, tunnel, websocket
from vmrt.streaming.idle import IdleTimer
from vmrt.streaming.tokens import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    TokenCache,
)

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0
KINDS = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}


class StreamServer:
    def __init__(self, service: StreamService, address: str, port: int,
                 idle_timeout: float = 0.0) -> None:
        self.service = service
        self.address = address
        self.port = port
        self.idle_timeout = idle_timeout  # 0: connections may idle for ever
        self.tokens = TokenCache()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.address, self.port,
                                                  limit=MAX_HEAD, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server on %s", self.base_url)

    @property
    def base_url(self) -> str:
        host = self.address or "127.0.0.1"
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def url(self, request: StreamRequest) -> str:
        kind = next(k for k, cls in KINDS.items() if isinstance(request, cls))
        return f"{self.base_url}/{kind}/{self.tokens.put(request)}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def active(self) -> int:
        return len(self._connections)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        idle = IdleTimer(self.idle_timeout, task.cancel) if self.idle_timeout > 0 else None
        try:
            await self._serve(reader, writer, idle.touch if idle else _nothing)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("streaming connection ended: %s", exc)
        except Exception:
            log.exception("streaming connection failed")
        except asyncio.CancelledError:
            if idle is None or not idle.expired:
                raise
            task.uncancel()
            log.info("closed a streaming connection idle for %g s", self.idle_timeout)
        finally:
            if idle is not None:
                idle.cancel()
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     touch: Callable[[], None]) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            await _respond(writer, 431, "request header too large\n")
            return
        except TimeoutError:
            return
        http = h11.Connection(h11.SERVER)
        http.receive_data(head)
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            await _respond(writer, 400, f"bad request: {exc}\n")
            return
        if not isinstance(event, h11.Request):
            await _respond(writer, 400, "bad request\n")
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        path = event.target.decode("latin-1").split("?", 1)[0]
        parts = path.strip("/").split("/")
        if event.method not in (b"GET", b"POST") or len(parts) != 2 or parts[0] not in KINDS:
            await _respond(writer, 404, "404 page not found\n")
            return
        request = self.tokens.take(parts[1])
        if request is None or not isinstance(request, KINDS[parts[0]]):
            await _respond(writer, 404, "404 page not found\n")
            return
        upgrade = headers.get("upgrade", "").lower()
        if upgrade == "websocket":
            await self._websocket(head, reader, writer, request, touch)
        elif "spdy/3.1" in upgrade and "upgrade" in headers.get("connection", "").lower():
            await self._spdy(event, reader, writer, request, touch)
        else:
            await _respond(writer, 400, "this endpoint needs a WebSocket or SPDY/3.1 upgrade\n")

    async def _websocket(self, head: bytes, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, request: StreamRequest,
                         touch: Callable[[], None]) -> None:
        protocols: tuple[str, ...]
        if isinstance(request, PortForwardRequest):
            protocols = over_websocket.PORTFORWARD_PROTOCOLS
        else:
            protocols = over_websocket.COMMAND_PROTOCOLS
        try:
            sock = await websocket.accept(head, reader, writer, protocols)
        except ValueError as exc:
            await _respond(writer, 400, f"bad WebSocket handshake: {exc}\n")
            return
        if sock is None:
            return
        sock.on_activity = touch
        if isinstance(request, PortForwardRequest):
            if sock.subprotocol.startswith(tunnel.PREFIX):
                tunnelled = tunnel.TunnelReader(sock)
                await self._serve_spdy(tunnelled, tunnel.TunnelWriter(sock, tunnelled),
                                       sock.subprotocol.removeprefix(tunnel.PREFIX), request,
                                       touch)
            else:
                await over_websocket.serve_portforward(sock, request, self.service)
        else:
            await over_websocket.serve_command(sock, request, self.service)

    async def _spdy(self, event: h11.Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, request: StreamRequest,
                    touch: Callable[[], None]) -> None:
        offered = [v.strip() for name, value in event.headers
                   if name.lower() == b"x-stream-protocol-version"
                   for v in value.decode("latin-1").split(",") if v.strip()]
        supported = over_spdy.PORTFORWARD_PROTOCOLS if isinstance(request, PortForwardRequest) \
            else over_spdy.COMMAND_PROTOCOLS
        if not offered:
            await _respond(writer, 400, "unable to upgrade: X-Stream-Protocol-Version is "
                                        "missing\n")
            return
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            await _respond(writer, 403, f"unable to upgrade: none of {offered} is supported\n",
                           [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
            return
        writer.write(_head(101, "Switching Protocols", [
            ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", chosen)]))
        await writer.drain()
        await self._serve_spdy(reader, writer, chosen, request, touch)

    async def _serve_spdy(self, reader: spdy_frames.ByteReader, writer: spdy_frames.ByteWriter,
                          chosen: str, request: StreamRequest,
                          touch: Callable[[], None]) -> None:
        incoming: asyncio.Queue[spdy.Stream] = asyncio.Queue()
        session = spdy.Session(reader, writer, client=False, on_stream=incoming.put_nowait,
                               on_activity=touch)
        serving = asyncio.create_task(session.serve())
        try:
            if isinstance(request, PortForwardRequest):
                await over_spdy.serve_portforward(session, incoming, serving, request,
                                                  self.service)
            else:
                await over_spdy.serve_command(session, incoming, serving, chosen, request,
                                              self.service)
        finally:
            await session.close()
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving


def _nothing() -> None:
    pass


def _head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _respond(writer: asyncio.StreamWriter, status: int, body: str,
                   headers: list[tuple[str, str]] | None = None) -> None:
    data = body.encode()
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              431: "Request Header Fields Too Large"}.get(status, "Error")
    writer.write(_head(status, reason, [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Connection", "close"), *(headers or [])]) + data)
    await writer.drain()
