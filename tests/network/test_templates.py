"""Pods restored from a VM template: built in the background after the first
pod of a handler (which boots cold), then every pod of the same settings is
a clone that runs containers and talks on its network as a booted one does,
and owns its clock, CRNG, MAC, address, hostname and machine id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cri.conftest import Daemon, _daemon, _short_dir, wait_for
from tests.network.test_pod_network import SERVE, fetch, pod_ip

pytestmark = pytest.mark.vm

HANDLER = "tmpl"


@pytest.fixture(scope="module")
def vmrtd(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    for base in _short_dir():
        yield from _daemon(base, guest_image, request,
                           extra_config=f"[runtime_handlers.{HANDLER}]\ntemplate = true\n")


def template_ready(daemon: Daemon) -> bool:
    return "template " in (log := daemon.log_file.read_text()) and " ready in " in log


IDENTITY = ("cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '; "
            "cat /sys/class/net/eth0/address; hostname; cat /etc/machine-id; date +%s")


def test_clones_run_like_booted_pods_and_share_no_identity(vmrtd: Daemon) -> None:
    first_config = vmrtd.pod_config()
    first = vmrtd.run_pod(first_config, handler=HANDLER)
    assert vmrtd.pod_info(first)["vm"]["from_template"] == ""  # no template yet: cold
    assert wait_for(lambda: template_ready(vmrtd), timeout=300, interval=1.0), \
        vmrtd.log_file.read_text()[-3000:]
    templates = list((vmrtd.root / "templates").iterdir())
    assert len(templates) == 1 and (templates[0] / "ready.json").exists()

    # The clone's clock must be the host's, not the template's: let the
    # template's saved clock fall well behind (a clone that kept it would
    # be off by this much at least).
    age = time.time() - (templates[0] / "ready.json").stat().st_mtime
    if age < 15:
        time.sleep(15 - age)
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
        server = vmrtd.run_container(pod_id, config, SERVE)
        ip = pod_ip(vmrtd, pod_id)
        # Its network: reached from the host at its own address, and it
        # reaches its gateway with the MAC the CNI plugin gave its interface.
        assert fetch(f"http://{ip}:8080/").strip() == config.hostname
        out = vmrtd.exec(server, ["sh", "-c", IDENTITY]).stdout.decode().split()
        uuid, random_bytes, mac, hostname, machine_id, clock = out
        assert hostname == config.hostname
        assert machine_id == pod_id[:32]
        assert abs(int(clock) - time.time()) < 8, out
        assert mac != "52:54:00:76:6d:01"  # not the template's
        seen.append((uuid, random_bytes, mac, ip, machine_id))
    for a, b in zip(seen[0], seen[1], strict=True):
        assert a != b, seen
