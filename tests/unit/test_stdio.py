"""Output spools: offsets, follow-reads, end of stream."""

import threading
import time
from pathlib import Path

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


def test_destroy_removes_the_file(tmp_path: Path) -> None:
    spool = OutputSpool(str(tmp_path / "out"))
    spool.append(b"x")
    spool.destroy()
    assert not (tmp_path / "out").exists()
