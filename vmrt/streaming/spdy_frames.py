"""SPDY/3.1 frames on the wire: their constants, building and parsing them.

Only the framing: the 8-byte frame header, control and data frames, and
reading one whole frame from a stream of bytes. What the frames mean to a
session is ``vmrt.streaming.spdy``'s business; header blocks are
``vmrt.streaming.spdy_headers``'.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Protocol

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9

MAX_FRAME = (1 << 24) - 1


class ProtocolError(Exception):
    """The peer broke the SPDY framing rules; the session cannot go on."""


@dataclass(frozen=True)
class Frame:
    """One frame. Control frames have ``kind`` > 0; data frames have kind 0."""

    kind: int
    flags: int
    payload: bytes
    stream_id: int = 0  # data frames only; control frames carry it in the payload

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError("control frame too large")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError("data frame too large")
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


def parse_header(head: bytes) -> tuple[bool, int, int, int]:
    """The first 8 bytes of a frame: (is control, type or stream id, flags, length)."""
    first, second = struct.unpack(">II", head)
    flags, length = second >> 24, second & 0xFFFFFF
    if first & 0x80000000:
        version = (first >> 16) & 0x7FFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        return True, first & 0xFFFF, flags, length
    return False, first & 0x7FFFFFFF, flags, length


class ByteReader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


async def read_frame(reader: ByteReader) -> Frame | None:
    """The next frame, or None at a clean end of the connection."""
    try:
        head = await reader.readexactly(8)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    control, kind_or_id, flags, length = parse_header(head)
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    if control:
        return Frame(kind_or_id, flags, payload)
    return Frame(0, flags, payload, kind_or_id)
