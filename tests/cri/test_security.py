"""CreateContainer's translation of CRI security and namespace settings, checked
from inside real containers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, expect_error, wait_for
from vmrt.sandbox import mounts
from vmrt.sandbox.vm import sandbox_dir

pytestmark = pytest.mark.vm


MOUNT_TMPFS = "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m && echo ok"


def sc(**fields: object) -> api.LinuxContainerConfig:
    return api.LinuxContainerConfig(
        security_context=api.LinuxContainerSecurityContext(**fields))  # type: ignore[arg-type]


def run(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig], *args: str,
        **fields: object) -> str:
    pod_id, config = pod
    return vmrtd.run_container(pod_id, config, list(args) or ["sleep", "300"], **fields)


def trapped(vmrtd: Daemon, container: str) -> None:
    """The container's shell has set its trap (a signal before it would not be caught)."""
    assert wait_for(lambda: sh(vmrtd, container, "test -e /trapped").exit_code == 0,
                    timeout=30)


def sh(vmrtd: Daemon, container: str, script: str) -> api.ExecSyncResponse:
    return vmrtd.exec(container, ["sh", "-c", script])


def test_capabilities_add_and_drop(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    default = run(vmrtd, pod)
    assert sh(vmrtd, default, "chown 1:1 /tmp").exit_code == 0
    assert sh(vmrtd, default, "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m").exit_code != 0
    dropped = run(vmrtd, pod, linux=sc(capabilities=api.Capability(drop_capabilities=["CHOWN"])))
    assert sh(vmrtd, dropped, "chown 1:1 /tmp").exit_code != 0
    added = run(vmrtd, pod, linux=sc(capabilities=api.Capability(
        add_capabilities=["SYS_ADMIN"]), seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.RuntimeDefault)))
    assert sh(vmrtd, added, MOUNT_TMPFS).stdout == b"ok\n"


def test_privileged(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    container = run(vmrtd, pod, linux=sc(privileged=True))
    assert sh(vmrtd, container, MOUNT_TMPFS).stdout == b"ok\n"
    caps = sh(vmrtd, container, "grep CapEff /proc/self/status").stdout.split()[1]
    assert int(caps, 16) >= 0x1FFFFFFFFF
    # Nothing masked: /proc/kcore has content.
    assert sh(vmrtd, container, "head -c1 /proc/kcore | wc -c").stdout.strip() == b"1"
    # What critest's Privileged spec does: the bridge module loads on demand.
    made = sh(vmrtd, container, "brctl addbr foobar && ip -o link show foobar && "
                                "brctl delbr foobar")
    assert made.exit_code == 0 and b"foobar" in made.stdout, made.stderr


def test_net_admin_can_make_bridges(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]
                                    ) -> None:
    """Bridges in the pod's network, as critest's capability spec and Kata
    (bridge built into its guest kernel) allow: by ioctl and by netlink."""
    plain = run(vmrtd, pod)
    refused = sh(vmrtd, plain, "brctl addbr nocap")
    assert refused.exit_code != 0 and b"not permitted" in refused.stderr, refused.stderr
    admin = run(vmrtd, pod, linux=sc(capabilities=api.Capability(add_capabilities=["NET_ADMIN"])))
    made = sh(vmrtd, admin, "brctl addbr byioctl && ip link add bynetlink type bridge && "
                            "ls /sys/class/net/byioctl/bridge /sys/class/net/bynetlink/bridge "
                            "> /dev/null && ls /sys/class/net")
    assert made.exit_code == 0, made.stderr
    assert b"byioctl" in made.stdout and b"bynetlink" in made.stdout
    assert sh(vmrtd, admin, "ip link del byioctl && ip link del bynetlink").exit_code == 0


def test_readonly_rootfs_masked_paths_and_no_new_privs(vmrtd: Daemon,
                                                       pod: tuple[str, api.PodSandboxConfig]
                                                       ) -> None:
    container = run(vmrtd, pod, linux=sc(readonly_rootfs=True, no_new_privs=True))
    assert sh(vmrtd, container, "touch /newfile").exit_code != 0
    assert sh(vmrtd, container, "grep NoNewPrivs /proc/self/status").stdout.split()[1] == b"1"
    # Masked: /proc/kcore reads as empty.
    assert sh(vmrtd, container, "head -c1 /proc/kcore | wc -c").stdout.strip() == b"0"
    assert sh(vmrtd, container, "echo 1 > /proc/sys/vm/drop_caches").exit_code != 0
    custom = run(vmrtd, pod, linux=sc(masked_paths=["/etc/hostname"], readonly_paths=[]))
    assert sh(vmrtd, custom, "cat /etc/hostname").stdout == b""


