"""What the benchmarks share: their command line, the guest image, a daemon."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.cri.conftest import Daemon
from tests.helpers import leaks
from vmrt.guest.image import GuestImage, default_image_dir

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


def write_result(path: Path, result: object) -> int:
    """The benchmark's JSON, to ``path`` and to stdout; the exit status."""
    text = json.dumps(result, indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text, end="")
    return 0


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0.5, 0.99) of ``samples`` by rank; 0.0 for none."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def guest_image(root: str) -> GuestImage:
    """The default guest image under a vmrt root."""
    return GuestImage.load(default_image_dir(root).resolve())


@contextlib.contextmanager
def vmrtd(image: GuestImage, extra_config: str = "") -> Iterator[Daemon]:
    """A vmrtd of the benchmark's own, in a scratch directory; every pod it
    made is removed afterwards, also when the run fails."""
    base = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))
    daemon = Daemon(base, image.directory, extra_config=extra_config)
    try:
        daemon.start()
        yield daemon
    except BaseException:
        daemon.dump("bench")  # vmrtd's log and the consoles, in test-artifacts/
        raise
    finally:
        daemon.cleanup()
        leaks.remove_cgroup_parent(daemon.cgroup_parent)
        shutil.rmtree(base, ignore_errors=True)
