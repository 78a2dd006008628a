"""An example in every verb's ``--help``, in one table; and the walk over
the parser's verbs that completion shares."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

EXAMPLES = {
    "guest-image": "vmrt guest-image build",
    "guest-image build": "vmrt guest-image build --force",
    "guest-image show": "vmrt guest-image show",
    "guest-image verify": "vmrt guest-image verify",
    "run-vm": "vmrt run-vm --memory 512M -- sh -c 'uname -r'",
    "pods": "vmrt pods -o yaml",
    "ps": "vmrt ps -a -o json",
    "inspect": "vmrt inspect 3f2a -o yaml",
    "exec": "vmrt exec -it 3f2a -- sh",
    "attach": "vmrt attach -i 3f2a",
    "port-forward": "vmrt port-forward 3f2a 8080:80",
    "logs": "vmrt logs -f --timestamps 3f2a",
    "stop": "vmrt stop -t 5 3f2a",
    "rm": "vmrt rm 3f2a 9c1d",
    "stats": "vmrt stats",
    "images": "vmrt images -o json",
    "pull": "vmrt pull registry.k8s.io/pause:3.9",
    "rmi": "vmrt rmi registry.k8s.io/pause:3.9",
    "image": "vmrt image import ./layout",
    "image inspect": "vmrt image inspect busybox",
    "image import": "vmrt image import ./image.tar",
    "doctor": "vmrt doctor",
    "daemon": "vmrt daemon --config /etc/vmrt/config.toml",
    "completion": "source <(vmrt completion bash)",
    "dial-stdio": "vmrt dial-stdio -r unix:///run/vmrt/vmrt.sock",
}


def verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every verb (and sub-verb) with its parser, parents first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from verbs(sub, (*path, name))


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give each verb without an epilog its example from the table."""
    for path, sub in verbs(parser):
        example = EXAMPLES.get(" ".join(path))
        if sub.epilog is None and example:
            sub.epilog = f"example:\n  {example}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
