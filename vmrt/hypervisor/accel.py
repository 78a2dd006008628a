"""Choosing the accelerator, and other facts about the host that shape the argv.

KVM is used only where it really works: the CPU advertises VMX/SVM, a
hardware KVM module (kvm_intel / kvm_amd) is loaded and /dev/kvm opens.
A host whose /dev/kvm comes from a nested PVM hypervisor (kvm_pvm) has none
of the first two, and stock kernels hang under it, so it gets TCG.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import VmrtError

log = logging.getLogger(__name__)

ACCEL_CHOICES = ("auto", "kvm", "tcg")
_warned = False


class AccelError(VmrtError):
    pass


@dataclass(frozen=True)
class HostPaths:
    """Where host facts are read from; tests point these at fake trees."""

    cpuinfo: Path = Path("/proc/cpuinfo")
    kvm_device: Path = Path("/dev/kvm")
    sys_module: Path = Path("/sys/module")


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def kvm_problem(paths: HostPaths = HostPaths()) -> str | None:
    """Why KVM cannot be used here, or None when it can."""
    try:
        cpuinfo = paths.cpuinfo.read_text()
    except OSError as exc:
        return f"cannot read {paths.cpuinfo}: {exc.strerror}"
    flags = _cpu_flags(cpuinfo)
    hardware_modules = [m for m in ("kvm_intel", "kvm_amd") if (paths.sys_module / m).exists()]
    pvm = (paths.sys_module / "kvm_pvm").exists()
    if not flags & {"vmx", "svm"}:
        if pvm:
            return ("/dev/kvm is provided by kvm_pvm, a nested PVM hypervisor on which stock "
                    "kernels hang, and the CPU has no VMX/SVM")
        return "the CPU has no VMX/SVM flag"
    if not hardware_modules:
        if pvm:
            return "only kvm_pvm is loaded (no kvm_intel/kvm_amd); stock kernels hang under it"
        return "neither kvm_intel nor kvm_amd is loaded"
    try:
        fd = os.open(paths.kvm_device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {paths.kvm_device}: {exc.strerror}"
    os.close(fd)
    return None


def choose_accel(requested: str, paths: HostPaths = HostPaths()) -> Accel:
    global _warned
    if requested not in ACCEL_CHOICES:
        raise AccelError(f"accel {requested!r} is not one of {', '.join(ACCEL_CHOICES)}")
    if requested == "tcg":
        return Accel("tcg", "requested")
    problem = kvm_problem(paths)
    if requested == "kvm":
        if problem:
            raise AccelError(f"accel=kvm requested but KVM is not usable: {problem}")
        return Accel("kvm", "requested")
    if problem is None:
        return Accel("kvm", "KVM is usable")
    if not _warned:
        log.warning("KVM is not usable (%s); using TCG software emulation: isolation holds, "
                    "VMs are slower", problem)
        _warned = True
    return Accel("tcg", problem)


def host_tsc_khz(paths: HostPaths = HostPaths()) -> int | None:
    """The host TSC frequency in kHz, when the kernel knows it exactly.

    microvm guests need it as tsc_early_khz or they hang calibrating.
    """
    try:
        cpuinfo = paths.cpuinfo.read_text()
    except OSError:
        return None
    flags = _cpu_flags(cpuinfo)
    if "tsc_known_freq" not in flags and "constant_tsc" not in flags:
        return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return round(float(value) * 1000)
            except ValueError:
                return None
    return None
