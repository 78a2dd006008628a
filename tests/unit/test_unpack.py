"""The layer unpacker against hostile and awkward tars (needs root: chown, mknod, xattrs)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from vmrt.images.unpack import HostileLayer, unpack


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: object
          ) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def run(tmp_path: Path, data: bytes) -> Path:
    target = tmp_path / "layer"
    target.mkdir()
    unpack(io.BytesIO(data), str(target))
    return target


def test_files_links_whiteouts_and_metadata(tmp_path: Path) -> None:
    data = tar_of(
        entry("dir", tarfile.DIRTYPE, mode=0o750),
        entry("dir/file", data=b"hello", uid=1000, gid=1000, mode=0o4755),
        entry("dir/link", tarfile.SYMTYPE, linkname="/etc/passwd"),
        entry("dir/hard", tarfile.LNKTYPE, linkname="dir/file"),
        entry("dir/.wh.gone"),
        entry("opaque/.wh..wh..opq"),
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
    )
    layer = run(tmp_path, data)
    info = (layer / "dir/file").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1000, 0o4755)
    assert os.readlink(layer / "dir/link") == "/etc/passwd"
    assert (layer / "dir/hard").stat().st_ino == info.st_ino
    whiteout = (layer / "dir/gone").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(layer / "opaque", "trusted.overlay.opaque") == b"y"
    assert stat.S_ISCHR((layer / "dev/null").lstat().st_mode)


def test_diff_id_covers_trailing_data(tmp_path: Path) -> None:
    data = tar_of(entry("a", data=b"x")) + b"\0" * (3 << 20)
    target = tmp_path / "layer"
    target.mkdir()
    diff_id, size = unpack(io.BytesIO(data), str(target))
    assert diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert size == len(data)


@pytest.mark.parametrize("members, message", [
    ([entry("../escape")], "climbs out"),
    ([entry("/abs")], "absolute path"),
    ([entry("link", tarfile.SYMTYPE, linkname="/tmp"), entry("link/x", data=b"x")],
     "through a symlink"),
    ([entry("etc/zero", tarfile.CHRTYPE, devmajor=1, devminor=5)], "outside /dev"),
    ([entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
      entry("bin/disk", tarfile.LNKTYPE, linkname="dev/sda")], "device node outside /dev"),
    ([entry("x", tarfile.LNKTYPE, linkname="../../etc/shadow")], "climbs out"),
    ([entry("x", tarfile.LNKTYPE, linkname="missing")], "not in this layer"),
    ([entry("dir/.wh..")], "names no file"),
    ([entry("dir/.wh.")], "names no file"),
])
def test_hostile_entries(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]],
                         message: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(HostileLayer, match=message):
        run(tmp_path, tar_of(*members))
    assert not any(outside.iterdir())


def test_deep_trees_and_their_whiteouts(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 1500)
    members = [entry("/".join(["d"] * (i + 1)), tarfile.DIRTYPE, mode=0o755)
               for i in range(1500)]
    members.append(entry(f"{deep}/leaf", data=b"x"))
    members.append(entry(".wh.d"))
    layer = run(tmp_path, tar_of(*members))
    assert stat.S_ISCHR((layer / "d").lstat().st_mode)


def test_directory_replaced_by_a_file_is_fine(tmp_path: Path) -> None:
    layer = run(tmp_path, tar_of(entry("x", tarfile.DIRTYPE), entry("x", data=b"now a file")))
    assert (layer / "x").read_bytes() == b"now a file"
