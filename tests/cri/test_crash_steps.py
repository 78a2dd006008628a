"""vmrtd SIGKILLed in the middle of RunPodSandbox, CreateContainer and
StopPodSandbox: after the restart nothing leaks and the pod works or is
cleanly NOTREADY. One step of each operation here; bench/crash_steps.py runs
every step (vmrt/crashpoint.py lists them)."""

from __future__ import annotations

import pytest

from tests.cri.conftest import Daemon
from tests.helpers.crashsteps import crash_and_recover

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(("op", "step", "pod"), [
    # The VM runs, the pod is not ready: recovery kills it and undoes the network.
    ("run", "vm-started", "gone"),
    # The guest has the container, no record does: recovery removes it.
    ("create", "agent-created", "ready"),
    # The VM is gone, the network not yet: the next StopPodSandbox finishes it.
    ("stop", "vm-gone", "notready"),
])
def test_vmrtd_killed_mid_operation(vmrtd: Daemon, op: str, step: str, pod: str) -> None:
    result = crash_and_recover(vmrtd, op, step)
    assert result["call"] == "UNAVAILABLE", result  # vmrtd died under the call
    assert result["pod"] == pod, result
    if pod == "ready":
        assert result["works"] and result["containers"] == [], result  # it never was
    if pod == "notready":
        assert "stopped" in result["reason"], result
    assert not result["strays"] and not result["leaks"], result
