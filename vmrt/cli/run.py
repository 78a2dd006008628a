"""``vmrt run-vm``: boot a private VM, run one command as a container in it, tear it
all down; no vmrtd, no image store (``vmrt run`` goes through vmrtd)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from vmrt import oci
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.agentclient import AgentClient
from vmrt.errors import VmrtError
from vmrt.guest.image import GuestImage, default_image_dir
from vmrt.hypervisor.accel import ACCEL_CHOICES, choose_accel
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.vm import SandboxVM

CONTAINER_ID = "main"
_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_UNIT_MIB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024, "": 1}


class UsageError(VmrtError):
    pass


def parse_memory(text: str) -> int:
    """'256M', '1G', '512MiB' or a bare number of MiB -> MiB."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"--memory {text!r}: expected a size such as 256M or 1G")
    mib = int(match.group(1)) * _UNIT_MIB[match.group(2).lower()]
    if mib != int(mib) or mib <= 0:
        raise UsageError(f"--memory {text!r}: must be a positive whole number of MiB")
    return int(mib)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    parser = sub.add_parser(
        "run-vm", help="run a command in a private VM without vmrtd (the built-in busybox "
                       "or a root filesystem directory)",
        usage="vmrt run-vm [--rootfs DIR] [--memory 256M] [--cpus 1] -- CMD [ARGS...]",
    )
    parser.add_argument("--rootfs", type=Path,
                        help="the container's root filesystem (default: the image's busybox)")
    parser.add_argument("--memory", default="256M", help="guest memory (default: %(default)s)")
    parser.add_argument("--cpus", type=int, default=1, help="guest vCPUs (default: 1)")
    parser.add_argument("--accel", choices=ACCEL_CHOICES, default="auto")
    parser.add_argument("--machine", choices=("microvm", "pc", "q35"), default="microvm")
    parser.add_argument("--image", type=Path, help="guest image directory")
    parser.add_argument("--hostname", default="", help="the container's hostname")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-w", "--workdir", default="/")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="pass stdin to the command")
    parser.add_argument("--boot-timeout", type=float, default=120.0)
    parser.add_argument("--console-log", type=Path,
                        help="also keep a copy of the guest console in this file")
    parser.add_argument("--qemu-binary", default="qemu-system-x86_64", help=argparse.SUPPRESS)
    parser.add_argument("--timings", action="store_true",
                        help="print start-up timings as JSON on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("no command given: vmrt run-vm [--rootfs DIR] -- CMD [ARGS...]")
    image = GuestImage.load((args.image or default_image_dir(args.root)).resolve())
    rootfs = (args.rootfs or image.busybox_rootfs).resolve()
    if not rootfs.exists():
        raise UsageError(f"rootfs {rootfs} does not exist")
    if not rootfs.is_dir():
        raise UsageError(f"rootfs {rootfs} is not a directory")
    for item in args.env:
        if "=" not in item:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
    config = VMConfig(
        memory_mib=parse_memory(args.memory),
        vcpus=args.cpus,
        machine=args.machine,
        accel=choose_accel(args.accel).name,
        debug=args.debug,
        boot_timeout=args.boot_timeout,
        qemu_binary=args.qemu_binary,
    )
    sandbox = SandboxVM(secrets.token_hex(6), Path(args.state), image, config)
    return asyncio.run(_main(sandbox, rootfs, command, args))


async def _main(sandbox: SandboxVM, rootfs: Path, command: list[str],
                args: argparse.Namespace) -> int:
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    # Ctrl-C and SIGTERM unwind through the finally below, so the VM, its
    # sockets and its mounts go away whichever way we leave.
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signo, main.cancel)
    try:
        await sandbox.start(hostname=args.hostname, die_with_parent=True)
        code = await _run_container(sandbox, rootfs, command, args)
        if args.timings:
            print(json.dumps(sandbox.timings), file=sys.stderr)
        return code
    except asyncio.CancelledError:
        return 130
    finally:
        # Teardown must finish: further signals are ignored from here on.
        for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signo, lambda: None)
        if args.console_log:
            with contextlib.suppress(OSError):
                shutil.copyfile(sandbox.console_path, args.console_log)
        teardown = asyncio.ensure_future(sandbox.destroy())
        while not teardown.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(teardown)
        teardown.result()


async def _run_container(sandbox: SandboxVM, rootfs: Path, command: list[str],
                         args: argparse.Namespace) -> int:
    agent = sandbox.agent
    assert agent is not None
    share_path = await sandbox.bind_rootfs(CONTAINER_ID, rootfs, readonly=True)
    spec = oci.container_spec(command, env=args.env, cwd=args.workdir,
                              hostname=args.hostname or f"vmrt-{sandbox.id}")
    await agent.create_container(
        CONTAINER_ID, json.dumps(spec).encode(),
        pb.Rootfs(share_path=share_path, guest_overlay=True),
        pb.StdioOptions(terminal=False, open_stdin=args.interactive, acked_output=True))
    await agent.start_container(CONTAINER_ID)
    work = [
        asyncio.create_task(_copy_out(agent, pb.STDOUT, sys.stdout.buffer)),
        asyncio.create_task(_copy_out(agent, pb.STDERR, sys.stderr.buffer)),
    ]
    if args.interactive:
        work.append(asyncio.create_task(_copy_in(agent)))
    wait = asyncio.create_task(agent.wait_process(CONTAINER_ID))
    died = asyncio.create_task(sandbox.wait_gone())
    try:
        done, _ = await asyncio.wait({wait, died}, return_when=asyncio.FIRST_COMPLETED)
        if wait not in done or wait.exception() is not None:
            # A lost agent connection usually means the VM is dying; give
            # QEMU's exit a moment to arrive, since it explains the loss.
            await asyncio.wait({died}, timeout=5)
            if died.done():
                raise sandbox.died("the VM died while the command ran")
            wait.result()
        # Output streams end once the process exited and its output is drained.
        await asyncio.wait_for(asyncio.gather(*work[:2]), timeout=30)
        return wait.result().exit_code
    finally:
        for task in (*work, wait, died):
            task.cancel()
        await asyncio.gather(*work, wait, died, return_exceptions=True)


async def _copy_out(agent: AgentClient, stream: pb.Stream, out: BinaryIO) -> None:
    async for chunk in agent.follow_output(CONTAINER_ID, "", stream, trim_sent=True):
        out.write(chunk.data)
        out.flush()


async def _copy_in(agent: AgentClient) -> None:
    # A daemon thread, not the executor: a read blocked on a terminal must
    # not keep the process alive after the command has exited.
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
    fd = sys.stdin.fileno()

    def reader() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            asyncio.run_coroutine_threadsafe(chunks.put(data), loop).result()
            if not data:
                return

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    while True:
        data = await chunks.get()
        await agent.write_stdin(CONTAINER_ID, "", data, close=not data)
        if not data:
            return
