"""``vmrt completion bash|zsh``: a completion script made from the parser
itself, so it never lags behind the verbs and their options.

Words are completed by position: the verbs (and sub-verbs), then the
options of the verb typed so far; an option's fixed choices after it.
zsh runs the same function through its ``bashcompinit``.
"""

from __future__ import annotations

import argparse
import shlex

from vmrt.cli.examples import verbs

HEADER = {
    "bash": "",
    "zsh": "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n",
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=sorted(HEADER))
    p.set_defaults(func=_completion)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(flag for action in parser._actions for flag in action.option_strings)


def _choices(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {flag: [str(c) for c in action.choices]
            for action in parser._actions if action.option_strings and action.choices
            for flag in action.option_strings}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script; ``parser`` is vmrt's whole parser."""
    top = [path[0] for path, _ in verbs(parser) if len(path) == 1]
    cases = [f"        '') words_={shlex.quote(' '.join(top + _options(parser)))} ;;"]
    values = []
    for path, sub in verbs(parser):
        children = [p[-1] for p, _ in verbs(sub, path) if len(p) == len(path) + 1]
        words = children + _options(sub)
        cases.append(f"        {shlex.quote(' '.join(path))}) "
                     f"words_={shlex.quote(' '.join(words))} ;;")
        for flag, choices in _choices(sub).items():
            values.append(f"        {shlex.quote(' '.join(path) + ' ' + flag)}) "
                          f"words_={shlex.quote(' '.join(choices))} ;;")
    known = " ".join(sorted({p[-1] for p, _ in verbs(parser)}))
    return HEADER[shell] + f"""_vmrt() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local path="" word words_="" i
    local known=" {known} "
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        if [[ "$known" == *" $word "* ]]; then path="${{path:+$path }}$word"; fi
    done
    case "$path $prev" in
{chr(10).join(values)}
        *) case "$path" in
{chr(10).join(cases)}
           esac ;;
    esac
    COMPREPLY=($(compgen -W "$words_" -- "$cur"))
}}
complete -o default -F _vmrt vmrt
"""


def _completion(args: argparse.Namespace) -> int:
    from vmrt.cli.main import build_parser

    print(script(build_parser(), args.shell), end="")
    return 0
