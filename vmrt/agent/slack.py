"""Timer slack: the agent's own timeouts may fire late, its children's not.

Under TCG every wake-up of an idle guest is QEMU's work, and the agent's
threads (gRPC's core among them) wake on short timeouts dozens of times a
second. A timer slack of AGENT_SLACK lets the guest kernel run those
timeouts up to that much later, so that they come together and less often;
events (bytes on a socket, a process's end) still wake at once. The
processes the agent starts (crun, and so the containers) get the kernel's
default slack back: a container's ``sleep 0.01`` must not take 0.2 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterator

from vmrt.agent.libc import LIBC

log = logging.getLogger(__name__)

PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
AGENT_SLACK_NS = 200_000_000


def _set(ns: int) -> None:
    if LIBC.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_TIMERSLACK)")


def current() -> int:
    return int(LIBC.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))


# What the kernel gave PID 1 (50 us), read before anything changes it. Not
# prctl's 0: that means "the thread's default", which a thread takes from
# its creator's slack at the time, so the agent's own threads' is large.
KERNEL_SLACK_NS = current()


def relax_agent() -> None:
    """This thread and the threads it starts later, and every thread already
    running in this process, get the agent's slack."""
    _set(AGENT_SLACK_NS)
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/timerslack_ns",
                                                "w") as f:
            f.write(str(AGENT_SLACK_NS))


@contextlib.contextmanager
def default_for_children() -> Iterator[None]:
    """Around a spawn: the child inherits the kernel's slack (and takes it as
    its own default)."""
    mine = current()
    _set(KERNEL_SLACK_NS)
    try:
        yield
    finally:
        _set(mine)
