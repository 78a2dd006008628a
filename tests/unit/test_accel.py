"""Accelerator choice on real-looking host trees, including a PVM-only host."""

from pathlib import Path

import pytest

from vmrt.hypervisor import accel
from vmrt.hypervisor.accel import AccelError, HostPaths, choose_accel, host_tsc_khz, kvm_problem

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu MHz\t\t: 2299.998
flags\t\t: fpu vme de pse tsc msr constant_tsc {extra} tsc_known_freq
"""


def host(tmp_path: Path, *, flags: str = "", modules: tuple[str, ...] = (),
         kvm_device: bool = True) -> HostPaths:
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra=flags))
    sys_module = tmp_path / "module"
    sys_module.mkdir()
    for name in modules:
        (sys_module / name).mkdir()
    kvm = tmp_path / "kvm"
    if kvm_device:
        kvm.write_text("")
    return HostPaths(cpuinfo=tmp_path / "cpuinfo", kvm_device=kvm, sys_module=sys_module)


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_warned", False)


def test_pvm_only_host_gets_tcg_with_the_reason(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    paths = host(tmp_path, modules=("kvm", "kvm_pvm"))
    chosen = choose_accel("auto", paths)
    assert chosen.name == "tcg"
    assert "kvm_pvm" in chosen.reason
    assert "kvm_pvm" in caplog.text and "TCG" in caplog.text


def test_tcg_warning_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = host(tmp_path, modules=("kvm_pvm",))
    choose_accel("auto", paths)
    choose_accel("auto", paths)
    assert caplog.text.count("using TCG") == 1


def test_hardware_kvm_is_used(tmp_path: Path) -> None:
    paths = host(tmp_path, flags="vmx", modules=("kvm", "kvm_intel"))
    assert kvm_problem(paths) is None
    assert choose_accel("auto", paths).name == "kvm"
    assert choose_accel("kvm", paths).name == "kvm"


def test_vmx_without_module_or_device(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    no_module = host(tmp_path / "a", flags="vmx")
    assert "kvm_intel" in (kvm_problem(no_module) or "")
    no_device = host(tmp_path / "b", flags="svm", modules=("kvm_amd",), kvm_device=False)
    assert "cannot open" in (kvm_problem(no_device) or "")


def test_kvm_requested_but_unusable_is_an_error(tmp_path: Path) -> None:
    paths = host(tmp_path, modules=("kvm_pvm",))
    with pytest.raises(AccelError, match="kvm_pvm"):
        choose_accel("kvm", paths)


def test_tcg_requested_and_bad_values(tmp_path: Path) -> None:
    paths = host(tmp_path, flags="vmx", modules=("kvm_intel",))
    assert choose_accel("tcg", paths).name == "tcg"
    with pytest.raises(AccelError, match="not one of"):
        choose_accel("hvf", paths)


def test_tsc_khz_from_cpuinfo(tmp_path: Path) -> None:
    assert host_tsc_khz(host(tmp_path)) == 2299998
    assert host_tsc_khz(HostPaths(cpuinfo=tmp_path / "missing")) is None
