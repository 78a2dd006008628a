"""ruff and mypy are clean: the project's rule for every commit, enforced in CI."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "vmrt", "tests", "bench",
                             "guest-image"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "vmrt"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
