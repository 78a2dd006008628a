"""File operations that never follow a path someone else can change.

A sandbox's share, a container's writable layer, an image layer and a
log directory hold names that a guest, an image or a CRI caller chose.
Everything here resolves such names relative to a directory fd that vmrt
opened itself, with ``openat2``:

* ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``: no ``..`` out, no symlink
  anywhere on the way (``open_beneath``, ``make_dirs``, log files);
* ``RESOLVE_IN_ROOT``: symlinks are followed as if the directory were
  ``/`` (``read_in_root``: a file of an image layer, as the container would
  see it, never a host file);
* ``RESOLVE_NO_XDEV`` on top: never into another mount (``remove_tree``).

``remove_tree`` walks with directory fds only and checks, on the way back
up, that ``..`` is still the directory it came from: a tree that is renamed
or swapped for a symlink while it is being deleted makes it stop, never
delete something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import stat
from pathlib import Path

from vmrt.errors import FailedPreconditionError

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

_SYS_OPENAT2 = 437  # x86_64 and aarch64 alike (new syscalls share numbers)
_libc = ctypes.CDLL(None, use_errno=True)


class UnsafePathError(FailedPreconditionError):
    """A path that would leave its directory, pass a symlink or cross a mount."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = int(_libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how),
                           ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _unsafe(exc: OSError, path: str, base: str) -> UnsafePathError | OSError:
    if exc.errno == errno.ELOOP:
        return UnsafePathError(f"{path!r} under {base} goes through a symlink")
    if exc.errno == errno.EXDEV:
        return UnsafePathError(f"{path!r} under {base} leaves the directory or crosses a mount")
    return exc


def open_beneath(base: Path | int, path: str, flags: int = os.O_RDONLY, mode: int = 0,
                 resolve: int = STRICT) -> int:
    """Open ``path`` inside ``base`` (a path vmrt trusts, or a directory fd)."""
    base_fd = base if isinstance(base, int) else os.open(base, os.O_PATH | os.O_DIRECTORY
                                                          | os.O_CLOEXEC)
    try:
        return openat2(base_fd, path, flags, resolve, mode)
    except OSError as exc:
        raise _unsafe(exc, path, str(base)) from None
    finally:
        if not isinstance(base, int):
            os.close(base_fd)


def make_dirs(base: Path, path: str, mode: int = 0o755) -> None:
    """``mkdir -p`` of ``path`` inside ``base``, refusing symlinks on the way."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in Path(path).parts:
            if part in ("/", ".", ".."):
                raise UnsafePathError(f"{path!r} is not a plain relative path")
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            try:
                child = openat2(fd, part, os.O_PATH | os.O_DIRECTORY, STRICT)
            except OSError as exc:
                raise _unsafe(exc, path, str(base)) from None
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def read_in_root(root: Path, path: str, limit: int) -> bytes | None:
    """A regular file of the tree at ``root`` as a process chrooted there would
    read it: symlinks resolve inside ``root``. None if it is missing or not a
    regular file; at most ``limit`` bytes."""
    try:
        fd = open_beneath(root, path.lstrip("/"), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY,
                          resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    except (OSError, UnsafePathError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def lookup_in_root(root: Path, path: str) -> str | None:
    """What ``path`` is in the tree at ``root`` (symlinks resolved inside it):
    "regular", "directory", "other", or None when there is nothing."""
    try:
        fd = open_beneath(root, path.lstrip("/") or ".", os.O_PATH,
                          resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    except (OSError, UnsafePathError):
        return None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISREG(mode):
        return "regular"
    return "directory" if stat.S_ISDIR(mode) else "other"


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it, without following a symlink
    or entering a mount. A mount found inside is an error and the tree is
    left as far as it got; so is a directory that moved meanwhile.

    Iterative (any depth), holding one directory fd at a time.
    """
    try:
        parent_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_in(parent_fd, path.name, str(path))
    finally:
        os.close(parent_fd)


def remove_entry(dir_fd: int, name: str) -> None:
    """Delete ``name`` in the directory ``dir_fd``, a whole tree if it is a
    directory, the way ``remove_tree`` does."""
    _remove_in(dir_fd, name, name)


