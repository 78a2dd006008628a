"""Private directories, and deleting trees that may be hostile.

Python 3.11's ``shutil.rmtree`` recurses and fails on trees a few thousand
levels deep, which any container can make in its writable layer and any
image can ship; ``safefs.remove_tree`` handles any depth, never follows a
symlink and never enters a mount that was left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from vmrt import safefs
from vmrt.errors import VmrtError


class RemoveError(VmrtError):
    pass


def private_dir(path: Path) -> Path:
    """A directory only root can enter.

    Image layers keep their setuid binaries and file capabilities, and a
    container's root can create device nodes in its writable layer (9p with
    security_model=none); none of it may be reachable by the host's users.
    """
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def remove_tree(path: Path) -> None:
    """Delete a tree of any depth without following a symlink or entering a mount."""
    try:
        safefs.remove_tree(path)
    except (OSError, safefs.UnsafePathError) as exc:
        raise RemoveError(f"cannot delete {path}: {exc}") from None


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """An OSError that names no file (a write to a full disk through a file
    object) is raised again naming ``path``, so the caller's error says where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
