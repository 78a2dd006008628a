"""A sandbox's shared directory: what the guest sees over 9p, laid out so that
nothing the guest writes can steer what the host does.

QEMU's 9p server runs as root and writes wherever the guest asks, inside its
export. If the export held the directories vmrt mounts into, a guest could
rename one and put a symlink to a host directory in its place, and the
host's next unmount or delete would act on the symlink's target (Kata's
CVE-2020-2026). So, as Kata fixed it:

* ``mounts/``  host-only. Every mount vmrt makes for the guest (a container's
  root filesystem, its volumes) lives here, and every host operation works
  on paths under it. It is a bind of itself with shared propagation.
* ``shared/``  the 9p export: a read-only bind of ``mounts/`` that is a slave
  of it, so each mount made under ``mounts/`` shows up here with its own
  flags (a root filesystem stays writable), but the directories that hold
  the mounts cannot be renamed, replaced or added to by the guest.
  It is shared as well, so the copy in QEMU's own mount namespace (the
  jail) keeps receiving them.
* ``staging/`` private: a mount is made and finished here (read-only,
  propagation, nodev) and only then moved into ``mounts/``, so the guest
  never sees a volume that should be read-only while it is still writable.

Every share mount is ``nodev``: QEMU opens files for the guest, and a device
node in an image or a host volume must not become a host device opened on
the guest's behalf.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from vmrt import safefs
from vmrt.errors import InvalidArgumentError, NotFoundError
from vmrt.sandbox import mounts, userns
from vmrt.sandbox.mounts import MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_SHARED, MS_SLAVE
from vmrt.sandbox.userns import Range

log = logging.getLogger(__name__)

SHARE_FLAGS = MS_NODEV | MS_NOSUID


def _component(value: str) -> str:
    if not value or "/" in value or value in (".", "..") or "\0" in value or len(value) > 128:
        raise InvalidArgumentError(f"invalid share path component {value!r}")
    return value


class SandboxShare:
    def __init__(self, directory: Path) -> None:
        self.host = directory / "mounts"
        self.view = directory / "shared"
        self.staging = directory / "staging"

    # -- the layout -------------------------------------------------------

    def create(self) -> None:
        """Make the three directories and their mounts (undo: ``destroy``)."""
        for path in (self.host, self.view, self.staging):
            path.mkdir(mode=0o700)
        mounts.bind(self.host, self.host, recursive=False)
        mounts.set_propagation(self.host, MS_PRIVATE, recursive=False)
        mounts.set_propagation(self.host, MS_SHARED, recursive=False)
        mounts.bind(self.host, self.view, recursive=False, readonly=True, flags=SHARE_FLAGS)
        mounts.set_propagation(self.view, MS_SLAVE, recursive=False)
        mounts.set_propagation(self.view, MS_SHARED, recursive=False)
        mounts.bind(self.staging, self.staging, recursive=False)
        mounts.set_propagation(self.staging, MS_PRIVATE, recursive=False)

    def destroy(self) -> None:
        """Unmount and delete everything; safe to repeat, and on a half-made layout."""
        # mounts/ first: its unmounts take their copies in shared/ with them.
        for path in (self.host, self.view, self.staging):
            if path.exists():
                mounts.unmount_all(path)
        for path in (self.host, self.view, self.staging):
            safefs.remove_tree(path)

    # -- mounts for the guest ---------------------------------------------

    def _place(self, rel: str, prepare: Callable[[Path], None], is_dir: bool = True) -> str:
        """Make a mount in staging with ``prepare(stage)``, then move it to
        ``mounts/<rel>``; returns ``rel``, the path inside the share."""
        parts = [_component(p) for p in rel.split("/")]
        safefs.make_dirs(self.host, "/".join(parts[:-1] if not is_dir else parts), mode=0o755)
        if not is_dir:
            os.close(safefs.open_beneath(self.host, "/".join(parts),
                                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        stage = self.staging / secrets.token_hex(8)
        if is_dir:
            stage.mkdir(mode=0o700)
        else:
            stage.touch(mode=0o600)
        try:
            try:
                prepare(stage)
                mounts.move(stage, self.host.joinpath(*parts))
            except BaseException:
                # Whatever prepare had mounted before it failed goes, so the
                # stage can be removed and the real error is the one raised.
                for point in mounts.mounts_under(stage):
                    mounts.unmount(point, lazy=True)
                raise
        finally:
            if is_dir:
                stage.rmdir()
            else:
                stage.unlink()
        return "/".join(parts)

    def mount_overlay(self, rel: str, lower: list[Path], upper: Path, work: Path,
                      idmap: tuple[list[Range], list[Range]] | None = None) -> str:
        """A container's root filesystem. With ``idmap`` (uid and gid ranges,
        a pod with a user namespace of its own), the layers and the upper
        directory are id-mapped binds below the overlay (overlayfs cannot be
        id-mapped itself; its layers can): QEMU's 9p server, and so the
        guest, see the files owned by the pod's ids, and what is written is
        shifted back to the image's ids on disk."""
        if upper.parent != work.parent:
            raise mounts.MountError("the upper and work directories must share a parent")

        def prepare(stage: Path) -> None:
            if idmap is None:
                mounts.mount("overlay", stage, "overlay", SHARE_FLAGS,
                             f"lowerdir={':'.join(map(str, lower))},upperdir={upper},"
                             f"workdir={work}")
                return
            binds: list[Path] = []
            try:
                with userns.mapped(*idmap) as fd:
                    for source in [*lower, upper.parent]:
                        target = self.staging / secrets.token_hex(8)
                        target.mkdir(mode=0o700)
                        binds.append(target)
                        mounts.idmapped_bind(source, target, fd)
                mapped_rw = binds[-1]
                mounts.mount("overlay", stage, "overlay", SHARE_FLAGS,
                             f"lowerdir={':'.join(map(str, binds[:-1]))},"
                             f"upperdir={mapped_rw / upper.name},workdir={mapped_rw / work.name}")
            finally:
                # The overlay holds its layers itself: the binds go at once.
                for target in binds:
                    if mounts.mounts_under(target):
                        mounts.unmount(target, lazy=True)
                    target.rmdir()

        return self._place(rel, prepare)

    def mount_image(self, rel: str, layers: list[Path], sub_path: str = "") -> str:
        """An image volume: the image's layers as one read-only tree (an overlay
        without an upper directory; a read-only bind for a single layer).
        Returns the path for the guest, ``sub_path`` inside it, which must exist
        in the image and is looked up without following the image's symlinks."""
        if not layers:
            raise mounts.MountError("the image has no layers to mount")

        def prepare(stage: Path) -> None:
            if len(layers) == 1:
                mounts.bind(layers[0], stage, readonly=True, flags=SHARE_FLAGS)
                mounts.set_propagation(stage, MS_PRIVATE)
            else:
                mounts.mount("overlay", stage, "overlay", SHARE_FLAGS | mounts.MS_RDONLY,
                             f"lowerdir={':'.join(map(str, layers))}")
            if sub_path:
                try:
                    os.close(safefs.open_beneath(stage, sub_path, os.O_PATH))
                except (OSError, safefs.UnsafePathError) as exc:
                    why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno \
                        else "a symlink on the way (not followed)"
                    raise NotFoundError(f"image_sub_path: {sub_path!r} is not in the image: "
                                        f"{why}") from None

        placed = self._place(rel, prepare)
        return f"{placed}/{sub_path.rstrip('/')}" if sub_path else placed

    def bind(self, rel: str, source: Path, readonly: bool, follow_host: bool = False,
             recursive_readonly: bool = False) -> str:
        """A host directory or file for the guest. ``follow_host``: mounts the
        host makes later under ``source`` show through (HostToContainer).
        ``readonly`` is the top mount's (the mounts below keep their own mode,
        as runc's), ``recursive_readonly`` every one's. Every mount of the bind is
        nodev and nosuid: QEMU opens what the guest names, and a device node on
        some host submount must not become a host device opened for the guest."""
        def prepare(stage: Path) -> None:
            mounts.bind(source, stage, readonly=readonly, flags=SHARE_FLAGS)
            mounts.set_attributes(stage, mounts.MOUNT_ATTR_NODEV | mounts.MOUNT_ATTR_NOSUID
                                  | (mounts.MOUNT_ATTR_RDONLY if recursive_readonly else 0))
            # Private or slave: a shared mount may not be moved into mounts/.
            mounts.set_propagation(stage, MS_SLAVE if follow_host else MS_PRIVATE)

        placed = self._place(rel, prepare, is_dir=source.is_dir())
        if not follow_host:
            self._submounts_to_the_jail_only(placed)
        return placed

    def _submounts_to_the_jail_only(self, rel: str) -> None:
        """The copies of a volume's submounts leave the host's mount namespace;
        QEMU's (the jail's) stay. While the host held copies, it could not
        remove the directory a submount sits on (EBUSY) as long as the
        container lived; with copies in another namespace only, the kernel
        lets it and detaches them, as it does a runc container's.

        An unmount propagates along its parent's propagation, so the bind's
        two host copies (under mounts/ and shared/) are made private first,
        every mount in them: the jail's copies lose their master and stay, and
        unmounting the submounts below the host copies reaches nothing else.
        Not for binds that follow the host (HostToContainer): those need the
        propagation."""
        host_top = (self.host / rel).resolve()
        below = [p for p in mounts.mounts_under(host_top) if p != host_top]
        if not below:
            return
        view_top = self.view.resolve() / rel
        # The whole trees, submounts too: a detached submount's own children
        # would otherwise take their jail copies with them.
        for top in (host_top, view_top):
            mounts.set_propagation(top, MS_PRIVATE, recursive=True)
        # Detaching the outermost submounts takes everything mounted below them.
        outermost = [p for p in below if not any(q in p.parents for q in below)]
        for point in outermost:
            for copy in (point, view_top / point.relative_to(host_top)):
                mounts.unmount(copy, lazy=True)

    def release(self, name: str) -> None:
        """Unmount and delete ``mounts/<name>`` (a container's part of the share)."""
        path = self.host / _component(name)
        mounts.unmount_all(path)
        # A private bind's copy in shared/ (see _submounts_to_the_jail_only)
        # no longer goes with its original; without one this finds nothing.
        mounts.unmount_all(self.view / _component(name))
        left = mounts.mounts_under(path)
        if left:
            raise mounts.MountError(f"refusing to delete {path}: still mounted: "
                                    + ", ".join(map(str, left)))
        safefs.remove_tree(path)
