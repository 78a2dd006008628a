"""``vmrt doctor``: what this node has, and what it lacks to run pods."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from vmrt.config import ConfigError, load
from vmrt.errors import VmrtError
from vmrt.guest.image import GuestImage, default_image_dir
from vmrt.hypervisor.accel import choose_accel, kvm_problem
from vmrt.network.cni import CNI

DEFAULT_CONFIG = Path("/etc/vmrt/config.toml")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    parser = sub.add_parser("doctor", help="check this node: QEMU, KVM, guest image, CNI")
    parser.add_argument("--config", type=Path, help="vmrtd config (default: "
                                                     f"{DEFAULT_CONFIG} if it exists)")
    parser.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    try:
        config = load(args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None))
    except ConfigError as exc:
        print(f"FAIL  config: {exc}")
        return 1
    checks: list[tuple[str, Callable[[], str]]] = [
        ("qemu", lambda: _which(config.hypervisor.qemu_binary,
                                "apt-get install qemu-system-x86")),
        ("accel", lambda: _accel(config.hypervisor.accel)),
        ("tun", lambda: "" if os.path.exists("/dev/net/tun")
         else "/dev/net/tun is missing: modprobe tun"),
        ("guest image", lambda: _image(config.hypervisor.image or
                                       str(default_image_dir(config.storage.root)))),
        ("cni config", lambda: CNI(config.cni.conf_dir, config.cni.bin_dirs).problem()),
        ("iptables", lambda: _which("iptables", "apt-get install iptables (portmap, ipMasq)")),
        ("mount", lambda: _which("mount", "apt-get install mount")),
    ]
    failed = 0
    for name, check in checks:
        try:
            problem = check()
        except VmrtError as exc:
            problem = str(exc)
        if problem.startswith("note: "):
            print(f"note  {name}: {problem[6:]}")
        elif problem:
            failed += 1
            print(f"FAIL  {name}: {problem}")
        else:
            print(f"ok    {name}")
    return 1 if failed else 0


def _which(binary: str, remedy: str) -> str:
    return "" if shutil.which(binary) else f"{binary} not found: {remedy}"


def _accel(requested: str) -> str:
    accel = choose_accel(requested)
    if accel.name == "kvm":
        return ""
    return f"note: using TCG software emulation ({kvm_problem() or accel.reason}); " \
           "VMs are isolated but slower"


def _image(directory: str) -> str:
    GuestImage.load(Path(directory).resolve())
    return ""
