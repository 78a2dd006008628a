"""Atomic JSON files: write to a temporary file, fsync, rename, fsync the directory.

A reader (or a daemon restarted after kill -9) sees either the old record or
the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

from vmrt.fsutil import naming


def write_json(path: Path, data: Any, fsync: bool = True) -> None:
    """``fsync=False`` still replaces atomically; it only skips the disk flush,
    for records that change often and only need to survive a daemon crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with naming(path):  # the error says which record could not be written
            view = memoryview(payload)
            while view:  # a short write (a disk filling up) must not pass for a whole one
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            if fsync:
                os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if not fsync:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any:
    with path.open() as f:
        return json.load(f)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
