"""The CLI's argument handling: crictl's habit of the endpoint before the verb,
an example in every --help, shell completion."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from vmrt.cli import cri_commands
from vmrt.cli.completion import script
from vmrt.cli.examples import EXAMPLES, verbs
from vmrt.cli.main import build_parser, main


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


def test_every_verb_has_an_example_that_parses() -> None:
    parser = build_parser()
    for path, sub in verbs(parser):
        assert "example" in sub.format_help(), f"vmrt {' '.join(path)} --help has no example"
    for example in EXAMPLES.values():
        if example.startswith("vmrt "):
            parser.parse_known_args(shlex.split(example)[1:])  # exits on a bad example


def test_the_daemons_options_reach_it_whatever_their_order() -> None:
    for argv in (["daemon", "--config", "x.toml", "--debug"],
                 ["-r", "unix:///a.sock", "daemon", "--debug", "--config", "x.toml"]):
        args, unknown = build_parser().parse_known_args(argv)
        assert sorted(unknown + args.daemon_args) == ["--config", "--debug", "x.toml"]
    with pytest.raises(SystemExit):
        main(["pods", "--no-such-option"])


@pytest.mark.parametrize(("line", "offered", "not_offered"), [
    ("vmrt po", {"pods", "port-forward"}, {"ps"}),
    ("vmrt pods -", {"-o", "--output", "-r"}, {"--all"}),
    ("vmrt pods -o ", {"table", "json", "yaml"}, set()),
    ("vmrt image i", {"inspect", "import"}, {"images"}),
    ("vmrt tenant ", {"ls", "rm", "check"}, {"pods"}),
    ("vmrt run --pull ", {"missing", "always", "never"}, set()),
    ("vmrt --tenant blue ru", {"run", "run-vm", "runp"}, set()),
])
def test_bash_completion_from_the_parser(tmp_path: Path, line: str, offered: set[str],
                                         not_offered: set[str]) -> None:
    completion = tmp_path / "vmrt.bash"
    completion.write_text(script(build_parser(), "bash"))
    words = line.split() + ([""] if line.endswith(" ") else [])
    ran = subprocess.run(
        ["bash", "-c", 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
                       '_vmrt; printf "%s\\n" "${COMPREPLY[@]}"', "bash", str(completion),
         *words], capture_output=True, text=True, timeout=30, check=True)
    got = set(ran.stdout.split())
    assert offered <= got and not (not_offered & got), got


def test_zsh_completion_loads_bashcompinit() -> None:
    text = script(build_parser(), "zsh")
    assert text.startswith("autoload -U +X compinit")
    assert "complete -o default -F _vmrt vmrt" in text
