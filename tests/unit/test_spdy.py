"""SPDY/3.1 framing checked against frames laid out by hand from the spec.

The expected bytes below are written from the frame diagrams of the
SPDY/3.1 draft (section 2.2 and 2.6), not produced by the code under test.
Compressed header blocks differ between zlib implementations, so for those
the test checks what the spec fixes: the zlib header names the SPDY/3
dictionary by its Adler-32 (FDICT set, DICTID 0xe3c6a7c2), and an
independent zlib decompressor given the dictionary yields the exact
uncompressed block of section 2.6.10.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib

import pytest

from tests.helpers.streamclient import session_pair
from vmrt.streaming import spdy, spdy_frames, spdy_headers


def test_dictionary_is_the_specs() -> None:
    # Size and checksum as the SPDY/3 draft fixes them.
    assert len(spdy_headers.DICTIONARY) == 1423
    assert zlib.adler32(spdy_headers.DICTIONARY) == 0xE3C6A7C2
    assert spdy_headers.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy_headers.DICTIONARY.endswith(b"utf-,*,enq=0.")


@pytest.mark.parametrize(("built", "wire"), [
    # PING id 1: control bit + version 3, type 6, flags 0, length 4.
    (spdy_frames.control_frame(spdy_frames.PING, 0, struct.pack(">I", 1)),
     "80 03 00 06 00 00 00 04 00 00 00 01"),
    # RST_STREAM stream 3, status CANCEL (5).
    (spdy_frames.control_frame(spdy_frames.RST_STREAM, 0, struct.pack(">II", 3, 5)),
     "80 03 00 03 00 00 00 08 00 00 00 03 00 00 00 05"),
    # GOAWAY last-good-stream 7, status OK.
    (spdy_frames.control_frame(spdy_frames.GOAWAY, 0, struct.pack(">II", 7, 0)),
     "80 03 00 07 00 00 00 08 00 00 00 07 00 00 00 00"),
    # DATA on stream 1 with FIN, payload "hi".
    (spdy_frames.data_frame(1, spdy_frames.FLAG_FIN, b"hi"), "00 00 00 01 01 00 00 02 68 69"),
    # An empty DATA frame with FIN: a half-close.
    (spdy_frames.data_frame(5, spdy_frames.FLAG_FIN, b""), "00 00 00 05 01 00 00 00"),
])
def test_frames_match_the_spec_layout(built: bytes, wire: str) -> None:
    assert built == bytes.fromhex(wire)


def test_parse_header_tells_control_from_data() -> None:
    assert spdy_frames.parse_header(bytes.fromhex("80 03 00 06 00 00 00 04")) == (True, 6, 0, 4)
    assert spdy_frames.parse_header(bytes.fromhex("00 00 00 03 01 00 01 00")) == (False, 3, 1, 256)
    with pytest.raises(spdy_frames.ProtocolError, match="version 2"):
        spdy_frames.parse_header(bytes.fromhex("80 02 00 06 00 00 00 04"))


def test_header_block_encoding() -> None:
    encoder = spdy_headers.HeaderEncoder()
    first = encoder.encode([("streamType", "error")])
    # zlib stream header: deflate (CMF 0x78), FDICT set, DICTID of the SPDY/3 dictionary.
    assert first[0] == 0x78
    assert first[1] & 0x20
    assert (first[0] * 256 + first[1]) % 31 == 0
    assert first[2:6] == bytes.fromhex("e3 c6 a7 c2")
    # Names are lower-cased; each block ends on a sync flush (00 00 ff ff).
    assert first.endswith(b"\x00\x00\xff\xff")
    second = encoder.encode([("streamtype", "stdout"), ("port", "80")])
    independent = zlib.decompressobj(zdict=spdy_headers.DICTIONARY)
    assert independent.decompress(first) == (
        b"\x00\x00\x00\x01" b"\x00\x00\x00\x0astreamtype" b"\x00\x00\x00\x05error")
    # One compression context for the session: the second block continues the stream.
    assert independent.decompress(second) == (
        b"\x00\x00\x00\x02" b"\x00\x00\x00\x04port" b"\x00\x00\x00\x0280"
        b"\x00\x00\x00\x0astreamtype" b"\x00\x00\x00\x06stdout")


def test_header_block_decoding_of_a_foreign_stream() -> None:
    # Compressed here with plain zlib at another level, as a peer might.
    peer = zlib.compressobj(level=1, zdict=spdy_headers.DICTIONARY)
    block = (b"\x00\x00\x00\x02" b"\x00\x00\x00\x04port" b"\x00\x00\x00\x048080"
             b"\x00\x00\x00\x09requestid" b"\x00\x00\x00\x010")
    decoder = spdy_headers.HeaderDecoder()
    assert decoder.decode(peer.compress(block) + peer.flush(zlib.Z_SYNC_FLUSH)) == {
        "port": "8080", "requestid": "0"}
    bad = zlib.compressobj(zdict=spdy_headers.DICTIONARY)
    upper = b"\x00\x00\x00\x01\x00\x00\x00\x04Port\x00\x00\x00\x011"
    with pytest.raises(spdy_frames.ProtocolError, match="header name"):
        spdy_headers.HeaderDecoder().decode(bad.compress(upper) + bad.flush(zlib.Z_SYNC_FLUSH))
    with pytest.raises(spdy_frames.ProtocolError, match="bad header block"):
        spdy_headers.HeaderDecoder().decode(b"\x78\xbb\x00\x00\x00\x00garbage")


async def _read_all(stream: spdy.Stream) -> bytes:
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
    return bytes(data)


def test_session_streams_both_ways() -> None:
    async def scenario() -> None:
        server, client, accepted, tasks = await session_pair()
        ours = await client.open_stream([("streamType", "data"), ("port", "80")])
        assert ours.id == 1 and ours.replied.is_set()
        await asyncio.sleep(0.05)
        (theirs,) = accepted
        assert theirs.headers == {"streamtype": "data", "port": "80"}
        payload = bytes(range(256)) * 1000  # several DATA frames
        await ours.write(payload)
        await ours.close()
        assert await _read_all(theirs) == payload
        await theirs.write(b"reply")
        await theirs.close()
        assert await _read_all(ours) == b"reply"
        # Both halves closed: neither side keeps the stream.
        assert 1 not in server.streams and 1 not in client.streams
        second = await client.open_stream([("streamType", "error")])
        assert second.id == 3
        await asyncio.sleep(0.05)
        await accepted[1].abort()
        assert await second.read() == b""
        assert second.reset
        await client.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert server.closed.is_set()

    asyncio.run(scenario())


def test_session_answers_pings_and_refuses_after_goaway() -> None:
    async def scenario() -> None:
        left, right = socket.socketpair()
        server_io = await asyncio.open_connection(sock=left)
        server = spdy.Session(*server_io, client=False, on_stream=lambda s: None)
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(sock=right)
        writer.write(spdy_frames.control_frame(spdy_frames.PING, 0, struct.pack(">I", 7)))
        frame = await spdy_frames.read_frame(reader)
        assert frame == spdy_frames.Frame(spdy_frames.PING, 0, struct.pack(">I", 7))
        await server.goaway()
        frame = await spdy_frames.read_frame(reader)
        assert frame is not None and frame.kind == spdy_frames.GOAWAY
        encoder = spdy_headers.HeaderEncoder()
        block = encoder.encode([("streamtype", "data")])
        writer.write(spdy_frames.control_frame(spdy_frames.SYN_STREAM, 0,
                                        struct.pack(">IIBB", 1, 0, 0, 0) + block))
        frame = await spdy_frames.read_frame(reader)
        assert frame == spdy_frames.Frame(spdy_frames.RST_STREAM, 0,
                                   struct.pack(">II", 1, spdy_frames.REFUSED_STREAM))
        # A stream id going backwards is a protocol error that ends the session.
        writer.write(spdy_frames.control_frame(spdy_frames.SYN_STREAM, 0,
                                        struct.pack(">IIBB", 1, 0, 0, 0) + block))
        await asyncio.wait_for(serving, 5)
        assert server.closed.is_set()
        writer.close()

    asyncio.run(scenario())


def test_session_stops_reading_while_a_stream_is_full() -> None:
    async def scenario() -> None:
        _, client, accepted, tasks = await session_pair()
        ours = await client.open_stream([("streamType", "stdin")])
        await asyncio.sleep(0.05)
        (theirs,) = accepted
        chunk = b"x" * spdy.DATA_CHUNK
        total = spdy.BUFFER_LIMIT + 8 * spdy.DATA_CHUNK
        writer = asyncio.create_task(ours.write(chunk * (total // len(chunk))))
        await asyncio.sleep(0.3)
        # The reader paused just past the limit instead of taking everything.
        assert spdy.BUFFER_LIMIT < theirs.buffered < total
        received = 0
        while received < total:
            received += len(await theirs.read())
        await asyncio.wait_for(writer, 5)
        assert theirs.buffered == 0
        await client.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(scenario())


def test_resetting_a_full_stream_frees_the_session() -> None:
    async def scenario() -> None:
        _, client, accepted, tasks = await session_pair()
        stuck = await client.open_stream([("streamType", "data")])
        other = await client.open_stream([("streamType", "data")])
        await asyncio.sleep(0.05)
        theirs, their_other = accepted
        # More than the per-stream limit, never read: the server stops reading.
        await stuck.write(b"x" * (spdy.BUFFER_LIMIT + 4 * spdy.DATA_CHUNK))
        await asyncio.sleep(0.2)
        await theirs.abort()
        # Data the client had in flight for the reset stream is dropped quietly...
        with contextlib.suppress(ConnectionError):
            await stuck.write(b"late")
        # ...and the other stream carries on.
        await other.write(b"still here")
        await other.close()
        assert await asyncio.wait_for(_read_all(their_other), 5) == b"still here"
        assert theirs.id not in accepted[0].session.streams
        await client.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(scenario())


def test_sessions_cap_open_streams() -> None:
    async def scenario() -> None:
        server, client, accepted, tasks = await session_pair()
        opened = [await client.open_stream([("streamType", "data")], wait_reply=False)
                  for _ in range(spdy.MAX_STREAMS + 3)]
        await asyncio.sleep(0.3)
        assert len(accepted) == spdy.MAX_STREAMS
        assert sum(s.reset for s in opened) == 3
        await client.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert server.closed.is_set()

    asyncio.run(scenario())


def test_a_reset_after_fin_still_ends_the_reader() -> None:
    async def scenario() -> bytes:
        _, client, accepted, tasks = await session_pair()
        ours = await client.open_stream([("streamType", "data")])
        await asyncio.sleep(0.05)
        (theirs,) = accepted
        await ours.write(b"unread")
        await ours.close()
        await asyncio.sleep(0.05)
        await ours.abort()
        await asyncio.sleep(0.05)
        # Data and end marker were queued, then the reset dropped them: the
        # reader must still see the end, not wait forever.
        data = await asyncio.wait_for(theirs.read(), 5)
        assert theirs.reset
        await client.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return data

    assert asyncio.run(scenario()) == b""
