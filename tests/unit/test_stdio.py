"""Output spools: offsets, follow-reads, end of stream."""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmrt.agent import stdio
from vmrt.agent.stdio import OutputSpool


def test_read_from_an_offset_without_follow(tmp_path: Path) -> None:
    spool = OutputSpool(str(tmp_path / "out"))
    spool.append(b"hello ")
    spool.append(b"world")
    assert b"".join(d for _, d in spool.read_from(0, follow=False)) == b"hello world"
    assert list(spool.read_from(6, follow=False)) == [(6, b"world")]
    assert list(spool.read_from(11, follow=False)) == []


def test_follow_waits_for_data_and_ends_at_close(tmp_path: Path) -> None:
    spool = OutputSpool(str(tmp_path / "out"))
    got: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: got.extend(spool.read_from(0, follow=True)))
    reader.start()
    time.sleep(0.1)
    spool.append(b"a")
    time.sleep(0.1)
    spool.append(b"b")
    spool.close()
    reader.join(5)
    assert not reader.is_alive()
    assert b"".join(d for _, d in got) == b"ab"
    assert got[0][0] == 0


def test_follow_stops_when_the_caller_goes_away(tmp_path: Path) -> None:
    spool = OutputSpool(str(tmp_path / "out"))
    alive = [True]
    reader = threading.Thread(
        target=lambda: list(spool.read_from(0, follow=True, keep_going=lambda: alive[0])))
    reader.start()
    alive[0] = False
    reader.join(5)
    assert not reader.is_alive()


def test_an_idle_follower_sleeps_until_its_caller_goes_away(tmp_path: Path) -> None:
    """With gRPC's add_callback, an idle reader does not wake to poll: it asks
    keep_going only when woken (here: never before the caller's end)."""
    spool = OutputSpool(str(tmp_path / "out"))
    asked = []
    alive = [True]
    callbacks: list[Callable[[], None]] = []

    def keep_going() -> bool:
        asked.append(1)
        return alive[0]

    def on_cancel(callback: Callable[[], None]) -> bool:
        callbacks.append(callback)
        return True

    reader = threading.Thread(target=lambda: list(spool.read_from(
        0, follow=True, keep_going=keep_going, on_cancel=on_cancel)))
    reader.start()
    time.sleep(2.5)  # the old reader asked twice in this time
    assert asked == [] and reader.is_alive()
    alive[0] = False
    callbacks[0]()
    reader.join(5)
    assert not reader.is_alive() and asked == [1]
    # A caller that is gone already: add_callback says False, nothing is read.
    assert list(spool.read_from(0, follow=True, on_cancel=lambda cb: False)) == []


def test_destroy_removes_the_files(tmp_path: Path) -> None:
    spool = OutputSpool(str(tmp_path / "out"), limit=4096, acked=False)
    spool.append(b"x" * 10)
    spool.destroy()
    assert not list(tmp_path.iterdir())


def test_trim_frees_whole_segments_and_reads_skip_forgotten_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio, "SEGMENT", 100)
    spool = OutputSpool(str(tmp_path / "out"), limit=1000)
    spool.append(bytes(range(250)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.0", "out.100", "out.200"]
    spool.trim(150)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.100", "out.200"]
    assert spool.base == 150
    # A reader asking for what is gone starts at the oldest byte kept.
    first = next(spool.read_from(0, follow=False))
    assert first == (150, bytes(range(150, 200)))
    assert b"".join(d for _, d in spool.read_from(120, follow=False)) == bytes(range(150, 250))
    spool.trim(10_000)  # past the end: everything, and no further
    assert spool.base == 250
    spool.append(b"more")
    assert list(spool.read_from(250, follow=False)) == [(250, b"more")]


def test_unacked_output_waits_for_the_host(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-pressure: a writer past the limit blocks until trimmed; nothing is lost."""
    monkeypatch.setattr(stdio, "SEGMENT", 64)
    spool = OutputSpool(str(tmp_path / "out"), limit=256)
    written = []

    def writer() -> None:
        for index in range(20):
            spool.append(bytes([index]) * 64)
            written.append(index)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert len(written) == 4 and spool.size == 256  # stopped at the limit
    received = bytearray()
    for offset, data in spool.read_from(0, follow=True):
        assert offset == len(received)
        received += data
        spool.trim(offset + len(data))
        if len(received) == 20 * 64:
            break
    thread.join(5)
    assert bytes(received) == b"".join(bytes([i]) * 64 for i in range(20))
    assert len(list(tmp_path.iterdir())) <= 1


def test_output_nobody_takes_keeps_only_the_latest(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio, "SEGMENT", 64)
    spool = OutputSpool(str(tmp_path / "out"), limit=256, acked=False)
    for index in range(100):
        spool.append(bytes([index]) * 10)  # never blocks
    assert spool.size == 1000 and spool.base == 1000 - 256
    kept = b"".join(d for _, d in spool.read_from(0, follow=False))
    assert kept == b"".join(bytes([i]) * 10 for i in range(100))[-256:]
    assert len(list(tmp_path.iterdir())) <= 256 // 64 + 1


def test_destroy_wakes_a_blocked_writer(tmp_path: Path) -> None:
    spool = OutputSpool(str(tmp_path / "out"), limit=10)
    spool.append(b"0123456789")
    thread = threading.Thread(target=spool.append, args=(b"more",), daemon=True)
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    spool.destroy()
    thread.join(5)
    assert not thread.is_alive()
