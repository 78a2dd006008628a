"""A test hook: ``VMRT_CRASH_AT=OP:STEP`` makes vmrtd SIGKILL itself at that step.

It is how the fault tests (and ``bench/crash_steps.py``) show that a vmrtd
killed at any point of RunPodSandbox, CreateContainer or StopPodSandbox
leaves a state that the restarted vmrtd finishes: nothing leaks, and the pod
either works or is cleanly NOTREADY. Unset (always, outside those tests) it
costs one dictionary lookup per step.
"""

from __future__ import annotations

import logging
import os
import signal

from vmrt.errors import VmrtError

ENV = "VMRT_CRASH_AT"

# In the order each operation reaches them.
STEPS: dict[str, tuple[str, ...]] = {
    "run": ("recorded", "netns", "network", "vm-started", "configured", "ready"),
    "create": ("intent", "rootfs", "agent-created", "recorded"),
    "stop": ("killed", "vm-gone", "network-down"),
}

log = logging.getLogger(__name__)


def configured() -> str:
    """The step named in the environment ("" for none); a name that is not a step is an error."""
    value = os.environ.get(ENV, "")
    if not value:
        return ""
    op, _, step = value.partition(":")
    if step not in STEPS.get(op, ()):
        known = ", ".join(f"{o}:{s}" for o, steps in STEPS.items() for s in steps)
        raise VmrtError(f"{ENV}={value!r} is not a step; the steps are {known}")
    return value


def reached(op: str, step: str) -> None:
    """Die here, at once and without cleaning up, if this is the configured step."""
    assert step in STEPS[op], f"{op}:{step} is not a crash step"
    if os.environ.get(ENV) == f"{op}:{step}":
        log.critical("%s=%s: killing vmrtd here", ENV, f"{op}:{step}")
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
