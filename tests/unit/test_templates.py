"""The template store's logic, without QEMU: keys, background builds, the
cold fallback, retries, loading what an earlier vmrtd saved, eviction."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import pytest

from vmrt.guest.image import GuestImage
from vmrt.sandbox import template as tmpl
from vmrt.sandbox.settings import VMConfig


def image(tmp_path: Path, name: str = "img") -> GuestImage:
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return GuestImage(directory=root, kernel=root / "vmlinuz", initrd=root / "initrd",
                      marker_initrd=root / "m", busybox_rootfs=root / "bb",
                      kernel_release="6.1", manifest={})


def test_the_key_follows_everything_a_restore_depends_on(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmpl, "qemu_version", lambda binary: "QEMU emulator version 7.2.0")
    monkeypatch.setattr("vmrt.sandbox.vmspec.host_tsc_khz", lambda: 2000000)
    config = VMConfig(template=True)
    key = tmpl.template_key(image(tmp_path), config, True)
    assert key == tmpl.template_key(image(tmp_path), config, True)
    changed = [
        tmpl.template_key(image(tmp_path, "other"), config, True),
        tmpl.template_key(image(tmp_path), config, False),
        tmpl.template_key(image(tmp_path), dataclasses.replace(config, memory_mib=512), True),
        tmpl.template_key(image(tmp_path), dataclasses.replace(config, extra_cmdline=("x=1",)),
                          True),
    ]
    # What differs between pods of one handler does not: the cgroup, the timeout.
    from vmrt.sandbox.cgroups import PodCgroup
    assert key == tmpl.template_key(image(tmp_path), dataclasses.replace(
        config, boot_timeout=5.0, cgroup=PodCgroup("cgroupfs", "/kubepods/pod1/vmrt-x")), True)
    # Nor the host's "cpu MHz" of the moment (cpufreq moves it): a restored
    # guest does not read its command line again.
    monkeypatch.setattr("vmrt.sandbox.vmspec.host_tsc_khz", lambda: 2400123)
    assert key == tmpl.template_key(image(tmp_path), config, True)
    monkeypatch.setattr(tmpl, "qemu_version", lambda binary: "QEMU emulator version 8.2.0")
    changed.append(tmpl.template_key(image(tmp_path), config, True))
    assert len({key, *changed}) == 6


def fake_template(directory: Path, key: str, memory_mib: int = 1) -> tmpl.Template:
    directory.mkdir(parents=True, exist_ok=True)
    memfd = tmpl._new_memfd(memory_mib << 20)
    os.pwrite(memfd, b"guest", 4096)
    tmpl._seal(memfd)
    tmpl._save_sparse(memfd, memory_mib << 20, directory / "ram")
    (directory / "state").write_bytes(b"state")
    (directory / "ready.json").write_text(json.dumps({
        "format": tmpl.TEMPLATE_FORMAT, "key": key, "memory_mib": memory_mib,
        "with_net": True, "image": str(directory.parent)}))
    return tmpl.Template(key, directory, memfd, memory_mib, True, str(directory.parent))


def test_a_pod_boots_cold_until_the_background_build_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmpl, "template_key", lambda image, config, with_net: "k1")
    gate = asyncio.Event()
    builds: list[str] = []

    async def build(directory: Path, key: str, image: GuestImage, config: VMConfig,
                    with_net: bool) -> tmpl.Template:
        builds.append(key)
        await gate.wait()
        return fake_template(directory, key)

    monkeypatch.setattr(tmpl, "build", build)

    async def scenario() -> None:
        store = tmpl.Templates(tmp_path / "templates")
        config = VMConfig(template=True)
        assert store.lookup(image(tmp_path), config, True) is None
        assert store.lookup(image(tmp_path), config, True) is None  # one build, not two
        await asyncio.sleep(0)
        assert builds == ["k1"]
        assert store.lookup(image(tmp_path), VMConfig(template=False), True) is None
        gate.set()
        for _ in range(50):
            await asyncio.sleep(0.01)
        found = store.lookup(image(tmp_path), config, True)
        assert found is not None and found.key == "k1"
        # The clone's view of it: its own fds, a private mapping of the sealed memfd.
        claim = found.claim()
        assert claim.memory().fd not in (found.memfd, -1) and not claim.memory().shared
        assert os.fstat(claim.memfd).st_ino == os.fstat(found.memfd).st_ino
        with pytest.raises(PermissionError):
            os.pwrite(os.open(f"/proc/self/fd/{claim.memfd}", os.O_RDWR), b"x", 0)
        # Evicted or pruned while the clone starts: the clone's fds stay.
        await store.close()
        assert found.memfd == -1
        assert os.pread(claim.memfd, 5, 4096) == b"guest"
        assert os.read(claim.state, 5) == b"state"
        claim.release()
        assert (claim.memfd, claim.state) == (-1, -1)
        with pytest.raises(OSError):
            found.claim()  # let go of: the pod boots cold

    asyncio.run(scenario())


def test_a_failed_build_means_cold_boots_and_a_retry_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmpl, "template_key", lambda image, config, with_net: "k2")
    calls: list[int] = []

    async def build(*args: object) -> tmpl.Template:
        calls.append(1)
        raise RuntimeError("QEMU said no")

    monkeypatch.setattr(tmpl, "build", build)

    async def scenario() -> None:
        store = tmpl.Templates(tmp_path / "templates")
        config = VMConfig(template=True)
        assert store.lookup(image(tmp_path), config, True) is None
        await asyncio.sleep(0.05)
        assert store.failure("k2") == "QEMU said no"
        assert store.lookup(image(tmp_path), config, True) is None
        await asyncio.sleep(0.05)
        assert len(calls) == 1  # not again before BUILD_RETRY
        monkeypatch.setattr(tmpl, "BUILD_RETRY", 0.0)
        store.lookup(image(tmp_path), config, True)
        await asyncio.sleep(0.05)
        assert len(calls) == 2
        await store.close()

    asyncio.run(scenario())


def test_load_takes_what_was_saved_and_removes_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    fake_template(root / "good", "good").close()
    fake_template(root / "half", "half").close()
    (root / "half" / "ready.json").unlink()  # the build was cut short
    fake_template(root / "liar", "someone-else").close()
    fake_template(root / "orphan", "orphan").close()
    meta = json.loads((root / "orphan" / "ready.json").read_text())
    (root / "orphan" / "ready.json").write_text(json.dumps({**meta, "image": "/nonexistent"}))
    fake_template(root / "noimage", "noimage").close()
    (root / "noimage" / "ready.json").write_text(json.dumps(
        {k: v for k, v in {**meta, "key": "noimage"}.items() if k != "image"}))
    fake_template(root / "listed", "listed").close()
    (root / "listed" / "ready.json").write_text("[1, 2]")
    store = tmpl.Templates(root)
    store.load()
    assert set(store.ready) == {"good"}
    assert sorted(p.name for p in root.iterdir()) == ["good"]
    loaded = store.ready["good"]
    assert os.pread(loaded.memfd, 5, 4096) == b"guest"
    with pytest.raises(PermissionError):
        os.pwrite(os.open(f"/proc/self/fd/{loaded.memfd}", os.O_RDWR), b"x", 0)
    asyncio.run(store.close())


def test_eviction_keeps_the_most_recently_used(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmpl, "MAX_TEMPLATES", 2)
    store = tmpl.Templates(tmp_path / "templates")
    for used, key in enumerate(("a", "b", "c")):
        template = fake_template(tmp_path / "templates" / key, key)
        template.used = float(used)
        store.ready[key] = template
    store._evict()
    assert set(store.ready) == {"b", "c"}
    assert not (tmp_path / "templates" / "a").exists()
    asyncio.run(store.close())


def test_templates_of_images_no_handler_uses_are_removed(tmp_path: Path) -> None:
    store = tmpl.Templates(tmp_path / "templates")
    for key in ("current", "old"):
        store.ready[key] = fake_template(tmp_path / "templates" / key, key)
    store.ready["old"].image = str(tmp_path / "old-image")
    store.prune({str(tmp_path / "templates")})
    assert set(store.ready) == {"current"}
    assert sorted(p.name for p in (tmp_path / "templates").iterdir()) == ["current"]
    store.prune(set())  # no handler uses templates now
    assert not store.ready and not list((tmp_path / "templates").iterdir())


def test_sized_pods_are_rounded_up_to_a_size_class_only_when_templates_serve_them() -> None:
    """A template serves one VM size: with templates on, a pod's memory limit
    is rounded up to a power of two (64 MiB at least) so sizes repeat; with
    them off, the VM gets exactly the handler's memory plus the limit."""
    from cri_api.v1 import api_pb2 as api

    from vmrt.config import Config, HypervisorConfig
    from vmrt.runtime.sizing import size_class, vm_config

    assert [size_class(m) for m in (1, 64, 65, 100, 128, 129, 1000, 1024)] == \
        [64, 64, 128, 128, 128, 256, 1024, 1024]
    config = Config(hypervisor=HypervisorConfig(accel="tcg", memory_mib=256),
                    runtime_handlers={"shared": {"template": True},
                                      "private": {"template": False}})
    pod = api.PodSandboxConfig()
    pod.linux.resources.memory_limit_in_bytes = 100 << 20
    pod.linux.overhead.memory_limit_in_bytes = 500 << 20  # never guest RAM
    assert vm_config(config, "shared", pod, "", "/img").memory_mib == 256 + 128
    assert vm_config(config, "private", pod, "", "/img").memory_mib == 256 + 100
    pod.linux.resources.memory_limit_in_bytes = 1 << 30
    assert vm_config(config, "shared", pod, "", "/img").memory_mib == 256 + 1024
    assert vm_config(config, "shared", api.PodSandboxConfig(), "", "/img").memory_mib == 256
    # Rounded, it would be over the maximum: the exact size, which fits.
    capped = Config(hypervisor=HypervisorConfig(accel="tcg", memory_mib=256,
                                                max_memory_mib=256 + 1100))
    assert vm_config(capped, "", pod, "", "/img").memory_mib == 256 + 1024
    pod.linux.resources.memory_limit_in_bytes = 1030 << 20
    assert vm_config(capped, "", pod, "", "/img").memory_mib == 256 + 1030


