"""Frames on the agent's serial line: each end finds its place again after
bytes of an old session, a restart, or a guest that lies."""

from __future__ import annotations

import os

import pytest

from vmrt.agent import framing
from vmrt.agent.framing import (
    DATA,
    END,
    HELLO,
    MAX_PAYLOAD,
    WELCOME,
    FrameError,
    GuestSync,
    HostSync,
    Parser,
    data_frames,
    frame,
)


def test_frames_round_trip_split_anywhere() -> None:
    stream = frame(HELLO, b"n" * 16) + data_frames(b"x" * (MAX_PAYLOAD + 5)) + frame(END)
    for step in (1, 7, 4096, len(stream)):
        parser = Parser()
        frames: list[framing.Frame] = []
        for i in range(0, len(stream), step):
            frames += parser.feed(stream[i:i + step])
        assert [k for k, _ in frames] == [HELLO, DATA, DATA, END]
        assert frames[1][1] + frames[2][1] == b"x" * (MAX_PAYLOAD + 5)
        assert len(frames[1][1]) == MAX_PAYLOAD


@pytest.mark.parametrize("bad", [
    b"\x00vm" + bytes([DATA]) + (4).to_bytes(4, "big") + b"abcd",       # bad magic
    framing.MAGIC + bytes([9]) + (0).to_bytes(4, "big"),                 # unknown kind
    framing.MAGIC + bytes([DATA]) + (MAX_PAYLOAD + 1).to_bytes(4, "big"),  # too long
    framing.MAGIC + bytes([WELCOME]) + (3).to_bytes(4, "big") + b"abc",  # short nonce
    framing.MAGIC + bytes([DATA]) + (0).to_bytes(4, "big"),  # empty: work for nothing
    framing.MAGIC + bytes([END]) + (1).to_bytes(4, "big") + b"x",
])
def test_the_parser_refuses_what_breaks_the_rules(bad: bytes) -> None:
    with pytest.raises(FrameError):
        Parser().feed(bad)


def test_the_guest_skips_stale_bytes_and_a_split_hello() -> None:
    sync = GuestSync()
    hello = frame(HELLO, os.urandom(16))
    stale = b"\x00\x00\x08\x06 the last session's PING" + frame(DATA, b"old")
    assert sync.feed(stale + hello[:5]) == []
    assert not sync.synced
    frames = sync.feed(hello[5:] + frame(DATA, b"new"))
    assert frames == [(HELLO, hello[8:]), (DATA, b"new")]
    assert sync.synced and sync.dropped == len(stale)


def test_the_guest_looks_for_a_hello_again_after_garbage_and_after_a_reset() -> None:
    sync = GuestSync()
    assert sync.feed(frame(HELLO, b"a" * 16))[0][0] == HELLO
    # A frame that does not parse (the host died mid-frame, a new one began).
    second = frame(HELLO, b"b" * 16)
    assert sync.feed(b"\xff" * 9 + second + frame(DATA, b"d")) == [
        (HELLO, b"b" * 16), (DATA, b"d")]
    sync.reset()  # the host hung up
    assert sync.feed(frame(DATA, b"lost")) == []
    assert sync.feed(frame(HELLO, b"c" * 16)) == [(HELLO, b"c" * 16)]


def test_the_host_drops_all_before_the_welcome_to_its_latest_nonce() -> None:
    sync = HostSync()
    assert sync.feed(frame(DATA, b"before any hello")) == []
    first, latest = os.urandom(16), os.urandom(16)
    sync.expect(first)
    sync.expect(latest)  # the HELLO was said again
    stale = frame(WELCOME, first) + frame(DATA, b"\x00\x00\x08\x06old ping") + b"\x01partial"
    welcome = frame(WELCOME, latest)
    assert sync.feed(stale + welcome[:10]) == []
    assert sync.feed(welcome[10:] + frame(DATA, b"mine")) == [(WELCOME, latest), (DATA, b"mine")]
    assert sync.synced and sync.dropped == len(frame(DATA, b"before any hello")) + len(stale)


def test_a_guest_that_breaks_the_framing_is_out_of_step_until_the_next_hello() -> None:
    sync = HostSync()
    nonce = os.urandom(16)
    sync.expect(nonce)
    sync.feed(frame(WELCOME, nonce))
    with pytest.raises(FrameError):
        sync.feed(framing.MAGIC + bytes([DATA]) + (1 << 30).to_bytes(4, "big"))
    assert not sync.synced
    assert sync.feed(frame(DATA, b"ignored") + frame(WELCOME, nonce)) == []
    again = os.urandom(16)
    sync.expect(again)
    assert sync.feed(frame(WELCOME, again)) == [(WELCOME, again)]


def test_neither_side_holds_more_than_a_frame() -> None:
    """Bytes that never make a frame, or a header that promises the most,
    leave at most one frame (or one marker) held."""
    guest = GuestSync()
    for _ in range(64):
        guest.feed(os.urandom(65536).replace(framing.MAGIC, b"xxx"))
    assert len(guest._scanner._held) < len(framing.HELLO_HEADER)  # type: ignore[union-attr]
    parser = Parser()
    parser.feed(framing.MAGIC + bytes([DATA]) + MAX_PAYLOAD.to_bytes(4, "big"))
    for _ in range(2):
        assert parser.feed(b"y" * 100_000) == []  # the frame is not complete yet
    assert len(parser._buf) <= MAX_PAYLOAD + framing.HEADER.size


def test_the_filler_brings_back_a_guest_left_in_the_middle_of_a_frame() -> None:
    """A vmrtd killed mid-frame left the guest waiting for the rest of a
    256 KiB DATA frame; the next one's filler ends it, and its HELLO is seen."""
    sync = GuestSync()
    sync.feed(frame(HELLO, b"a" * 16))
    sync.feed(framing.MAGIC + bytes([DATA]) + MAX_PAYLOAD.to_bytes(4, "big") + b"0123456789")
    filler = bytes(framing.HEADER.size + MAX_PAYLOAD)
    frames = sync.feed(filler + frame(HELLO, b"b" * 16))
    assert frames[-1] == (HELLO, b"b" * 16)