def test_seccomp_profiles(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig],
                          tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    local = run(vmrtd, pod, linux=sc(seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=str(profile))))
    denied = sh(vmrtd, local, "mkdir /tmp/d")
    assert denied.exit_code != 0 and b"Operation not permitted" in denied.stderr
    default = run(vmrtd, pod, linux=sc(seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.RuntimeDefault)))
    assert sh(vmrtd, default, "mkdir /tmp/d && echo ok").stdout == b"ok\n"
    assert b"Seccomp:\t2" in sh(vmrtd, default, "grep Seccomp: /proc/self/status").stdout
    unconfined = run(vmrtd, pod, linux=sc(seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Unconfined)))
    assert b"Seccomp:\t0" in sh(vmrtd, unconfined, "grep Seccomp: /proc/self/status").stdout


def test_pid_namespace_options(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    shared = api.NamespaceOption(pid=api.POD)
    private = api.NamespaceOption(pid=api.CONTAINER)
    run(vmrtd, pod, "sh", "-c", "sleep 301", linux=sc(namespace_options=shared))
    second = run(vmrtd, pod, "sh", "-c", "sleep 302", linux=sc(namespace_options=shared))
    seen = sh(vmrtd, second, "ps -o args").stdout
    assert b"sleep 301" in seen and b"sleep 302" in seen
    own = run(vmrtd, pod, "sh", "-c", "sleep 303", linux=sc(namespace_options=private))
    assert b"sleep 301" not in sh(vmrtd, own, "ps -o args").stdout
    target = run(vmrtd, pod, "sh", "-c", "sleep 304", linux=sc(
        namespace_options=api.NamespaceOption(pid=api.TARGET, target_id=own)))
    assert b"sleep 303" in sh(vmrtd, target, "ps -o args").stdout


def test_mounts_devices_and_stop_signal_escalation(vmrtd: Daemon,
                                                  pod: tuple[str, api.PodSandboxConfig],
                                                  tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("from the host\n")
    config_file = tmp_path / "app.conf"
    config_file.write_text("key=value\n")
    container = run(vmrtd, pod, mounts=[
        api.Mount(container_path="/data", host_path=str(data)),
        api.Mount(container_path="/etc/app.conf", host_path=str(config_file), readonly=True),
    ], devices=[api.Device(container_path="/dev/myzero", host_path="/dev/zero",
                           permissions="rw")])
    assert sh(vmrtd, container, "cat /data/hello.txt").stdout == b"from the host\n"
    assert sh(vmrtd, container, "echo back > /data/out.txt").exit_code == 0
    assert (data / "out.txt").read_text() == "back\n"
    assert sh(vmrtd, container, "cat /etc/app.conf").stdout == b"key=value\n"
    assert sh(vmrtd, container, "echo x >> /etc/app.conf").exit_code != 0
    assert sh(vmrtd, container, "head -c 4 /dev/myzero | wc -c").stdout.strip() == b"4"

    stubborn = run(vmrtd, pod, "sh", "-c",
                   "trap '' TERM; touch /trapped; while true; do sleep 1; done")
    trapped(vmrtd, stubborn)
    started = time.monotonic()
    vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=stubborn, timeout=2))
    assert time.monotonic() - started >= 2
    status = vmrtd.status(stubborn)
    assert status.state == api.CONTAINER_EXITED and status.exit_code == 137
    assert status.stop_signal == api.SIGTERM  # busybox's image names none
    # The config's stop signal is reported and is what StopContainer sends.
    quits = run(vmrtd, pod, "sh", "-c",
                "trap 'exit 42' USR1; touch /trapped; while true; do sleep 1; done",
                stop_signal=api.SIGUSR1)
    trapped(vmrtd, quits)
    assert vmrtd.status(quits).stop_signal == api.SIGUSR1
    vmrtd.runtime.StopContainer(api.StopContainerRequest(container_id=quits, timeout=30))
    assert vmrtd.status(quits).exit_code == 42