def test_vms_get_free_page_reporting_only_when_their_ram_is_their_own(tmp_path: Path) -> None:
    """A balloon for pods of handlers without templates; none for a template
    VM, a clone, or the cold boot of a handler that uses templates (its
    argv is a clone's, whose RAM is the template's file)."""
    from vmrt.hypervisor.spec import GuestMemory
    from vmrt.sandbox.vmspec import vm_spec

    img, share = image(tmp_path), tmp_path / "share"
    assert vm_spec(img, VMConfig(template=False), share, None).free_page_reporting
    assert not vm_spec(img, VMConfig(template=True), share, None).free_page_reporting
    for shared in (True, False):
        assert not vm_spec(img, VMConfig(template=False), share, None,
                           GuestMemory(5, shared=shared)).free_page_reporting


def test_warm_prunes_then_builds_no_more_than_are_kept(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from vmrt.sandbox.vm import QemuDrivers

    monkeypatch.setattr(tmpl, "MAX_TEMPLATES", 2)
    monkeypatch.setattr("vmrt.sandbox.vm.MAX_TEMPLATES", 2)
    drivers = QemuDrivers(tmp_path / "state", templates_root=tmp_path / "templates")
    calls: list[object] = []
    monkeypatch.setattr(drivers.templates, "prune", lambda images: calls.append(images))

    def lookup(img: GuestImage, config: VMConfig, with_net: bool) -> None:
        calls.append(config.memory_mib)
        if config.memory_mib == 256:
            raise OSError("no qemu")  # logged; the next one is still asked for

    monkeypatch.setattr(drivers.templates, "lookup", lookup)
    img = image(tmp_path)
    drivers.warm([(img, VMConfig(memory_mib=m), True) for m in (256, 512, 1024)])
    assert calls == [{str(img.directory.resolve())}, 256, 512]
