"""A registry with images built by the tests, and a vmrtd that mirrors it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cri.conftest import Daemon, _daemon, _short_dir, own_vmrtd  # noqa: F401 - a fixture
from tests.helpers.oci import Entry, Image, Layer, Layout, push
from tests.helpers.registry import Registry
from tests.helpers.tokengate import TokenGate

USER, PASSWORD = "puller", "s3cret"


def busybox_layer(rootfs: Path, compression: str = "none") -> Layer:
    """A base layer with Debian's static busybox and its applets."""
    entries = [Entry("bin", kind="dir", mode=0o755),
               Entry("bin/busybox", (rootfs / "bin" / "busybox").read_bytes(), mode=0o755)]
    for applet in ("sh", "cat", "echo", "pwd", "ls", "id", "sleep", "test", "wc"):
        entries.append(Entry(f"bin/{applet}", kind="symlink", target="busybox"))
    entries += [Entry("etc", kind="dir", mode=0o755),
                Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                    b"app:x:1000:1000:app:/home/app:/bin/sh\n"),
                Entry("etc/group", b"root:x:0:\napp:x:1000:\n"),
                Entry("tmp", kind="dir", mode=0o1777)]
    return Layer(entries, compression)


@dataclass
class Images:
    registry: Registry
    secure: Registry
    gate: TokenGate
    canary: Path
    digests: dict[str, str]


@pytest.fixture(scope="package")
def images(guest_image) -> Iterator[Images]:  # type: ignore[no-untyped-def]
    base = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
    registry = Registry(base / "open")
    secure = Registry(base / "secure", USER, PASSWORD)
    canary = base / "canary"
    canary.mkdir()
    (canary / "untouched.txt").write_text("still here\n")
    layout = Layout(base / "layout")
    busybox = busybox_layer(guest_image.busybox_rootfs)
    app = Layer([Entry("app", kind="dir", mode=0o755),
                 Entry("app/hello.txt", b"hello from the image\n"),
                 Entry("app/data", b"x" * 100_000, uid=1000, gid=1000),
                 Entry("app/data-link", kind="hardlink", target="app/data"),
                 Entry("app/setuid", b"#!/bin/sh\n", mode=0o4755),
                 Entry("etc/motd", b"zstd layer\n")], "zstd")
    gone = Layer([Entry("app/.wh.data-link"), Entry("etc/.wh..wh..opq"),
                  Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                      b"app:x:1000:1000:app:/home/app:/bin/sh\n"),
                  Entry("etc/group", b"root:x:0:\napp:x:1000:\n")], "gzip")
    config = {"Env": ["GREETING=hello", "PATH=/bin"], "WorkingDir": "/app", "User": "app",
              "Cmd": ["sh"]}
    layout.add("app", Image([busybox, app, gone], config))
    layout.add("multi", Image([Layer([Entry("arch.txt", b"arm64\n")])], architecture="arm64"),
               Image([busybox, Layer([Entry("arch.txt", b"amd64\n")])]))
    layout.add("tagged", Image([Layer([Entry("tagged.txt", b"one image, two tags\n")])]))
    layout.add("traversal", Image([Layer([Entry("../../escape.txt", b"out")])]))
    layout.add("absolute", Image([Layer([Entry(f"{canary}/abs.txt", b"out")])]))
    layout.add("symlink", Image([Layer([Entry("sneaky", kind="symlink", target=str(canary)),
                                        Entry("sneaky/pwned.txt", b"out")])]))
    layout.add("device", Image([Layer([Entry("etc/zero", kind="chardev")])]))
    layout.add("big", Image([Layer([Entry("random.bin", os.urandom(16 << 20))], "gzip")]))
    layout.add("entry", Image([busybox], {"Entrypoint": ["/bin/echo", "entry"],
                                          "Cmd": ["default-arg"]}))
    layout.add("linked", Image([Layer([Entry("data", kind="dir", mode=0o755),
                                       Entry("data/x.txt", b"in the volume\n"),
                                       Entry("up", kind="symlink", target="/")])]))
    layout.add("corrupt", Image([Layer([Entry("to-be-damaged.txt", b"x" * 4096)])]))
    layout.add("huge", Image([Layer([Entry("random.bin", os.urandom(48 << 20))], "none")]))
    digests = {}
    for name, destination in [("app", "test/app:1"), ("multi", "test/multi:1"),
                              ("tagged", "test/tags:a"), ("tagged", "test/tags:b"),
                              ("traversal", "evil/traversal:1"), ("absolute", "evil/absolute:1"),
                              ("symlink", "evil/symlink:1"), ("device", "evil/device:1"),
                              ("big", "test/concurrent:1"), ("huge", "test/interrupted:1"),
                              ("corrupt", "test/corrupt:1"), ("entry", "test/entry:1"),
                              ("huge", "test/deadline:1"), ("linked", "test/linked:1")]:
        digests[destination] = push(layout.path, name, f"{registry.address}/{destination}")
    push(layout.path, "app", f"{secure.address}/secure/app:1", f"{USER}:{PASSWORD}")
    gate = TokenGate(registry.address, USER, PASSWORD)
    try:
        yield Images(registry, secure, gate, canary, digests)
    finally:
        gate.stop()
        registry.stop()
        secure.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="package")
def puller(guest_image, images: Images, request: pytest.FixtureRequest
           ) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    """vmrtd with mirrors: registry.invalid (does not resolve) -> the test registry."""
    mirrors = (
        f'[registry.mirrors."registry.invalid"]\n'
        f'endpoints = ["http://{images.registry.address}"]\n'
        f'[registry.mirrors."{images.registry.address}"]\n'
        f'endpoints = ["http://{images.registry.address}"]\n'
        f'[registry.mirrors."{images.secure.address}"]\n'
        f'endpoints = ["http://{images.secure.address}"]\n'
        f'[registry.mirrors."{images.gate.address}"]\n'
        f'endpoints = ["http://{images.gate.address}"]\n')
    for base in _short_dir():
        yield from _daemon(base, guest_image, request, name="images", check_leaks=False,
                           extra_config=mirrors)
