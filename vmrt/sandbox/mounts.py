"""Host mounts under a sandbox directory: bind, unmount, and find leftovers.

Removing a sandbox directory while something is still mounted inside it
would delete the mounted files (a user's rootfs!), so ``remove_tree``
unmounts everything below the directory first and refuses if it cannot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from vmrt.errors import VmrtError
from vmrt.fsutil import remove_tree_async


class MountError(VmrtError):
    pass


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise MountError(f"{' '.join(argv)}: {output.decode(errors='replace').strip()}")


async def bind(source: Path, target: Path, readonly: bool, slave: bool = False) -> None:
    """Bind ``source`` at ``target`` (created as a directory if missing).

    Private by default, so mount events do not cross between the host and the
    sandbox share; ``slave`` lets the host's later mounts under ``source``
    show through (CRI's HostToContainer propagation).
    """
    if not target.exists():
        target.mkdir(parents=True)
    options = "rbind,ro" if readonly else "rbind"
    await _run("mount", "-o", options, str(source), str(target))
    await _run("mount", "--make-rslave" if slave else "--make-rprivate", str(target))


async def overlay(lower: list[Path], upper: Path, work: Path, target: Path) -> None:
    """An overlay of ``lower`` (top first) with a writable ``upper``."""
    options = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    if len(options) > 4000:
        raise MountError(f"too many image layers ({len(lower)}) for one overlay mount")
    await _run("mount", "-t", "overlay", "-o", options, "overlay", str(target))


async def unmount(target: Path) -> None:
    await _run("umount", str(target))


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, deepest first."""
    prefix = str(directory.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


async def unmount_all(directory: Path) -> None:
    for point in mounts_under(directory):
        try:
            await unmount(point)
        except MountError:
            # Busy: detach it now, the kernel finishes when the last user goes.
            await _run("umount", "--lazy", str(point))


async def remove_tree(directory: Path) -> None:
    if not directory.exists():
        return
    await unmount_all(directory)
    left = mounts_under(directory)
    if left:
        raise MountError(f"refusing to delete {directory}: still mounted: "
                         + ", ".join(map(str, left)))
    await remove_tree_async(directory)
