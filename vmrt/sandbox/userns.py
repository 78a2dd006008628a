"""A user namespace with a given mapping, held open by a file descriptor:
what an id-mapped mount is made with (``mounts.idmap``).

The namespace is made by a child (util-linux ``unshare --user``, run with a
fixed argv) that only waits; vmrt writes its maps from outside, as root may,
opens ``/proc/PID/ns/user`` and ends the child. The fd keeps the namespace.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

from vmrt.errors import VmrtError

WAIT = 5.0


class UsernsError(VmrtError):
    pass


Range = tuple[int, int, int]  # (inside, outside, length), as in /proc/PID/uid_map
# The id on disk that host root's own writes get through a pod's id-mapped
# layers (overlayfs's work directory, QEMU's 9p server before it chowns a new
# file to the guest's owner): the last valid id, which no mapping of a pod
# uses (validate.ID_LIMIT keeps pods' ranges below it).
HOST_ROOT_ON_DISK = (1 << 32) - 2


def layer_map(host_id: int, length: int) -> list[Range]:
    """The mapping for a pod's layers: on-disk ids 0..length-1 seen as the
    pod's host_id.., and host root kept writing (see HOST_ROOT_ON_DISK)."""
    ranges = [(0, host_id, length)]
    if not host_id <= 0 < host_id + length:
        ranges.append((HOST_ROOT_ON_DISK, 0, 1))
    return ranges


@contextlib.contextmanager
def mapped(uid: list[Range], gid: list[Range]) -> Iterator[int]:
    """A user namespace fd whose uid and gid maps are these ranges."""
    child = subprocess.Popen(["unshare", "--user", "--", "sleep", "30"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        own = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if os.readlink(f"/proc/{child.pid}/ns/user") != own:
                    break
            except OSError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()  # read its stderr only once it has ended
                child.wait()
                error = child.stderr.read().decode(errors="replace") if child.stderr else ""
                raise UsernsError(f"cannot make a user namespace: {error.strip() or 'timed out'}")
            time.sleep(0.002)
        for name, ranges in (("uid_map", uid), ("gid_map", gid)):
            with open(f"/proc/{child.pid}/{name}", "w") as f:  # one write, as the kernel wants
                f.write("".join(f"{inside} {outside} {length}\n"
                                for inside, outside, length in ranges))
        fd = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        child.kill()
        child.wait()
        if child.stderr:
            child.stderr.close()
    try:
        yield fd
    finally:
        os.close(fd)
