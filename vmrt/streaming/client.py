"""The client side of the SPDY upgrade, for ``vmrt port-forward`` (and tests)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from vmrt.errors import VmrtError
from vmrt.streaming import spdy

MAX_HEAD = 64 * 1024


class UpgradeError(VmrtError):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body.decode(errors='replace').strip()}")
        self.status = status
        self.headers = headers
        self.body = body


async def upgrade(url: str, protocols: list[str]) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
    """POST ``url`` asking for SPDY/3.1 as client-go does; returns the 101's headers."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise VmrtError(f"cannot stream from {url!r}: expected http://HOST:PORT/...")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port,
                                                   limit=MAX_HEAD)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade",
             "Upgrade: SPDY/3.1", "Content-Length: 0"]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.close()
        raise VmrtError(f"{url}: no valid HTTP answer to the upgrade ({exc})") from None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if status != 101:
        length = min(int(headers.get("content-length", "0") or 0), MAX_HEAD)
        body = await reader.read(length)
        writer.close()
        raise UpgradeError(status, headers, body)
    return reader, writer, headers


async def connect(url: str, protocols: list[str]) -> tuple[spdy.Session, asyncio.Task[None],
                                                            str]:
    """A client SPDY session on ``url``, already reading: (session, reader task, protocol)."""
    reader, writer, headers = await upgrade(url, protocols)
    session = spdy.Session(reader, writer, client=True)
    return session, asyncio.create_task(session.serve()), headers.get(
        "x-stream-protocol-version", "")


async def read_all(stream: spdy.Stream) -> bytes:
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
    return bytes(data)
