"""The CLI's argument handling: crictl's habit of the endpoint before the verb,
an example in every --help, shell completion."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from vmrt.cli import cri_commands, remote
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


def test_ssh_targets_from_the_url_and_ssh_config(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USER", "me")
    assert remote.parse("ssh://root@node1:2200") == remote.Target("root", "node1", 2200)
    assert remote.parse("ssh://node1") == remote.Target("me", "node1", 22)
    assert remote.parse("ssh://admin@[fd00::1]:22").host == "fd00::1"
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host node2\n  HostName 10.1.2.3\n  User ops\n  Port 2022\n"
        "  IdentityFile ~/.ssh/node2_key\n")
    assert remote.parse("ssh://node2") == remote.Target("ops", "10.1.2.3", 2022)
    assert remote.parse("ssh://root@node2:23") == remote.Target("root", "10.1.2.3", 23)
    assert remote._ssh_config("node2")["identityfile"] == str(tmp_path / ".ssh" / "node2_key")
    for bad in ("node1", "ssh://", "ssh://a@b@c", "http://node1", "ssh://node1:port"):
        with pytest.raises(remote.RemoteError):
            remote.parse(bad)
