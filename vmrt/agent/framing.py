"""Frames on the agent's virtio-serial line.

A serial port is one byte stream for the VM's whole life: it has no
connection boundaries, so the bytes of a host connection that ended (a gRPC
connection dropped by a keepalive timeout, a daemon that restarted) can
still be in flight, either way, when the next one begins, and an HTTP/2
session that starts with them fails ("expected SETTINGS, got PING").
Both ends therefore speak frames:

    header: 3-byte magic, 1-byte kind, 4-byte big-endian payload length

* ``HELLO`` (host to guest, a 16-byte random nonce): a new session. The
  guest drops its current connection to its gRPC server, opens a fresh one
  and answers ``WELCOME`` with the same nonce.
* ``WELCOME`` (guest to host): the host forwards nothing before the
  ``WELCOME`` that carries its latest nonce, and drops every byte the guest
  sent before it, whatever they are: the nonce cannot be guessed, so stale
  bytes never pass for a new session's.
* ``DATA`` (both ways): bytes of the current session, 1 to ``MAX_PAYLOAD``
  per frame (an empty one would cost the reader a frame's work for nothing).
* ``END`` (both ways): this side's end of the session closed.

The guest finds the stream's frame boundaries by scanning for a ``HELLO``
header whenever it has lost them (at start, after the host hung up, after a
frame it could not parse). The host parses what the guest sends strictly:
a malformed frame ends the session, and the next one starts with a new
``HELLO``. Neither side ever holds more than one frame's worth of bytes.
"""

from __future__ import annotations

import struct

MAGIC = b"\xf6vm"
HEADER = struct.Struct(">3sBI")
HELLO, WELCOME, DATA, END = 1, 2, 3, 4
KINDS = {HELLO: "HELLO", WELCOME: "WELCOME", DATA: "DATA", END: "END"}
NONCE_SIZE = 16
MAX_PAYLOAD = 256 * 1024
HELLO_HEADER = HEADER.pack(MAGIC, HELLO, NONCE_SIZE)

Frame = tuple[int, bytes]


class FrameError(ValueError):
    pass


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, kind, len(payload)) + payload


def data_frames(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as DATA frames of at most MAX_PAYLOAD bytes each."""
    view = memoryview(data)
    return b"".join(frame(DATA, bytes(view[i:i + MAX_PAYLOAD]))
                    for i in range(0, len(view), MAX_PAYLOAD))


class Parser:
    """Frames from an aligned stream; FrameError on anything else."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            magic, kind, length = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise FrameError(f"bad magic {bytes(magic)!r}")
            if kind not in KINDS:
                raise FrameError(f"unknown frame kind {kind}")
            if (length > MAX_PAYLOAD or (kind in (HELLO, WELCOME) and length != NONCE_SIZE)
                    or (kind == DATA and length == 0) or (kind == END and length != 0)):
                raise FrameError(f"{KINDS[kind]} frame of {length} bytes")
            if len(self._buf) < HEADER.size + length:
                break
            frames.append((kind, bytes(self._buf[HEADER.size:HEADER.size + length])))
            del self._buf[:HEADER.size + length]
        return frames

    def clear(self) -> None:
        self._buf.clear()

    def skip(self) -> bytes:
        """After a FrameError: what follows the first unparsable byte."""
        rest = bytes(self._buf[1:])
        self._buf.clear()
        return rest


class _Scanner:
    """Drops bytes until ``marker``; then the stream is aligned at it."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.discarded = 0
        self._held = b""

    def feed(self, data: bytes | bytearray) -> bytes | None:
        """The bytes from the marker on once it is found, else None."""
        data = self._held + bytes(data)
        start = data.find(self.marker)
        if start >= 0:
            self._held = b""
            self.discarded += start
            return data[start:]
        # Keep a tail that may be the beginning of a split marker.
        self._held = data[-(len(self.marker) - 1):]
        self.discarded += len(data) - len(self._held)
        return None


class GuestSync:
    """The guest's reader of the host's frames, which finds its place again.

    ``dropped`` counts the bytes thrown away while out of step.
    """

    def __init__(self) -> None:
        self.dropped = 0
        self._scanner: _Scanner | None = _Scanner(HELLO_HEADER)
        self._parser = Parser()

    @property
    def synced(self) -> bool:
        return self._scanner is None

    def reset(self) -> None:
        """Out of step: wait for the next HELLO."""
        self._scanner = _Scanner(HELLO_HEADER)
        self._parser.clear()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        frames: list[Frame] = []
        while data:
            if self._scanner is not None:
                found = self._scanner.feed(data)
                if found is None:
                    return frames
                self.dropped += self._scanner.discarded
                self._scanner = None
                data = found
            try:
                frames += self._parser.feed(data)
                return frames
            except FrameError:
                # Look again for a HELLO past what could not be parsed.
                data = self._parser.skip()
                self.dropped += 1
                self.reset()
        return frames


class HostSync:
    """The host's reader of the guest's frames: in step only from the WELCOME
    that answers the nonce it sent last, until a frame breaks the rules.

    ``dropped`` counts the bytes thrown away while out of step.
    """

    def __init__(self) -> None:
        self.dropped = 0
        self.synced = False
        self._scanner: _Scanner | None = None  # set: looking for a WELCOME
        self._parser = Parser()

    def expect(self, nonce: bytes) -> None:
        """A HELLO with ``nonce`` went out: drop all until its WELCOME."""
        self._scanner = _Scanner(frame(WELCOME, nonce))
        self.synced = False
        self._parser.clear()

    def lose(self) -> None:
        """Out of step: drop all until the next expect() is answered."""
        self._scanner = None
        self.synced = False
        self._parser.clear()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """Frames from the WELCOME on (the WELCOME itself first).
        FrameError when the guest breaks the framing."""
        if not self.synced:
            if self._scanner is None:
                self.dropped += len(data)
                return []
            found = self._scanner.feed(data)
            if found is None:
                return []
            self.dropped += self._scanner.discarded
            self._scanner = None
            self.synced = True
            data = found
        try:
            return self._parser.feed(data)
        except FrameError:
            self.lose()
            raise
