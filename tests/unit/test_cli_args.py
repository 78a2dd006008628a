"""The CLI's argument handling: crictl's habit of the endpoint before the verb."""

from __future__ import annotations

import pytest

from vmrt.cli import cri_commands
from vmrt.cli.main import build_parser


def resolved(argv: list[str]) -> str:
    return str(build_parser().parse_args(argv).runtime_endpoint)


def test_the_endpoint_may_come_before_or_after_the_verb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTAINER_RUNTIME_ENDPOINT", raising=False)
    assert resolved(["-r", "unix:///a.sock", "pods"]) == "unix:///a.sock"
    assert resolved(["--runtime-endpoint", "unix:///a.sock", "ps", "-a"]) == "unix:///a.sock"
    assert resolved(["pods", "-r", "unix:///b.sock"]) == "unix:///b.sock"
    assert resolved(["-r", "unix:///a.sock", "pods", "-r", "unix:///b.sock"]) == \
        "unix:///b.sock"  # the verb's own wins
    assert resolved(["pods"]) == cri_commands.DEFAULT_ENDPOINT
    monkeypatch.setenv("CONTAINER_RUNTIME_ENDPOINT", "unix:///env.sock")
    assert resolved(["pods"]) == "unix:///env.sock"
    assert resolved(["-r", "unix:///a.sock", "pods"]) == "unix:///a.sock"
