"""A container's bundle: the directory crun runs it from, and its rootfs mounts.

Checking the OCI spec and where the rootfs comes from, clearing a bundle an
earlier attempt left behind, mounting the rootfs (a bind of the share, or
an overlay over it with a tmpfs upper layer), and undoing those mounts and
the directory when the container goes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from vmrt.agent.errors import CommandFailed, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

Mount = Callable[[list[str]], None]


def parse_spec(spec_json: bytes) -> dict[str, Any]:
    try:
        spec = json.loads(spec_json)
    except ValueError as exc:
        raise InvalidArgument(f"the OCI spec is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise InvalidArgument("the OCI spec has no process object")
    for key in ("root", "linux"):
        spec.setdefault(key, {})
        if not isinstance(spec[key], dict):
            raise InvalidArgument(f"the OCI spec's {key!r} must be an object")
    if not isinstance(spec.get("mounts", []), list):
        raise InvalidArgument("the OCI spec's 'mounts' must be a list")
    return spec


def rootfs_source(share_dir: str, share_path: str) -> str:
    """The rootfs directory the host named, which must be inside the sandbox share."""
    source = os.path.normpath(os.path.join(share_dir, share_path.lstrip("/")))
    if not source.startswith(share_dir + "/"):
        raise InvalidArgument(f"rootfs path {share_path!r} leaves the sandbox share")
    if not os.path.isdir(source):
        raise InvalidArgument(f"rootfs {share_path!r} is not a directory in the sandbox share")
    return source


def mounts_under(directory: str) -> list[str]:
    prefix = directory.rstrip("/")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def clear_stale(bundle: str) -> None:
    """A bundle left by an earlier attempt whose cleanup failed."""
    if not os.path.exists(bundle):
        return
    if mounts_under(bundle):
        raise FailedPrecondition(f"{bundle} still has mounts from an earlier container")
    shutil.rmtree(bundle)


def prepare_rootfs(bundle: str, source: str, guest_overlay: bool, mount: Mount,
                   mounts: list[str]) -> None:
    """Mount the rootfs at ``bundle``/rootfs; each mount made is appended to ``mounts``
    at once, so a failure part way leaves a list that undoes what was done."""
    rootfs = os.path.join(bundle, "rootfs")
    os.mkdir(rootfs)
    if not guest_overlay:
        mount(["--bind", source, rootfs])
        mounts.append(rootfs)
        return
    # The container may write; the host's directory must not change.
    scratch = os.path.join(bundle, "scratch")
    os.mkdir(scratch)
    mount(["-t", "tmpfs", "-o", "mode=0700", "tmpfs", scratch])
    mounts.append(scratch)
    os.mkdir(os.path.join(scratch, "upper"))
    os.mkdir(os.path.join(scratch, "work"))
    options = f"lowerdir={source},upperdir={scratch}/upper,workdir={scratch}/work"
    mount(["-t", "overlay", "-o", options, "overlay", rootfs])
    mounts.append(rootfs)


def unmount_all(mounts: list[str], mount: Mount) -> None:
    """Newest first; a busy mount is detached lazily."""
    for path in reversed(mounts):
        try:
            mount(["-u", path])
        except CommandFailed:
            try:
                mount(["-u", "-l", path])
            except CommandFailed as exc:
                log.warning("unmount %s: %s", path, exc)


def remove(bundle: str) -> None:
    """Delete the bundle directory, unless something is still mounted in it."""
    left = mounts_under(bundle)
    if left:
        # Deleting through a mount would delete what it shows: for a
        # bind of the share, the host's files. Leave the bundle.
        log.error("not deleting %s: still mounted: %s", bundle, ", ".join(left))
    else:
        shutil.rmtree(bundle, ignore_errors=True)
