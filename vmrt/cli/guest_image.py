"""``vmrt guest-image build|show|verify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmrt.guest.builder import DEFAULT_RECIPE, Builder
from vmrt.guest.image import GuestImage, default_image_dir


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    parser = sub.add_parser("guest-image", help="build or inspect the guest kernel + initramfs")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build the guest image (idempotent)")
    build.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                       help="the recipe directory (default: %(default)s)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(func=_build)
    show = actions.add_parser("show", help="print the default image's manifest")
    show.set_defaults(func=_show)
    verify = actions.add_parser("verify", help="hash-check every file of the default image")
    verify.set_defaults(func=_verify)


def _build(args: argparse.Namespace) -> int:
    builder = Builder(Path(args.root), args.recipe,
                      progress=lambda message: print(message, file=sys.stderr, flush=True))
    image = builder.build(force=args.force)
    print(image.directory)
    return 0


def _show(args: argparse.Namespace) -> int:
    image = GuestImage.load(default_image_dir(args.root).resolve())
    json.dump({"directory": str(image.directory), **image.manifest}, sys.stdout, indent=1)
    print()
    return 0


def _verify(args: argparse.Namespace) -> int:
    image = GuestImage.load(default_image_dir(args.root).resolve())
    image.verify()
    print(f"{image.directory}: ok")
    return 0
