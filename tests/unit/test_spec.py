"""The QEMU argv builder and the kernel command line."""

from pathlib import Path

import pytest

from vmrt.hypervisor.spec import (
    Share,
    SpecError,
    VMEndpoints,
    VMSpec,
    boot_modules,
    build_argv,
    kernel_cmdline,
)

ENDPOINTS = VMEndpoints(console_fd=6, qmp_fd=7, agent_fd=8)


def spec(**overrides: object) -> VMSpec:
    values: dict[str, object] = {"kernel": Path("/img/vmlinux"), "initrd": Path("/img/initrd.img")}
    values.update(overrides)
    return VMSpec(**values)  # type: ignore[arg-type]


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_microvm_tcg_serial_argv() -> None:
    argv = build_argv(spec(shares=(Share("vmrt-share", Path("/s/shared")),), tsc_khz=2299998),
                      ENDPOINTS, "vmrt-abc")
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-machine") == ["microvm,acpi=on,pit=off"]
    assert option(argv, "-accel") == ["tcg,tb-size=128"]
    assert option(argv, "-cpu") == ["max,-erms,-fsrm"]
    assert option(argv, "-m") == ["256M"]
    assert option(argv, "-kernel") == ["/img/vmlinux"]
    assert option(argv, "-initrd") == ["/img/initrd.img"]
    assert "socket,id=qmp,fd=7,server=on,wait=off" in option(argv, "-chardev")
    assert "socket,id=agent,fd=8,server=on,wait=off" in option(argv, "-chardev")
    assert "socket,id=console,fd=6,server=on,wait=on" in option(argv, "-chardev")
    devices = option(argv, "-device")
    assert "virtio-serial-device,id=vser0" in devices
    assert "virtserialport,bus=vser0.0,chardev=agent,name=vmrt.agent" in devices
    assert "virtio-9p-device,fsdev=fs0,mount_tag=vmrt-share" in devices
    assert option(argv, "-fsdev") == [
        "local,id=fs0,path=/s/shared,security_model=none,multidevs=remap"]
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert option(argv, "-serial") == ["chardev:console"]


def test_pc_machine_uses_pci_devices() -> None:
    argv = build_argv(spec(machine="pc", shares=(Share("t", Path("/x")),)), ENDPOINTS, "n")
    devices = option(argv, "-device")
    assert "virtio-serial-pci,id=vser0" in devices
    assert "virtio-9p-pci,fsdev=fs0,mount_tag=t" in devices
    assert option(argv, "-machine") == ["pc"]


def test_kvm_uses_host_cpu_and_no_translation_cache() -> None:
    argv = build_argv(spec(accel="kvm"), ENDPOINTS, "n")
    assert option(argv, "-accel") == ["kvm"]
    assert option(argv, "-cpu") == ["host"]


def test_vsock_transport_has_no_serial_port() -> None:
    argv = build_argv(spec(agent_transport="vsock", vsock_cid=42),
                      VMEndpoints(6, 7, None), "n")
    devices = option(argv, "-device")
    assert "vhost-vsock-device,guest-cid=42" in devices
    assert not any(d.startswith("virtio-serial") for d in devices)


def test_readonly_share() -> None:
    argv = build_argv(spec(shares=(Share("ro", Path("/r"), readonly=True),)), ENDPOINTS, "n")
    assert option(argv, "-fsdev")[0].endswith(",readonly=on")


@pytest.mark.parametrize("overrides, message", [
    ({"memory_mib": 16}, "below the minimum"),
    ({"vcpus": 0}, "vcpus"),
    ({"machine": "virt"}, "machine"),
    ({"agent_transport": "tcp"}, "transport"),
    ({"accel": "auto"}, "resolved"),
    ({"agent_transport": "vsock", "vsock_cid": 2}, "CID"),
])
def test_invalid_specs_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_argv(spec(**overrides), ENDPOINTS, "n")


