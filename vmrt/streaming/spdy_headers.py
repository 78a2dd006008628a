"""SPDY/3 header blocks: name/value pairs, zlib-compressed with the SPDY/3 dictionary.

Each direction of a session has one compression context for its whole
life, so a session keeps one ``HeaderEncoder`` and one ``HeaderDecoder``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from vmrt.streaming.spdy_frames import ProtocolError

MAX_HEADER_BLOCK = 256 * 1024


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (spec section 2.6.10.1)."""
    words = ["options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
        "accept-encoding", "accept-language", "accept-ranges", "age", "allow",
        "authorization", "cache-control", "connection", "content-base", "content-encoding",
        "content-language", "content-length", "content-location", "content-md5",
        "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
        "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
        "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate",
        "proxy-authorization", "range", "referer", "retry-after", "server", "te", "trailer",
        "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
        "www-authenticate", "method", "get", "status"]
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive",
              "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0.")
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _dictionary()


class HeaderEncoder:
    def __init__(self) -> None:
        self._zlib = zlib.compressobj(zdict=DICTIONARY)

    def encode(self, headers: Iterable[tuple[str, str]]) -> bytes:
        pairs = sorted((name.lower(), value) for name, value in headers)
        block = [struct.pack(">I", len(pairs))]
        for name, value in pairs:
            raw_name, raw_value = name.encode(), value.encode()
            block += [struct.pack(">I", len(raw_name)), raw_name,
                      struct.pack(">I", len(raw_value)), raw_value]
        return self._zlib.compress(b"".join(block)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecoder:
    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)

    def decode(self, data: bytes) -> dict[str, str]:
        """Name → value; several values of one name stay NUL-separated."""
        try:
            block = self._zlib.decompress(data, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"bad header block: {exc}") from None
        if self._zlib.unconsumed_tail:
            raise ProtocolError("header block too large")
        headers: dict[str, str] = {}
        view, pos = memoryview(block), 0

        def take(size: int) -> bytes:
            nonlocal pos
            if pos + size > len(view):
                raise ProtocolError("truncated header block")
            chunk = bytes(view[pos:pos + size])
            pos += size
            return chunk

        (count,) = struct.unpack(">I", take(4))
        for _ in range(count):
            (size,) = struct.unpack(">I", take(4))
            name = take(size).decode("latin-1")
            (size,) = struct.unpack(">I", take(4))
            value = take(size).decode("latin-1")
            if name != name.lower() or not name:
                raise ProtocolError(f"invalid header name {name!r}")
            headers[name] = value
        if pos != len(view):
            raise ProtocolError("trailing bytes after the header block")
        return headers

