"""Unpacking one image layer into its own directory, safely.

The result is an overlayfs lower directory: Docker/OCI whiteouts (``.wh.NAME``)
become overlay whiteouts (a 0/0 character device) and opaque markers
(``.wh..wh..opq``) the ``trusted.overlay.opaque`` xattr, as containerd's
overlay snapshotter does.

Every path is created relative to directory fds with O_NOFOLLOW, so nothing
in a layer can reach outside its directory: an absolute path or ``..`` is
refused outright, a path through a symlink fails (ELOOP/ENOTDIR), hardlinks
must point inside the layer, and device nodes are only allowed under /dev.
A refused layer is a clear error; the partial directory is deleted by the
caller.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import tarfile
from typing import IO

from vmrt import safefs
from vmrt.errors import InvalidArgumentError

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20


class HostileLayer(InvalidArgumentError):
    pass


class HashingReader(io.RawIOBase):
    """Passes a stream through while hashing it (a layer's diff_id)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        """Read to the end: the tar stream may stop before the compressed data does."""
        while self.read(CHUNK):
            pass


def _components(name: str) -> list[str]:
    if "\0" in name:
        raise HostileLayer(f"path {name!r} in layer contains a NUL byte")
    if name.startswith("/"):
        raise HostileLayer(f"absolute path {name!r} in layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileLayer(f"path {name!r} in layer climbs out with '..'")
    return parts


class _Tree:
    """A directory we create things in, never following a symlink."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    def parent(self, parts: list[str], create: bool = True) -> int:
        """An fd of the directory holding ``parts[-1]`` (caller closes it)."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise HostileLayer(
                            f"path {'/'.join(parts)!r} goes through a symlink or a file") from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def _apply_metadata(dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
    os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
    if not member.issym():
        os.chmod(name, stat.S_IMODE(member.mode), dir_fd=dir_fd)
    if member.isreg() or member.isdir():
        # Only files and directories: opening a device node to set an xattr
        # would open the host's device.
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr."):]
            if attr.startswith(("security.", "user.")):
                os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", attr,
                            value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
    os.utime(name, (member.mtime, member.mtime), dir_fd=dir_fd, follow_symlinks=False)


def unpack(stream: IO[bytes], destination: str) -> tuple[str, int]:
    """Extract a tar stream into ``destination``; returns (diff_id, uncompressed size)."""
    hashing = HashingReader(stream)
    reader = io.BufferedReader(hashing, CHUNK)
    tree = _Tree(destination)
    directories: list[tuple[list[str], tarfile.TarInfo]] = []
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in archive:
                _extract(tree, archive, member, directories)
        # Directory times last: creating their entries changed them. A
        # directory a later entry replaced is simply gone.
        for parts, member in reversed(directories):
            try:
                fd = tree.parent(parts, create=False)
            except (FileNotFoundError, HostileLayer):
                continue
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(parts[-1], (member.mtime, member.mtime), dir_fd=fd,
                             follow_symlinks=False)
            finally:
                os.close(fd)
        # The diff_id covers the whole stream, padding after the archive too;
        # read it in chunks, never all at once.
        while reader.read(CHUNK):
            pass
        hashing.drain()
    except tarfile.TarError as exc:
        raise InvalidArgumentError(f"layer is not a valid tar archive: {exc}") from None
    except ValueError as exc:
        raise HostileLayer(f"layer has an entry the filesystem cannot hold: {exc}") from None
    finally:
        tree.close()
    return "sha256:" + hashing.sha256.hexdigest(), hashing.size


def _extract(tree: _Tree, archive: tarfile.TarFile, member: tarfile.TarInfo,
             directories: list[tuple[list[str], tarfile.TarInfo]]) -> None:
    parts = _components(member.name)
    if not parts:
        return  # the layer's root directory itself
    name = parts[-1]
    dir_fd = tree.parent(parts)
    try:
        if name == OPAQUE:
            # Hides the lower layers' contents of this directory; what this
            # layer itself puts there stays.
            os.setxattr(dir_fd, "trusted.overlay.opaque", b"y")
            return
        if name.startswith(WHITEOUT_PREFIX):
            target = name[len(WHITEOUT_PREFIX):]
            if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
                raise HostileLayer(f"whiteout {member.name!r} names no file")
            safefs.remove_entry(dir_fd, target)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dir_fd)
            return
        if member.isdir():
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            else:
                if not stat.S_ISDIR(info.st_mode):
                    safefs.remove_entry(dir_fd, name)
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
            _apply_metadata(dir_fd, name, member)
            directories.append((parts, member))
            return
        safefs.remove_entry(dir_fd, name)
        if member.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out:
                source = archive.extractfile(member)
                assert source is not None
                while chunk := source.read(CHUNK):
                    out.write(chunk)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=dir_fd)
        elif member.islnk():
            target_parts = _components(member.linkname)
            if not target_parts:
                raise HostileLayer(f"hardlink {member.name!r} to the layer root")
            target_fd = tree.parent(target_parts, create=False)
            try:
                target_mode = os.stat(target_parts[-1], dir_fd=target_fd,
                                      follow_symlinks=False).st_mode
                if (stat.S_ISCHR(target_mode) or stat.S_ISBLK(target_mode)) and parts[0] != "dev":
                    raise HostileLayer(f"hardlink {member.name!r} to a device node outside /dev")
                os.link(target_parts[-1], name, src_dir_fd=target_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            except FileNotFoundError:
                raise HostileLayer(f"hardlink {member.name!r} points at {member.linkname!r}, "
                                   "which is not in this layer") from None
            finally:
                os.close(target_fd)
            return  # a hardlink shares its target's metadata
        elif member.ischr() or member.isblk():
            if parts[0] != "dev":
                raise HostileLayer(f"device node {member.name!r} outside /dev")
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=dir_fd)
        elif member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        else:
            raise HostileLayer(f"unsupported tar entry type for {member.name!r}")
        _apply_metadata(dir_fd, name, member)
    finally:
        os.close(dir_fd)
