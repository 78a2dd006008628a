"""A short run of the CRI fuzzer (tests/fuzz/cri.py) against a real vmrtd;
bench/fuzz_cri.py is the long one."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.cri.conftest import _daemon, _short_dir
from tests.fuzz.cri import Fuzzer, HostSnapshot, allowed_paths, new_scratch

pytestmark = pytest.mark.vm

EXAMPLES = int(os.environ.get("VMRT_FUZZ_EXAMPLES", "500"))


def test_fuzzed_cri_requests(guest_image, request: pytest.FixtureRequest) -> None:  # type: ignore[no-untyped-def]
    scratch = new_scratch()
    try:
        for base in _short_dir():
            for daemon in _daemon(base, guest_image, request):
                before = HostSnapshot.take()
                fuzzer = Fuzzer(daemon, scratch)
                fuzzer.prepare()
                outcome = fuzzer.run(EXAMPLES)
                assert daemon.proc is not None and daemon.proc.poll() is None, "vmrtd died"
                changes = before.changes(HostSnapshot.take(), allowed_paths(daemon, scratch))
                summary = outcome.summary()
                print(summary["codes"])
                assert outcome.requests >= EXAMPLES
                assert not outcome.problems, "\n".join(outcome.problems[:20])
                assert not changes, changes
                # Requests got past the checks too, not only refused at the door.
                assert summary["codes"].get("OK", 0) > EXAMPLES // 10, summary["codes"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