def _remove_in(parent_fd: int, name: str, shown: str) -> None:
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    current = _open_subdir(parent_fd, name, shown)
    if current < 0:
        return
    # From the top down to ``current``: each directory's identity, the name
    # that leads to it, and its subdirectories still to delete.
    chain = [os.fstat(current)]
    names: list[str] = []
    pending = [_clear_files(current)]
    try:
        while True:
            if pending[-1]:
                sub = pending[-1].pop()
                fd = _open_subdir(current, sub, f"{shown}/.../{sub}")
                if fd < 0:
                    continue
                os.close(current)
                current = fd
                chain.append(os.fstat(current))
                names.append(sub)
                pending.append(_clear_files(current))
                continue
            pending[-1] = _clear_files(current)  # whatever appeared meanwhile
            if pending[-1]:
                continue
            if not names:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current)
            if not _same(os.fstat(up), chain[-2]):
                os.close(up)
                raise UnsafePathError(f"{shown} changed while it was being deleted; stopped")
            os.close(current)
            current = up
            os.rmdir(names.pop(), dir_fd=current)
            chain.pop()
            pending.pop()
    finally:
        os.close(current)
    os.rmdir(name, dir_fd=parent_fd)


def _open_subdir(dir_fd: int, name: str, shown: str) -> int:
    """An fd of the subdirectory ``name``, -1 if it is gone; a symlink or a
    mount in its place is an error."""
    try:
        return openat2(dir_fd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                       STRICT | RESOLVE_NO_XDEV)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise _refusal(exc, shown) from None


def _clear_files(dir_fd: int) -> list[str]:
    """Unlink everything in ``dir_fd`` but its subdirectories; return their names."""
    subdirs = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=dir_fd)
    return subdirs


def _refusal(exc: OSError, shown: str) -> Exception:
    if exc.errno == errno.EXDEV:
        return UnsafePathError(f"refusing to delete {shown}: a mount is still there")
    if exc.errno == errno.ELOOP:
        return UnsafePathError(f"refusing to delete {shown}: it became a symlink")
    return exc


async def remove_tree_async(path: Path) -> None:
    """``remove_tree`` off the event loop: a writable layer may hold many files."""
    await asyncio.to_thread(remove_tree, path)


def tree_usage(path: Path, limit: int = 1_000_000) -> tuple[int, int]:
    """Bytes and inodes below ``path`` (a container's writable layer, which the
    guest fills), never through a symlink or into a mount, at any depth, and
    at most ``limit`` entries.

    Like ``remove_tree``: one directory fd at a time, down by name and back up
    through ``..`` (checked to be the directory it came from), so no path is
    ever resolved and depth costs nothing. A tree that moves while it is
    counted is counted as far as it got.
    """
    try:
        current = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    totals = [0, 0]  # bytes, inodes
    chain = [os.fstat(current)]
    pending = [_count_entries(current, totals, limit)]
    try:
        while pending and totals[1] < limit:
            if pending[-1]:
                sub = pending[-1].pop()
                try:
                    fd = openat2(current, sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 STRICT | RESOLVE_NO_XDEV)
                except OSError:
                    continue  # gone, or a symlink or mount now: not counted
                os.close(current)
                current = fd
                chain.append(os.fstat(current))
                pending.append(_count_entries(current, totals, limit))
                continue
            pending.pop()
            if not pending:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current)
            chain.pop()
            if not _same(os.fstat(up), chain[-1]):
                os.close(up)
                break  # moved underneath: what was counted stands
            os.close(current)
            current = up
    finally:
        os.close(current)
    return totals[0], totals[1]


def _count_entries(dir_fd: int, totals: list[int], limit: int) -> list[str]:
    """Add the entries of ``dir_fd`` to ``totals``; return its subdirectories."""
    subdirs = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if totals[1] >= limit:
                break
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            totals[0] += info.st_blocks * 512
            totals[1] += 1
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(entry.name)
    return subdirs