def test_cmdline_carries_tsc_transport_and_boot_modules() -> None:
    line = kernel_cmdline(spec(tsc_khz=2299998))
    words = line.split()
    assert "console=ttyS0" in words and "panic=-1" in words
    assert "tsc_early_khz=2299998" in words
    assert "vmrt.transport=serial" in words
    assert ("vmrt.boot_modules=virtio_ring,virtio,virtio_mmio,virtio_console,"
            "pvpanic,pvpanic-mmio") in words
    assert "vmrt.debug=1" not in words
    assert "mitigations=off" in words
    assert "mitigations=off" not in kernel_cmdline(spec(accel="kvm")).split()
    assert "vmrt.debug=1" in kernel_cmdline(spec(debug=True)).split()


def test_boot_modules_follow_machine_and_transport() -> None:
    assert boot_modules(spec(machine="q35", agent_transport="vsock", vsock_cid=3)) == [
        "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
        "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
        "pvpanic", "pvpanic-mmio",
    ]
    assert "-device" in build_argv(spec(), ENDPOINTS, "n")
    assert "pvpanic" in option(build_argv(spec(), ENDPOINTS, "n"), "-device")
    assert "tsc_early_khz" not in kernel_cmdline(spec(tsc_khz=None))


def test_free_page_reporting_is_a_balloon_for_ram_qemu_owns_alone() -> None:
    from vmrt.hypervisor.spec import GuestMemory

    argv = build_argv(spec(free_page_reporting=True), ENDPOINTS, "n")
    assert "virtio-balloon-device,free-page-reporting=on" in option(argv, "-device")
    assert "virtio_balloon" in boot_modules(spec(free_page_reporting=True))
    assert "virtio_balloon" not in boot_modules(spec())
    assert not any("balloon" in d for d in option(build_argv(spec(), ENDPOINTS, "n"), "-device"))
    pci = build_argv(spec(machine="q35", free_page_reporting=True), ENDPOINTS, "n")
    assert "virtio-balloon-pci,free-page-reporting=on" in option(pci, "-device")
    # On a template's file QEMU 7.2 would discard by punching holes in it.
    with pytest.raises(SpecError, match="free-page reporting"):
        build_argv(spec(free_page_reporting=True, memory=GuestMemory(5, shared=False)),
                   ENDPOINTS, "n")


def test_a_vm_with_a_share_loads_9p_and_overlay_at_boot() -> None:
    """So a template's saved memory has them and its clones skip the insmods."""
    with_share = boot_modules(spec(shares=(Share("t", Path("/x")),)))
    assert with_share[-8:] == ["netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay",
                               "pvpanic", "pvpanic-mmio"]
    assert "9p" not in boot_modules(spec())


def test_tap_networking() -> None:
    from vmrt.hypervisor.spec import NetSpec

    tap = build_argv(spec(net=NetSpec("tap", "02:00:00:00:00:01", tap_fd=9)), ENDPOINTS, "n")
    assert option(tap, "-netdev") == ["tap,id=net0,fd=9,vhost=off"]
    assert "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01" in option(tap, "-device")
    assert "virtio_net" in kernel_cmdline(spec(net=NetSpec("tap", "m", tap_fd=9)))
    with pytest.raises(SpecError, match="fd"):
        build_argv(spec(net=NetSpec("tap", "02:00:00:00:00:01")), ENDPOINTS, "n")
    for bad in (NetSpec("tap", "02:00:00:00:00:02,x=y", tap_fd=9),
                NetSpec("user", "02:00:00:00:00:02", tap_fd=9)):
        with pytest.raises(SpecError):
            build_argv(spec(net=bad), ENDPOINTS, "n")


def test_paths_in_qemu_options_cannot_add_options() -> None:
    from vmrt.hypervisor.spec import Share

    evil = Path("/srv/a,security_model=passthrough")
    argv = build_argv(spec(shares=(Share("vmrt-share", evil),)), ENDPOINTS, "n")
    assert option(argv, "-fsdev") == [
        "local,id=fs0,path=/srv/a,,security_model=passthrough,security_model=none,"
        "multidevs=remap"]
    with pytest.raises(SpecError, match=r"tag"):
        build_argv(spec(shares=(Share("tag,x=y", Path("/srv")),)), ENDPOINTS, "n")
