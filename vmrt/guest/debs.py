"""Debian packages for the guest image: resolve, download once, extract."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import VmrtError


class PackageError(VmrtError):
    pass


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PackageError(f"{argv[0]} is not installed; the guest image build needs apt") from None
    if proc.returncode != 0:
        raise PackageError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _paragraphs(names: list[str]) -> dict[str, dict[str, str]]:
    """apt-cache's candidate record of each package, in one call (each call
    reads all the package lists, ~0.6 s)."""
    text = _run(["apt-cache", "show", "--no-all-versions", *names])
    records: dict[str, dict[str, str]] = {}
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if not line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key, value.strip())
        if "Package" in fields and "Version" in fields:
            records.setdefault(fields["Package"], fields)
    missing = [n for n in names if n not in records]
    if missing:
        raise PackageError(
            f"Debian package(s) {', '.join(missing)} not in the apt lists; "
            "run 'apt-get update' and retry"
        )
    return records


def _package(fields: dict[str, str]) -> Package:
    return Package(name=fields["Package"], version=fields["Version"],
                   sha256=fields.get("SHA256", ""))


def resolve(kernel_metapackage: str, names: list[str]) -> list[Package]:
    """Candidate versions: the kernel the metapackage depends on, then ``names``."""
    records = _paragraphs([kernel_metapackage, *names])
    depends = records[kernel_metapackage].get("Depends", "")
    kernel = depends.split(",")[0].split("|")[0].split("(")[0].strip()
    if not kernel:
        raise PackageError(f"metapackage {kernel_metapackage} has no dependency to follow")
    kernel_record = _paragraphs([kernel])[kernel]
    return [_package(kernel_record), *(_package(records[n]) for n in names)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(package: Package, cache_dir: Path) -> Path:
    """The .deb of ``package``, from the cache or downloaded with apt-get."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{package.name}_{package.sha256 or package.version}.deb"
    if cached.exists() and (not package.sha256 or _sha256(cached) == package.sha256):
        return cached
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        subprocess_dir = Path(tmp)
        try:
            subprocess.run(
                ["apt-get", "download", "-q", f"{package.name}={package.version}"],
                cwd=subprocess_dir, capture_output=True, text=True, check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise PackageError(
                f"apt-get download {package.name}={package.version} failed: "
                f"{exc.stderr.strip()}"
            ) from None
        debs = list(subprocess_dir.glob("*.deb"))
        if len(debs) != 1:
            raise PackageError(f"apt-get download {package.name} produced {len(debs)} files")
        if package.sha256 and _sha256(debs[0]) != package.sha256:
            raise PackageError(f"{package.name} {package.version}: sha256 does not match apt's")
        shutil.move(debs[0], cached)
    return cached


def extract(deb: Path, destination: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(destination)])
