"""Test-only behaviour, off unless the kernel command line turns it on.

``vmrt.test_forged_events=1``: the agent reads lines ``CONTAINER_ID EXIT_CODE``
from the FIFO ``FORGE_FIFO`` and publishes each as an exit event of that
container, exactly as it would a real one. It lets a test play the hostile
guest that sends the host lies over the real channel; a guest that owns its
kernel can do the same without this hook, so it opens nothing new.

The same setting opens ``SERIAL_FIFO``: bytes written to it go out on the
agent's serial line as they are, outside any frame (what a guest that owns
the port could write), for tests of the host's relay.

``vmrt.test_clock_offset=SECONDS``: the agent moves the guest's clock by that
much when it starts, so a VM template saved now has the clock of one saved
SECONDS ago (a test of what a clone's clock is after restore).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from vmrt.agent.events import EventBus
from vmrt.agent.model import ExitEvent
from vmrt.agent.proctable import ExitInfo

log = logging.getLogger(__name__)

FORGE_FIFO = "/run/vmrt/test/forge-event"
SERIAL_FIFO = "/run/vmrt/test/forge-serial"


def open_serial_forger() -> int:
    """The read end of SERIAL_FIFO, non-blocking and never at EOF (O_RDWR)."""
    os.makedirs(os.path.dirname(SERIAL_FIFO), exist_ok=True)
    if not os.path.exists(SERIAL_FIFO):
        os.mkfifo(SERIAL_FIFO, 0o600)
    log.warning("test hook: raw bytes from %s go out on the serial line", SERIAL_FIFO)
    return os.open(SERIAL_FIFO, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def start_event_forger(events: EventBus) -> None:
    os.makedirs(os.path.dirname(FORGE_FIFO), exist_ok=True)
    if not os.path.exists(FORGE_FIFO):
        os.mkfifo(FORGE_FIFO, 0o600)
    threading.Thread(target=_forge, args=(events,), daemon=True, name="forger").start()


def _forge(events: EventBus) -> None:
    while True:
        with open(FORGE_FIFO) as fifo:
            for line in fifo:
                container_id, _, code = line.strip().partition(" ")
                info = ExitInfo(exit_code=int(code or "0"), signal=0,
                                finished_at_ns=time.time_ns())
                log.warning("test hook: forging an exit of %s", container_id)
                events.publish(ExitEvent(container_id, "", info, time.time_ns(), False))


def offset_clock(seconds: int) -> None:
    if seconds:
        time.clock_settime(time.CLOCK_REALTIME, time.time() + seconds)
        log.warning("test hook: the guest's clock moved by %d s", seconds)
