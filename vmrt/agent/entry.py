"""What guest-image/init runs: the agent, with the imports it never uses deferred.

``import grpc`` imports ``grpc.aio`` (its ``__init__`` does, unconditionally),
and gRPC's Cython core imports ``asyncio`` at module level. The agent's
server is gRPC's synchronous one and uses neither, but under TCG importing
them is about a fifth of the agent's start-up (asyncio alone measured
0.27 s of a cold boot; see docs/design-notes.md, "Boot time"). So before
anything imports grpc, each gets a stand-in module in ``sys.modules``: the
first attribute anybody asks of it imports the real module (which then
replaces the stand-in) and answers from it. Nothing changes for code that
does use them; it pays the import on first use instead of at boot.

``importlib.util.LazyLoader`` is not enough here: on Python 3.11 every
``import`` statement that finds a lazy module asks for its ``__spec__``,
which loads it, and ``import grpc`` does exactly that.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

DEFERRED = ("asyncio", "grpc.aio")
_STANDINS: dict[str, types.ModuleType] = {}


def defer(name: str) -> None:
    """A stand-in for module ``name`` until it is first used (nothing if it is imported already)."""
    if name in sys.modules:
        return
    standin = types.ModuleType(name, f"stand-in for {name}: imported on first use")

    def __getattr__(attr: str) -> Any:
        if sys.modules.get(name) is standin:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)

    standin.__getattr__ = __getattr__  # type: ignore[method-assign]
    _STANDINS[name] = standin
    sys.modules[name] = standin


def is_deferred(name: str) -> bool:
    """Whether ``name`` is still a stand-in (nothing has used it)."""
    return name in _STANDINS and sys.modules.get(name) is _STANDINS[name]


def run() -> None:
    for name in DEFERRED:
        defer(name)
    from vmrt.agent.__main__ import main

    main()
