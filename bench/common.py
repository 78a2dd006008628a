"""What every benchmark's command line shares."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def parser(doc: str, result: str, *, root: bool = True) -> argparse.ArgumentParser:
    """An argument parser with `--output` (JSON, bench/results/RESULT by
    default) and, unless the benchmark needs no guest image, `--root`."""
    parsed = argparse.ArgumentParser(description=doc.splitlines()[0])
    if root:
        parsed.add_argument("--root", default="/var/lib/vmrt",
                            help="vmrt root holding the guest image (default %(default)s)")
    parsed.add_argument("--output", type=Path, default=RESULTS / result)
    return parsed
