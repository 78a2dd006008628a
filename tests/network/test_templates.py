"""Pods restored from a VM template: built in the background after the first
pod of a handler (which boots cold), then every pod of the same settings is
a clone that runs containers and talks on its network as a booted one does,
and owns its clock, CRNG, MAC, address, hostname and machine id."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, _daemon, _short_dir, wait_for
from tests.network.test_pod_network import SERVE, fetch, pod_ip
from vmrt.sandbox.vm import sandbox_dir

pytestmark = pytest.mark.vm

HANDLER = "tmpl"
AGE = 3600


@pytest.fixture(scope="module")
def vmrtd(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    for base in _short_dir():
        # The handler's guests start an hour behind the host (a test hook of
        # the agent's): the template is saved with a clock an hour old.
        yield from _daemon(base, guest_image, request,
                           extra_config=f"[runtime_handlers.{HANDLER}]\ntemplate = true\n"
                           f'kernel_params = ["vmrt.test_clock_offset={-AGE}"]\n')


def template_ready(daemon: Daemon) -> bool:
    return "template " in (log := daemon.log_file.read_text()) and " ready in " in log


# The guest's machine id is the agent's /etc, not the container image's.
IDENTITY = ("cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '; "
            "cat /sys/class/net/eth0/address; hostname; nsenter -t 1 -m cat /etc/machine-id; "
            "date +%s")
GUEST_ROOT = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
    privileged=True, namespace_options=api.NamespaceOption(pid=api.NODE)))


def test_clones_run_like_booted_pods_and_share_no_identity(vmrtd: Daemon) -> None:
    first_config = vmrtd.pod_config()
    ready_before = template_ready(vmrtd)  # vmrtd starts building it at start-up
    first = vmrtd.run_pod(first_config, handler=HANDLER)
    if not ready_before and not vmrtd.pod_info(first)["vm"]["from_template"]:
        # Cold (on this machine the build takes longer than the test takes
        # to get here): its console shows the hook at work, so the template,
        # booted the same way, was saved with a clock an hour behind.
        console = sandbox_dir(vmrtd.state, first) / "console.log"
        assert f"the guest's clock moved by {-AGE} s" in console.read_text(errors="replace")
    assert wait_for(lambda: template_ready(vmrtd), timeout=300, interval=1.0), \
        vmrtd.log_file.read_text()[-3000:]
    templates = list((vmrtd.root / "templates").iterdir())
    assert len(templates) == 1 and (templates[0] / "ready.json").exists()

    # The clone's clock must be the host's, not the template's (an hour behind).
    clones = []
    for _ in range(2):
        config = vmrtd.pod_config()
        began = time.monotonic()
        pod_id = vmrtd.run_pod(config, handler=HANDLER)
        print(f"RunPodSandbox from the template: {time.monotonic() - began:.2f} s")
        info = vmrtd.pod_info(pod_id)
        assert info["vm"]["from_template"] == templates[0].name
        cmdline = Path(f"/proc/{info['vm']['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"-incoming" in cmdline
        clones.append((pod_id, config))

    seen = []
    for pod_id, config in clones:
        vmrtd.run_container(pod_id, config, SERVE)
        probe = vmrtd.run_container(pod_id, config, ["sleep", "600"], linux=GUEST_ROOT)
        ip = pod_ip(vmrtd, pod_id)
        # Its network: reached from the host at its own address, and it
        # reaches its gateway with the MAC the CNI plugin gave its interface.
        assert fetch(f"http://{ip}:8080/").strip() == config.hostname
        reply = vmrtd.exec(probe, ["sh", "-c", IDENTITY])
        out = reply.stdout.decode().split()
        assert len(out) == 6, reply
        uuid, random_bytes, mac, hostname, machine_id, clock = out
        assert hostname == config.hostname
        assert machine_id == pod_id[:32]
        assert abs(int(clock) - time.time()) < 8, out
        assert mac != "52:54:00:76:6d:01"  # not the template's
        seen.append((uuid, random_bytes, mac, ip, machine_id))
    for a, b in zip(seen[0], seen[1], strict=True):
        assert a != b, seen


def test_clones_and_the_template_survive_a_vmrtd_that_was_killed(vmrtd: Daemon) -> None:
    """After a SIGKILL, the clones are adopted (their framed serial line
    resynced past whatever the dead vmrtd left on it), and the template is
    loaded from disk: the next pod is a clone at once."""
    if not template_ready(vmrtd):  # run alone: make the template first
        vmrtd.run_pod(vmrtd.pod_config(), handler=HANDLER)
        assert wait_for(lambda: template_ready(vmrtd), timeout=300, interval=1.0)
    config = vmrtd.pod_config()
    clone = vmrtd.run_pod(config, handler=HANDLER)
    assert vmrtd.pod_info(clone)["vm"]["from_template"]
    # A clone has no balloon (its RAM is the template's file): a resize that
    # keeps its memory succeeds all the same.
    vmrtd.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=clone, resources=api.LinuxContainerResources()), timeout=60)
    container = vmrtd.run_container(clone, config, ["sleep", "600"])
    pid = vmrtd.qemu_pid(clone)
    vmrtd.stop(signal.SIGKILL)
    vmrtd.start()
    assert "loaded 1 VM template(s)" in vmrtd.log_file.read_text()
    assert wait_for(lambda: vmrtd.exec(container, ["echo", "adopted"]).stdout == b"adopted\n",
                    timeout=60)
    assert vmrtd.qemu_pid(clone) == pid
    after = vmrtd.run_pod(vmrtd.pod_config(), handler=HANDLER)
    assert vmrtd.pod_info(after)["vm"]["from_template"]


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def test_a_new_guest_image_means_a_new_template_and_the_old_one_goes(vmrtd: Daemon) -> None:
    """vmrtd restarted with another guest image (an upgrade, or a config
    change): the old image's template is removed as stale at start-up, a new
    one is built in the background, and clones come from it."""
    if not template_ready(vmrtd):  # run alone: make the template first
        vmrtd.run_pod(vmrtd.pod_config(), handler=HANDLER)
        assert wait_for(lambda: template_ready(vmrtd), timeout=300, interval=1.0)
    (old,) = [p.name for p in (vmrtd.root / "templates").iterdir()]
    image = vmrtd.image_dir
    new_image = vmrtd.base / "new-image"
    shutil.copytree(image, new_image, copy_function=_link_or_copy)
    text = vmrtd.config.read_text()
    assert f'image = "{image}"' in text
    vmrtd.stop()
    vmrtd.config.write_text(text.replace(f'image = "{image}"', f'image = "{new_image}"'))
    start = len(vmrtd.log_file.read_bytes())
    vmrtd.start()

    def since_restart() -> str:
        return vmrtd.log_file.read_bytes()[start:].decode(errors="replace")

    assert wait_for(lambda: re.search(r"template \w+ ready in", since_restart()),
                    timeout=300, interval=1.0), \
        since_restart()[-3000:]
    assert f"template {old} is stale" in since_restart()
    (new,) = [p.name for p in (vmrtd.root / "templates").iterdir()]
    assert new != old
    assert str(new_image) in (vmrtd.root / "templates" / new / "ready.json").read_text()
    pod_id = vmrtd.run_pod(vmrtd.pod_config(), handler=HANDLER)
    assert vmrtd.pod_info(pod_id)["vm"]["from_template"] == new
