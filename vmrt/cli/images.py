"""``vmrt images|pull|rmi`` and ``vmrt image inspect|import``: the node's image store.

These work on the store under ``--root`` directly, like ``ctr images``: no
daemon is needed, and the store's file lock keeps them safe beside a running
vmrtd (which notices the changes).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from dataclasses import asdict
from pathlib import Path

from vmrt.cli.cri_client import print_data, print_table, size
from vmrt.config import load
from vmrt.errors import InvalidArgumentError
from vmrt.images.archive import import_path
from vmrt.images.registry import Credentials, RegistryClient
from vmrt.images.store import ImageRecord, ImageStore
from vmrt.sandbox.persist import read_json

DEFAULT_CONFIG = Path("/etc/vmrt/config.toml")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("images", help="list images in the node's store")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.set_defaults(func=_images)
    p = sub.add_parser("pull", help="pull an image from a registry (through mirrors)")
    p.add_argument("reference")
    p.add_argument("--config", type=Path, help="vmrtd config, for its registry mirrors")
    p.add_argument("--creds", default="", metavar="USER[:PASSWORD]")
    p.set_defaults(func=_pull)
    p = sub.add_parser("rmi", help="remove images (by id: all its names; by name: that name)")
    p.add_argument("references", nargs="+")
    p.set_defaults(func=_rmi)
    image = sub.add_parser("image", help="inspect or import images")
    actions = image.add_subparsers(dest="action", required=True)
    p = actions.add_parser("inspect", help="an image's record and config, as JSON (or -o yaml)")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default="json")
    p.add_argument("reference")
    p.set_defaults(func=_inspect)
    p = actions.add_parser("import", help="import an OCI layout or a docker-archive tar")
    p.add_argument("path", type=Path)
    p.add_argument("--tag", default="", help="name for the image (default: from the archive)")
    p.set_defaults(func=_import)


def _store(args: argparse.Namespace, config_path: Path | None = None) -> ImageStore:
    config = load(config_path or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None))
    root = Path(args.root if args.root else config.storage.root)
    mirrors = {host: m.endpoints for host, m in config.registry.mirrors.items()}
    return ImageStore(root, RegistryClient(mirrors))


def _layers_in_use(root: Path) -> set[str]:
    used: set[str] = set()
    for record in (root / "pods").glob("*/containers/*.json"):
        try:
            used.update(read_json(record).get("layers", []))
        except (OSError, ValueError):
            continue
    return used


def _images(args: argparse.Namespace) -> int:
    images = _store(args).images()
    if args.output != "table":
        print_data([asdict(i) for i in images], args.output)
        return 0
    rows = []
    for image in images:
        for name in image.repo_tags or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":")
            rows.append([repo, tag, image.id.removeprefix("sha256:")[:13], size(image.size)])
    print_table(["IMAGE", "TAG", "IMAGE ID", "SIZE"], rows)
    return 0


class _Progress:
    """A one-line progress bar on a terminal; occasional lines otherwise."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def bytes(self, received: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else 2.0) and received < total:
            return
        self.last = now
        rate = received / max(now - self.started, 1e-6)
        fraction = received / total if total else 1.0
        bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
        line = (f"{self.name}: [{bar}] {size(received)}/{size(total)} "
                f"{size(int(rate))}/s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def done(self, image: ImageRecord) -> None:
        if self.tty:
            print(file=sys.stderr)
        print(f"{self.name}: {image.id} ({size(image.size)} in "
              f"{time.monotonic() - self.started:.1f}s)", file=sys.stderr)


def _pull(args: argparse.Namespace) -> int:
    store = _store(args, args.config)
    user, _, password = args.creds.partition(":")
    if user and not password and sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
    progress = _Progress(args.reference)

    async def run() -> ImageRecord:
        try:
            return await store.pull(args.reference, Credentials(user, password),
                                    progress=lambda message: None, on_bytes=progress.bytes)
        finally:
            assert store.registry is not None
            await store.registry.close()

    image = asyncio.run(run())
    progress.done(image)
    print(image.id)
    return 0


def _rmi(args: argparse.Namespace) -> int:
    store = _store(args)
    in_use = _layers_in_use(store.dir.parent)
    for reference in args.references:
        store.remove(reference, in_use)
        print(reference)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    store = _store(args)
    image = store.resolve(args.reference)
    print_data({**asdict(image), "layer_dirs": [str(p) for p in store.layer_dirs(image)]},
               args.output)
    return 0


def _import(args: argparse.Namespace) -> int:
    if not args.path.exists():
        raise InvalidArgumentError(f"{args.path} does not exist")
    for image in import_path(_store(args), args.path, args.tag):
        print(f"{', '.join(image.repo_tags) or '<untagged>'} {image.id}")
    return 0