def test_readonly_mounts_recursive_or_not_and_nodev_below(
        vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig], tmp_path: Path) -> None:
    """critest's volume: a host directory with a tmpfs mounted inside it."""
    volume = tmp_path / "volume"
    below = volume / "tmpfs"
    below.mkdir(parents=True)
    mounts.mount("tmpfs", below, "tmpfs", 0, "size=1m,mode=0777")  # neither nodev nor nosuid
    inner = below / "inner"  # and one inside that
    inner.mkdir()
    mounts.mount("tmpfs", inner, "tmpfs", 0, "size=1m,mode=0777")
    created: list[str] = []
    try:
        plain = run(vmrtd, pod, mounts=[api.Mount(container_path="/mnt",
                                                  host_path=str(volume), readonly=True)])
        created.append(plain)
        rro = run(vmrtd, pod, mounts=[api.Mount(container_path="/mnt", host_path=str(volume),
                                                readonly=True, recursive_read_only=True)])
        created.append(rro)
        # readonly: the top only, as runc's; the tmpfs below keeps its own mode.
        assert sh(vmrtd, plain, "touch /mnt/tmpfs/from-plain").exit_code == 0
        top = sh(vmrtd, plain, "touch /mnt/top 2>&1")
        assert top.exit_code != 0 and b"Read-only file system" in top.stdout, top
        # recursive_read_only: everything below too.
        deep = sh(vmrtd, rro, "touch /mnt/tmpfs/from-rro 2>&1")
        assert deep.exit_code != 0 and b"Read-only file system" in deep.stdout, deep
        assert sh(vmrtd, plain, "touch /mnt/tmpfs/inner/deeper").exit_code == 0
        assert sorted(p.name for p in below.iterdir()) == ["from-plain", "inner"]
        assert [p.name for p in inner.iterdir()] == ["deeper"]  # in the inner mount itself
        assert not (volume / "top").exists()
        # On the host only the two binds themselves, nodev and nosuid; the tmpfs
        # copies are in QEMU's jail alone, nodev and nosuid there too (QEMU opens
        # what the guest names), read-only under the recursive one.
        share = str((sandbox_dir(vmrtd.state, pod[0]) / "mounts").resolve())
        with open("/proc/self/mountinfo") as f:
            host = [line.split() for line in f]
        ours = [f"{share}/{c}/mounts/" for c in created]
        tops = [p for p in host if any(p[4].startswith(prefix) for prefix in ours)]
        assert len(tops) == 2 and all(p[4].endswith("/mounts/0") for p in tops), tops
        assert all({"nodev", "nosuid", "ro"} <= set(p[5].split(",")) for p in tops), tops
        qemu = vmrtd.pod_info(pod[0])["vm"]["pid"]
        with open(f"/proc/{qemu}/mountinfo") as f:
            jail = [line.split() for line in f if line.split(" - ")[1].startswith("tmpfs ")]
        copies = [p for p in jail if p[4].endswith("/mounts/0/tmpfs")
                  and any(f"/{c}/mounts/" in p[4] for c in created)]
        assert len([p for p in jail if p[4].endswith("/mounts/0/tmpfs/inner")]) == 2, jail
        assert len(copies) == 2, jail
        assert all({"nodev", "nosuid"} <= set(p[5].split(",")) for p in copies), copies
        assert sorted(p[5].split(",")[0] for p in copies) == ["ro", "rw"], copies
        # critest's clean-up: the host removes the directory while the containers
        # live (EBUSY while the host held copies), as it can with runc.
        mounts.unmount(inner, lazy=True)
        mounts.unmount(below, lazy=True)
        below.rmdir()
        handlers = vmrtd.runtime.Status(api.StatusRequest()).runtime_handlers
        assert handlers and all(h.features.recursive_read_only_mounts for h in handlers)
    finally:
        for container_id in created:
            vmrtd.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id))
        for point in (inner, below):
            if point.is_mount():
                mounts.unmount(point, lazy=True)


def test_username_from_the_image(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    container = run(vmrtd, pod, linux=sc(run_as_username="nobody"))
    assert sh(vmrtd, container, "id -u").stdout == b"65534\n"
    pod_id, config = pod
    with pytest.raises(Exception, match="not in the image's /etc/passwd"):
        vmrtd.create(pod_id, config, ["true"], linux=sc(run_as_username="ghost"))
    message = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.create, pod_id, config,
                           ["true"], linux=sc(run_as_group=api.Int64Value(value=100)))
    assert "run_as_group: is set without run_as_user" in message
    grouped = run(vmrtd, pod, linux=sc(run_as_username="nobody",
                                       run_as_group=api.Int64Value(value=100)))
    assert sh(vmrtd, grouped, "id -u; id -g").stdout == b"65534\n100\n"
