"""Deleting directory trees that may be hostile.

Python 3.11's ``shutil.rmtree`` recurses and fails on trees a few thousand
levels deep, which any container can make in its writable layer and any
image can ship. ``rm -rf --one-file-system`` handles any depth and never
crosses into a mount that was left behind.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

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


def _argv(path: Path) -> list[str]:
    return ["rm", "-rf", "--one-file-system", "--", str(path)]


def remove_tree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    proc = subprocess.run(_argv(path), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RemoveError(f"cannot delete {path}: {proc.stderr.strip()}")


async def remove_tree_async(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    proc = await asyncio.create_subprocess_exec(*_argv(path), stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RemoveError(f"cannot delete {path}: {err.decode(errors='replace').strip()}")
