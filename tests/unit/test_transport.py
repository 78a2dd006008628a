"""The guest's byte pump between the host channel and the local gRPC socket."""

import os
import socket
import threading
from pathlib import Path

import pytest

from vmrt.agent.transport import HTTP2_PREFACE, _PrefaceSync, _pump, find_serial_port


def test_preface_sync_drops_stale_bytes_even_when_split() -> None:
    sync = _PrefaceSync()
    stale = b"\x00\x00\x04\x08 leftover of an old connection"
    assert sync.feed(stale + HTTP2_PREFACE[:10]) == b""
    assert sync.feed(HTTP2_PREFACE[10:] + b"frames") == HTTP2_PREFACE + b"frames"
    assert sync.synced
    assert sync.feed(b"more") == b"more"


def test_preface_sync_passes_a_clean_start_through() -> None:
    sync = _PrefaceSync()
    assert sync.feed(HTTP2_PREFACE + b"x") == HTTP2_PREFACE + b"x"


def test_find_serial_port_by_name(tmp_path: Path) -> None:
    for entry, name in (("vport0p1", "org.qemu.guest_agent.0"), ("vport0p2", "vmrt.agent")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    assert find_serial_port("vmrt.agent", str(tmp_path)) == "/dev/vport0p2"
    with pytest.raises(FileNotFoundError, match="no virtio-serial port named"):
        find_serial_port("other", str(tmp_path))


def test_pump_copies_both_ways_and_reports_who_hung_up() -> None:
    host, outer = socket.socketpair()
    inner, server = socket.socketpair()
    outer.setblocking(False)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(_pump(outer.fileno(), inner)))
    thread.start()
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=host.sendall, args=(HTTP2_PREFACE + payload,))
    sender.start()
    received = bytearray()
    while len(received) < len(HTTP2_PREFACE) + len(payload):
        received += server.recv(1 << 16)
    sender.join()
    assert bytes(received) == HTTP2_PREFACE + payload
    server.sendall(b"reply")
    assert host.recv(16) == b"reply"
    host.close()
    thread.join(10)
    assert result == ["host hung up"]
    for s in (outer, inner, server):
        s.close()
