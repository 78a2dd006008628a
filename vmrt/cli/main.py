"""Entry point of the ``vmrt`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vmrt.cli import (
    completion,
    cri_commands,
    doctor,
    guest_image,
    images,
    multihost,
    remote,
    run,
)
from vmrt.cli.examples import add_examples
from vmrt.errors import VmrtError

DEFAULT_ROOT = "/var/lib/vmrt"
DEFAULT_STATE = "/run/vmrt"
# Like docker and podman: 125 means the runtime failed, not the command.
EXIT_RUNTIME_ERROR = 125


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmrt", description="VM-isolated sandbox runtime")
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help="persistent state: images (default: %(default)s)")
    parser.add_argument("--state", default=DEFAULT_STATE,
                        help="runtime state: sandboxes, sockets (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="verbose logs on stderr")
    # crictl's place for it: `vmrt -r unix:///... pods` (a verb's own -r wins).
    parser.add_argument("--runtime-endpoint", "-r", default=cri_commands.default_endpoint(),
                        help="vmrtd's CRI socket (default: $CONTAINER_RUNTIME_ENDPOINT or "
                             "%(default)s)")
    parser.add_argument("--tenant", default=os.environ.get("VMRT_TENANT", ""),
                        help="CRI verbs see and start only this tenant's pods "
                             "(default: $VMRT_TENANT; none: the whole node)")
    parser.add_argument("--host", action="append", default=None,
                        metavar="ssh://USER@HOST[:PORT]",
                        help="CRI verbs reach vmrtd on that node over SSH (default: "
                             "$VMRT_HOST); several: listings run on each, with a HOST column")
    parser.add_argument("-i", "--identity", default="", metavar="KEY",
                        help="the SSH private key for --host (else the agent, ~/.ssh/config)")
    parser.add_argument("--remote-vmrt", default=os.environ.get("VMRT_REMOTE_COMMAND", "vmrt"),
                        metavar="COMMAND", help="vmrt on the --host node (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    guest_image.add_parser(sub)
    run.add_parser(sub)
    cri_commands.add_parsers(sub)
    images.add_parsers(sub)
    doctor.add_parser(sub)
    daemon = sub.add_parser("daemon", help="run vmrtd (same as the vmrtd command)",
                            add_help=False)
    daemon.add_argument("daemon_args", nargs=argparse.REMAINDER)
    daemon.set_defaults(func=_daemon)
    completion.add_parser(sub)
    dial = sub.add_parser("dial-stdio", help="(on a node, for --host) stdin/stdout to vmrtd's "
                                             "CRI socket")
    dial.set_defaults(func=lambda args: remote.dial_stdio(args.runtime_endpoint))
    add_examples(parser)
    return parser


def _daemon(args: argparse.Namespace) -> int:
    from vmrt.daemon.main import main as vmrtd

    return vmrtd(args.daemon_args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse's REMAINDER drops options that come first (`daemon --config
    # X`): the daemon's arguments are whatever vmrt itself does not know.
    args, unknown = parser.parse_known_args(argv)
    if args.command == "daemon":
        args.daemon_args = unknown + args.daemon_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="vmrt: %(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        # vmrt reports QMP failures itself, with QEMU's own words.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
        # The TCG fallback is the normal case on hosts without KVM; the
        # daemon warns once, the CLI only says so with --debug.
        logging.getLogger("vmrt.hypervisor.accel").setLevel(logging.ERROR)
    hosts = args.host if isinstance(args.host, list) else [args.host] if args.host else []
    if not hosts and os.environ.get("VMRT_HOST"):
        hosts = [os.environ["VMRT_HOST"]]
    args.host = hosts[0] if len(hosts) == 1 else ""
    try:
        if len(hosts) > 1:
            return multihost.run_on_each(args, hosts, args.func)
        code: int = args.func(args)
    except VmrtError as exc:
        print(f"vmrt: {exc}", file=sys.stderr)
        tail = getattr(exc, "console_tail", "")
        if tail:
            print("vmrt: last lines of the guest console:", file=sys.stderr)
            print("\n".join("  | " + line for line in tail.splitlines()), file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
