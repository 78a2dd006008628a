"""Several ``--host`` flags: a listing run on each node, merged.

Tables get a HOST column in front; JSON and YAML become ``{"hosts": {HOST:
the node's document}}``. A node that fails is a row of its own (and exit
code 125), so one node down does not hide the others.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Callable
from typing import Any

import yaml

from vmrt.errors import VmrtError

LISTINGS = {("pods",), ("ps",), ("stats",), ("tenant", "ls")}


def verb_of(args: argparse.Namespace) -> tuple[str, ...]:
    if args.command == "tenant":
        return ("tenant", str(args.tenant_command))
    return (str(args.command),)


def run_on_each(args: argparse.Namespace, hosts: list[str],
                run: Callable[[argparse.Namespace], int]) -> int:
    if verb_of(args) not in LISTINGS:
        raise VmrtError(f"several --host flags: only the listings "
                        f"({', '.join(' '.join(v) for v in sorted(LISTINGS))}) run on each node")
    output = getattr(args, "output", "table")
    outputs: dict[str, str] = {}
    failed: dict[str, str] = {}
    for host in hosts:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                run(argparse.Namespace(**{**vars(args), "host": host}))
        except VmrtError as exc:
            failed[host] = str(exc)
            continue
        outputs[host] = captured.getvalue()
    if output == "table":
        _table(outputs, failed)
    else:
        merged: dict[str, Any] = {host: (json.loads(text) if output == "json"
                                         else yaml.safe_load(text))
                                  for host, text in outputs.items()}
        merged.update({host: {"error": error} for host, error in failed.items()})
        document = {"hosts": merged}
        print(json.dumps(document, indent=2) if output == "json"
              else yaml.safe_dump(document, sort_keys=False), end="\n" if output == "json" else "")
    return 125 if failed else 0


def _table(outputs: dict[str, str], failed: dict[str, str]) -> None:
    width = max(len("HOST"), *(len(h) for h in [*outputs, *failed]))
    header_done = False
    for host, text in outputs.items():
        lines = text.splitlines()
        if not lines:
            continue
        if not header_done:
            print(f"{'HOST':<{width}}  {lines[0]}")
            header_done = True
        for line in lines[1:]:
            print(f"{host:<{width}}  {line}")
    for host, error in failed.items():
        print(f"{host:<{width}}  error: {error}")
