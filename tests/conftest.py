"""Shared fixtures: the guest image, leak checks, failure artifacts."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import leaks

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Fixtures look at item.rep_call to learn whether the test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def vm_host() -> None:
    """Skip-free gate for VM tests: they need root and QEMU, and say so."""
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (bind mounts, QEMU sockets under /run)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("VM tests need qemu-system-x86_64 (make test installs it)")


@pytest.fixture(scope="session")
def guest_image(vm_host: None):  # type: ignore[no-untyped-def]
    from vmrt.guest.image import GuestImage, GuestImageError, default_image_dir

    root = Path(os.environ.get("VMRT_ROOT", "/var/lib/vmrt"))
    try:
        return GuestImage.load(default_image_dir(root).resolve())
    except GuestImageError as exc:
        pytest.fail(f"{exc} (make test builds it)")


@pytest.fixture
def state_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A private vmrt state dir, checked for leftovers after the test."""
    state = tmp_path / "state"
    state.mkdir()
    yield state
    found = leaks.find(state)
    leaks.clean(state)
    assert not found, f"the test left resources behind: {found}"


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    directory = ARTIFACTS / request.node.name.replace("/", "_")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def dump_console(name: str, path: Path) -> None:
    """Print a guest console into the test output (and keep a copy)."""
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.console.log").write_text(text)
    print(f"\n----- guest console of {name} -----\n{text[-8000:]}\n-----", file=sys.stderr)
