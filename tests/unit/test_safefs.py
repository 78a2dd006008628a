"""The host's file operations on trees others control: no symlink followed,
no mount entered, no rename raced into deleting something else."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vmrt import safefs


def test_remove_tree_never_follows_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("k")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "f").write_text("x")
    os.symlink(victim, tree / "a" / "to-victim")
    os.symlink(victim / "keep", tree / "file-link")
    os.mkfifo(tree / "fifo")
    safefs.remove_tree(tree)
    assert not tree.exists()
    assert (victim / "keep").read_text() == "k"


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("k")
    os.symlink(victim, tmp_path / "link")
    safefs.remove_tree(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink() and (victim / "keep").exists()


def test_remove_tree_any_depth_and_width(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_DIRECTORY)
    for _ in range(3000):  # far past Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    for index in range(2000):
        (deep / f"w{index}").mkdir()
    safefs.remove_tree(deep)
    assert not deep.exists()


@pytest.mark.root
def test_remove_tree_refuses_to_enter_a_mount(tmp_path: Path) -> None:
    point = tmp_path / "tree" / "mnt"
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "t", str(point)], check=True)
    try:
        (point / "precious").write_text("p")
        with pytest.raises(safefs.UnsafePathError, match="a mount is still there"):
            safefs.remove_tree(tmp_path / "tree")
        assert (point / "precious").read_text() == "p"
    finally:
        subprocess.run(["umount", str(point)], check=True)
    safefs.remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_remove_tree_stops_when_a_directory_moves_underneath(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest renames a directory while the host deletes the tree: the walk
    back up notices that '..' is not where it came from and stops."""
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    real_clear = safefs._clear_files
    moved = []

    def clear_and_move(dir_fd: int) -> list[str]:
        names = real_clear(dir_fd)
        if not moved and os.path.realpath(f"/proc/self/fd/{dir_fd}") == str(tree / "a" / "b"):
            moved.append(True)
            os.rename(tree / "a" / "b", outside / "b")
        return names

    monkeypatch.setattr(safefs, "_clear_files", clear_and_move)
    with pytest.raises(safefs.UnsafePathError, match="changed while it was being deleted"):
        safefs.remove_tree(tree)
    assert (outside / "keep").exists()


def test_open_beneath_refuses_symlinks_and_dotdot(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    os.symlink("/etc", tmp_path / "logs" / "etc")
    for bad in ("etc/passwd", "../x", "/etc/passwd"):
        with pytest.raises(safefs.UnsafePathError):
            safefs.open_beneath(tmp_path / "logs", bad, os.O_RDONLY)
    with pytest.raises(safefs.UnsafePathError):
        safefs.make_dirs(tmp_path / "logs", "etc/sub")
    safefs.make_dirs(tmp_path / "logs", "c/0")
    assert (tmp_path / "logs" / "c" / "0").is_dir()


def test_read_in_root_resolves_inside_the_layer(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "usr").mkdir()
    (layer / "usr" / "passwd.real").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink("/usr/passwd.real", layer / "etc" / "passwd")  # absolute, inside the layer
    os.symlink("/etc/shadow", layer / "etc" / "shadow")  # would be the host's
    os.symlink("/", layer / "host")
    assert safefs.read_in_root(layer, "etc/passwd", 100) == b"root:x:0:0::/root:/bin/sh\n"
    assert safefs.read_in_root(layer, "etc/shadow", 100) is None
    assert safefs.read_in_root(layer, "host/etc/hostname", 100) is None
    assert safefs.read_in_root(layer, "../../../../etc/hostname", 100) is None
    assert safefs.lookup_in_root(layer, "etc") == "directory"


def test_tree_usage_any_depth_and_never_through_a_symlink(tmp_path: Path) -> None:
    layer = tmp_path / "upper"
    layer.mkdir()
    fd = os.open(layer, os.O_DIRECTORY)
    for _ in range(1500):  # past the recursion limit that os.walk hits
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    (layer / "file").write_bytes(b"x" * 10000)
    outside = tmp_path / "host"
    outside.mkdir()
    for index in range(50):
        (outside / f"f{index}").write_bytes(b"y" * 4096)
    (layer / "escape").symlink_to(outside)
    try:
        used, inodes = safefs.tree_usage(layer)
        # Every directory, the file and the link itself; nothing of the host
        # directory behind the link.
        assert inodes == 1500 + 2
        assert used >= 10000
        assert safefs.tree_usage(outside)[1] == 50
        assert safefs.tree_usage(tmp_path / "missing") == (0, 0)
        assert safefs.tree_usage(layer, limit=10)[1] <= 10 + 2
    finally:
        safefs.remove_tree(layer)  # deeper than pytest's own clean-up can go


def test_tree_usage_counts_below_the_path_length_limit(tmp_path: Path) -> None:
    """A guest cannot hide usage in a tree deeper than any path can name."""
    layer = tmp_path / "upper"
    layer.mkdir()
    fd = os.open(layer, os.O_DIRECTORY)
    for _ in range(3000):  # "d/" * 3000 is longer than PATH_MAX
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    big = os.open("big", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(big, b"z" * (1 << 20))
    os.close(big)
    os.close(fd)
    try:
        used, inodes = safefs.tree_usage(layer)
        assert inodes == 3000 + 1
        assert used >= 1 << 20
    finally:
        safefs.remove_tree(layer)  # deeper than pytest's own clean-up can go
