"""ocispec.build: CRI ContainerConfig + PodSandboxConfig + image config -> OCI runtime spec.

Each table row is CRI input -> the fragment of the spec it must produce. The
expectations are the CRI's and kubelet's (command/args over Entrypoint/Cmd,
env order, users), containerd's where the CRI leaves it to the runtime
(capabilities, default mounts) and vmrt's intents for what only the guest can
resolve (vmrt-pod:, vmrt-share:, vmrt:pod namespace paths).
"""

from __future__ import annotations

from typing import Any

import pytest
from cri_api.v1 import api_pb2 as api

from tests.helpers.ocispec_build import (
    DEFAULT_PATH,
    FILES,
    IMAGE,
    build,
    env_of,
    linux,
    mount_at,
)
from vmrt.errors import InvalidArgumentError
from vmrt.runtime import ocispec

# -- command and args -------------------------------------------------------------

@pytest.mark.parametrize(("command", "args", "image", "argv"), [
    pytest.param([], [], {"Entrypoint": ["/ep", "-v"], "Cmd": ["run"]}, ["/ep", "-v", "run"],
                 id="image-entrypoint-and-cmd"),
    pytest.param(["/bin/sh"], [], {"Entrypoint": ["/ep"], "Cmd": ["run"]}, ["/bin/sh"],
                 id="command-replaces-entrypoint-and-drops-cmd"),
    pytest.param([], ["-x"], {"Entrypoint": ["/ep"], "Cmd": ["run"]}, ["/ep", "-x"],
                 id="args-replace-cmd-keep-entrypoint"),
    pytest.param(["/bin/sh"], ["-c", "true"], {"Entrypoint": ["/ep"], "Cmd": ["run"]},
                 ["/bin/sh", "-c", "true"], id="command-and-args"),
    pytest.param([], ["/bin/echo", "hi"], {"Cmd": ["run"]}, ["/bin/echo", "hi"],
                 id="args-without-image-entrypoint"),
    pytest.param([], [], {"Cmd": ["/bin/sh"]}, ["/bin/sh"], id="image-cmd-only"),
    pytest.param([], [], {"Entrypoint": None, "Cmd": ["/bin/sh"]}, ["/bin/sh"],
                 id="image-entrypoint-null"),
    pytest.param([], [], {"Entrypoint": ["/ep"], "Cmd": None}, ["/ep"], id="image-cmd-null"),
    pytest.param(["/bin/true"], [], {}, ["/bin/true"], id="command-on-image-without-either"),
])
def test_process_args(command: list[str], args: list[str], image: dict[str, Any],
                      argv: list[str]) -> None:
    assert build(image=image, command=command, args=args)["process"]["args"] == argv


@pytest.mark.parametrize("image", [{}, {"Entrypoint": [], "Cmd": []},
                                   {"Entrypoint": None, "Cmd": None}])
def test_no_command_anywhere_is_invalid(image: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match="command"):
        build(image=image)


# -- environment ------------------------------------------------------------------

E = api.KeyValue


@pytest.mark.parametrize(("image_env", "envs", "extra", "env"), [
    pytest.param([], [], {}, [f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "HOME=/root"],
                 id="defaults"),
    pytest.param(["PATH=/img/bin", "A=1"], [], {},
                 ["PATH=/img/bin", "A=1", "HOSTNAME=pod-host", "HOME=/root"],
                 id="image-path-kept"),
    pytest.param(["A=1", "B=2"], [E(key="B", value="3"), E(key="C", value="4")], {},
                 ["A=1", "B=3", f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "C=4",
                  "HOME=/root"], id="cri-env-after-image-env-later-wins"),
    pytest.param(["PATH=/img/bin"], [E(key="PATH", value="/cri/bin")], {},
                 ["PATH=/cri/bin", "HOSTNAME=pod-host", "HOME=/root"], id="cri-path-wins"),
    pytest.param([], [E(key="HOSTNAME", value="mine")], {},
                 [f"PATH={DEFAULT_PATH}", "HOSTNAME=mine", "HOME=/root"],
                 id="cri-hostname-wins"),
    pytest.param(["HOME=/img"], [], {}, ["HOME=/img", f"PATH={DEFAULT_PATH}",
                                         "HOSTNAME=pod-host"], id="image-home-beats-passwd"),
    pytest.param([], [E(key="HOME", value="/cri")], {},
                 [f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "HOME=/cri"],
                 id="cri-home-beats-passwd"),
    pytest.param([], [], {"linux": linux(run_as_user=api.Int64Value(value=1000))},
                 [f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "HOME=/home/app"],
                 id="home-from-run-as-user-passwd"),
    pytest.param([], [], {"files": {}},
                 [f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "HOME=/"],
                 id="home-slash-without-passwd"),
    pytest.param(["Q=a=b"], [E(key="R", value="c=d=")], {},
                 ["Q=a=b", f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "R=c=d=", "HOME=/root"],
                 id="values-keep-equals-signs"),
    pytest.param([], [E(key="EMPTY", value="")], {},
                 [f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "EMPTY=", "HOME=/root"],
                 id="empty-value"),
    pytest.param([], [], {"tty": True},
                 [f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "HOME=/root", "TERM=xterm"],
                 id="tty-sets-term"),
    pytest.param(["TERM=vt100"], [], {"tty": True},
                 ["TERM=vt100", f"PATH={DEFAULT_PATH}", "HOSTNAME=pod-host", "HOME=/root"],
                 id="tty-keeps-image-term"),
])
def test_environment(image_env: list[str], envs: list[api.KeyValue], extra: dict[str, Any],
                     env: list[str]) -> None:
    spec = build(image={**IMAGE, "Env": image_env}, envs=envs, **extra)
    assert spec["process"]["env"] == env


def test_environment_empty_name_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="empty name"):
        build(envs=[E(key="", value="x")])


# -- working directory ------------------------------------------------------------

@pytest.mark.parametrize(("working_dir", "image_dir", "cwd"), [
    pytest.param("/work", "/img", "/work", id="cri-wins"),
    pytest.param("", "/img", "/img", id="image"),
    pytest.param("", None, "/", id="neither"),
    pytest.param("", "", "/", id="image-empty"),
])
def test_working_dir(working_dir: str, image_dir: str | None, cwd: str) -> None:
    image = {**IMAGE, "WorkingDir": image_dir}
    assert build(image=image, working_dir=working_dir)["process"]["cwd"] == cwd


@pytest.mark.parametrize(("working_dir", "image_dir"), [("work", None), ("", "rel/dir")])
def test_relative_working_dir_is_invalid(working_dir: str, image_dir: str | None) -> None:
    with pytest.raises(InvalidArgumentError, match="absolute"):
        build(image={**IMAGE, "WorkingDir": image_dir}, working_dir=working_dir)


# -- user, groups -----------------------------------------------------------------

U = api.Int64Value


@pytest.mark.parametrize(("security", "image_user", "files", "user"), [
    pytest.param({}, "", FILES, (0, 0, [0, 10], "/root"), id="image-default-root"),
    pytest.param({}, "app", FILES, (1000, 1000, [1000, 10, 50], "/home/app"), id="image-user-name"),
    pytest.param({}, "1000", FILES, (1000, 1000, [1000, 10, 50], "/home/app"), id="image-user-uid"),
    pytest.param({}, "app:staff", FILES, (1000, 50, [50, 10], "/home/app"),
                 id="image-user-and-group-name"),
    pytest.param({}, "app:60", FILES, (1000, 60, [60, 10, 50], "/home/app"),
                 id="image-user-and-gid"),
    pytest.param({}, "4242", FILES, (4242, 0, [0], "/"), id="image-uid-not-in-passwd"),
    pytest.param({}, "4242:4242", FILES, (4242, 4242, [4242], "/"), id="image-uid-gid-no-passwd"),
    pytest.param({}, "", {}, (0, 0, [0], "/"), id="no-passwd-no-group"),
    pytest.param({}, "nohome", FILES, (1002, 1002, [1002], "/"), id="passwd-home-empty"),
    pytest.param({"run_as_user": U(value=1001)}, "", FILES, (1001, 2000, [2000, 50, 63], "/srv"),
                 id="run-as-user"),
    pytest.param({"run_as_user": U(value=0)}, "app", FILES, (0, 0, [0, 10], "/root"),
                 id="run-as-user-0-beats-image-user"),
    pytest.param({"run_as_user": U(value=1000)}, "svc:audio", FILES,
                 (1000, 1000, [1000, 10, 50], "/home/app"), id="run-as-user-ignores-image-group"),
    pytest.param({"run_as_user": U(value=4242)}, "", FILES, (4242, 0, [0], "/"),
                 id="run-as-user-not-in-passwd"),
    pytest.param({"run_as_user": U(value=1000), "run_as_group": U(value=3000)}, "", FILES,
                 (1000, 3000, [3000, 10, 50], "/home/app"), id="run-as-user-and-group"),
    pytest.param({"run_as_user": U(value=1000), "run_as_group": U(value=0)}, "app:staff",
                 FILES, (1000, 0, [0, 10, 50], "/home/app"), id="run-as-group-0"),
    pytest.param({"run_as_username": "app"}, "", FILES, (1000, 1000, [1000, 10, 50], "/home/app"),
                 id="run-as-username"),
    pytest.param({"run_as_username": "svc"}, "app:staff", FILES,
                 (1001, 2000, [2000, 50, 63], "/srv"), id="run-as-username-ignores-image"),
    pytest.param({"run_as_username": "app", "run_as_group": U(value=7)}, "", FILES,
                 (1000, 7, [7, 10, 50], "/home/app"), id="run-as-username-and-group"),
    pytest.param({"run_as_user": U(value=1000), "supplemental_groups": [5000, 10]}, "", FILES,
                 (1000, 1000, [1000, 10, 50, 5000], "/home/app"), id="supplemental-groups-merged"),
    pytest.param({"run_as_user": U(value=1000), "supplemental_groups": [1000]}, "", FILES,
                 (1000, 1000, [1000, 10, 50], "/home/app"), id="supplemental-primary-once"),
    pytest.param({"run_as_user": U(value=1000), "supplemental_groups": [5000],
                  "supplemental_groups_policy": api.Strict}, "", FILES,
                 (1000, 1000, [1000, 5000], "/home/app"), id="strict-only-explicit-groups"),
    pytest.param({"run_as_user": U(value=1000), "supplemental_groups_policy": api.Strict},
                 "", FILES, (1000, 1000, [1000], "/home/app"), id="strict-no-groups"),
    pytest.param({"supplemental_groups": [7, 8]}, "4242", FILES, (4242, 0, [0, 7, 8], "/"),
                 id="supplemental-for-unknown-user"),
])
def test_user(security: dict[str, Any], image_user: str, files: dict[str, bytes],
              user: tuple[int, int, list[int], str]) -> None:
    spec = build(image={**IMAGE, "User": image_user}, files=files, linux=linux(**security))
    uid, gid, additional, home = user
    assert spec["process"]["user"] == {"uid": uid, "gid": gid, "additionalGids": additional}
    assert env_of(spec)["HOME"] == home


def test_image_user_null_is_root() -> None:
    # The OCI image config's User is an optional string: null is no user.
    spec = build(image={**IMAGE, "User": None})
    assert spec["process"]["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


@pytest.mark.parametrize(("security", "image_user", "match"), [
    pytest.param({}, "ghost", "'ghost' is not in the image's /etc/passwd", id="image-user"),
    pytest.param({"run_as_username": "ghost"}, "", "run_as_username", id="run-as-username"),
    pytest.param({}, "app:nogroup", "'nogroup' is not in its /etc/group", id="image-group"),
    pytest.param({"run_as_group": U(value=5)}, "app", "run_as_group: is set without",
                 id="run-as-group-alone"),
])
def test_user_errors(security: dict[str, Any], image_user: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        build(image={**IMAGE, "User": image_user}, linux=linux(**security))


# -- mounts -----------------------------------------------------------------------

POD_SHM = {"type": "bind", "source": "vmrt-pod:shm",
           "options": ["rbind", "nosuid", "nodev", "noexec"]}
PRIVATE_SHM = {"type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}
DEFAULT_MOUNTS = {
    "/proc": {"type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    "/dev": {"type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    "/dev/pts": {"type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                             "gid=5"]},
    "/dev/shm": POD_SHM,
    "/dev/mqueue": {"type": "mqueue", "source": "mqueue",
                    "options": ["nosuid", "noexec", "nodev"]},
    "/sys": {"type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    "/sys/fs/cgroup": {"type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    "/etc/hostname": {"type": "bind", "source": "vmrt-pod:hostname",
                      "options": ["rbind", "rprivate"]},
    "/etc/hosts": {"type": "bind", "source": "vmrt-pod:hosts", "options": ["rbind", "rprivate"]},
    "/etc/resolv.conf": {"type": "bind", "source": "vmrt-pod:resolv.conf",
                         "options": ["rbind", "rprivate"]},
}


def assert_parents_first(mounts: list[dict[str, Any]]) -> None:
    seen: list[str] = []
    for m in mounts:
        for earlier in seen:
            assert not earlier.startswith(m["destination"].rstrip("/") + "/"), (
                f"{m['destination']} comes after its child {earlier}")
        seen.append(m["destination"])


@pytest.mark.parametrize("destination", list(DEFAULT_MOUNTS))
def test_default_mounts(destination: str) -> None:
    assert mount_at(build(), destination) == DEFAULT_MOUNTS[destination]


def test_default_mounts_are_all_there_once_parents_first() -> None:
    mounts = build()["mounts"]
    assert sorted(m["destination"] for m in mounts) == sorted(DEFAULT_MOUNTS)
    assert_parents_first(mounts)


@pytest.mark.parametrize(("ipc", "shm"), [
    pytest.param(api.POD, POD_SHM, id="pod-ipc-shares-pod-shm"),
    pytest.param(api.CONTAINER, PRIVATE_SHM, id="own-ipc-own-shm"),
])
def test_dev_shm(ipc: int, shm: dict[str, Any]) -> None:
    spec = build(linux=linux(namespace_options=api.NamespaceOption(pid=api.CONTAINER, ipc=ipc)))
    assert mount_at(spec, "/dev/shm") == shm


SM = ocispec.SharedMount


@pytest.mark.parametrize(("readonly", "propagation", "options"), [
    pytest.param(False, api.PROPAGATION_PRIVATE, ["rbind", "rprivate"], id="rw-private"),
    pytest.param(True, api.PROPAGATION_PRIVATE, ["rbind", "rprivate", "ro"], id="ro-private"),
    pytest.param(False, api.PROPAGATION_HOST_TO_CONTAINER, ["rbind", "rslave"],
                 id="host-to-container-rslave"),
    pytest.param(True, api.PROPAGATION_HOST_TO_CONTAINER, ["rbind", "rslave", "ro"],
                 id="ro-rslave"),
    pytest.param(False, api.PROPAGATION_BIDIRECTIONAL, ["rbind", "rshared"],
                 id="bidirectional-rshared"),
    pytest.param(False, 99, ["rbind", "rprivate"], id="unknown-propagation-private"),
])
def test_cri_mount(readonly: bool, propagation: int, options: list[str]) -> None:
    spec = build(shared=[SM("/data", "cid/mounts/0", readonly, propagation)])
    assert mount_at(spec, "/data") == {"type": "bind", "source": "vmrt-share:cid/mounts/0",
                                       "options": options}


@pytest.mark.parametrize("destination", ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname",
                                         "/dev/shm", "/sys", "/dev"])
def test_cri_mount_replaces_a_default_one(destination: str) -> None:
    spec = build(shared=[SM(destination, "cid/mounts/0", True, api.PROPAGATION_PRIVATE)])
    assert mount_at(spec, destination) == {"type": "bind", "source": "vmrt-share:cid/mounts/0",
                                           "options": ["rbind", "rprivate", "ro"]}


def test_cri_mount_is_not_made_readonly_by_readonly_rootfs() -> None:
    spec = build(linux=linux(readonly_rootfs=True),
                 shared=[SM("/cache", "cid/mounts/0", False, api.PROPAGATION_PRIVATE)])
    assert mount_at(spec, "/cache")["options"] == ["rbind", "rprivate"]


def test_cri_mounts_come_after_their_parents() -> None:
    shared = [SM("/data/a/b", "m/2", False, 0), SM("/data", "m/0", False, 0),
              SM("/dev/fuse-dir", "m/3", False, 0), SM("/data/a", "m/1", False, 0)]
    mounts = build(shared=shared)["mounts"]
    assert_parents_first(mounts)
    data = [m["source"] for m in mounts if m["destination"].startswith("/data")]
    assert data == ["vmrt-share:m/0", "vmrt-share:m/1", "vmrt-share:m/2"]
    assert mount_at({"mounts": mounts}, "/dev/fuse-dir")["source"] == "vmrt-share:m/3"


def test_selinux_relabel_is_ignored() -> None:
    # No SELinux in the guest: a relabel request changes nothing.
    shared = [SM("/data", "cid/mounts/0", False, api.PROPAGATION_PRIVATE)]
    specs = [build(shared=shared, mounts=[api.Mount(container_path="/data", host_path="/srv/d",
                                                    selinux_relabel=relabel)])
             for relabel in (False, True)]
    assert specs[0] == specs[1]
    assert mount_at(specs[1], "/data") == {"type": "bind", "source": "vmrt-share:cid/mounts/0",
                                           "options": ["rbind", "rprivate"]}


# -- resources --------------------------------------------------------------------

R = api.LinuxContainerResources
GIB = 1 << 30


@pytest.mark.parametrize(("resources", "expected"), [
    pytest.param(R(), {}, id="none"),
    pytest.param(R(cpu_shares=512), {"cpu": {"shares": 512}}, id="shares"),
    pytest.param(R(cpu_quota=50000, cpu_period=100000),
                 {"cpu": {"quota": 50000, "period": 100000}}, id="quota-period"),
    pytest.param(R(cpu_quota=-1), {"cpu": {"quota": -1}}, id="quota-unlimited"),
    pytest.param(R(cpuset_cpus="0-1", cpuset_mems="0"), {"cpu": {"cpus": "0-1", "mems": "0"}},
                 id="cpuset"),
    pytest.param(R(cpu_shares=2, cpu_quota=20000, cpu_period=100000, cpuset_cpus="1"),
                 {"cpu": {"shares": 2, "quota": 20000, "period": 100000, "cpus": "1"}},
                 id="all-cpu"),
    pytest.param(R(memory_limit_in_bytes=GIB), {"memory": {"limit": GIB}}, id="memory"),
    pytest.param(R(memory_limit_in_bytes=GIB, memory_swap_limit_in_bytes=2 * GIB),
                 {"memory": {"limit": GIB, "swap": 2 * GIB}}, id="memory-and-swap"),
    pytest.param(R(memory_limit_in_bytes=GIB, memory_swap_limit_in_bytes=-1),
                 {"memory": {"limit": GIB, "swap": -1}}, id="swap-unlimited"),
    pytest.param(R(hugepage_limits=[api.HugepageLimit(page_size="2MB", limit=4 << 20),
                                    api.HugepageLimit(page_size="1GB", limit=GIB)]),
                 {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20},
                                     {"pageSize": "1GB", "limit": GIB}]}, id="hugepages"),
    pytest.param(R(unified={"memory.high": "500000000", "pids.max": "100"}),
                 {"unified": {"memory.high": "500000000", "pids.max": "100"}}, id="unified"),
    pytest.param(R(oom_score_adj=-997), {}, id="oom-not-a-cgroup-setting"),
])
def test_resources(resources: api.LinuxContainerResources, expected: dict[str, Any]) -> None:
    spec = build(linux=linux(resources))
    assert spec["linux"]["resources"] == expected
    # UpdateContainerResources sends the same translation to the agent.
    assert ocispec.resources(resources) == expected


@pytest.mark.parametrize(("oom_score_adj", "expected"), [
    pytest.param(-997, -997, id="guaranteed"),
    pytest.param(1000, 1000, id="best-effort"),
    pytest.param(500, 500, id="burstable"),
])
def test_oom_score_adj(oom_score_adj: int, expected: int) -> None:
    process = build(linux=linux(R(oom_score_adj=oom_score_adj)))["process"]
    assert process["oomScoreAdj"] == expected


def test_oom_score_adj_zero_is_left_out() -> None:
    # Unset in the spec: the container keeps the agent's score, which is 0.
    assert "oomScoreAdj" not in build()["process"]


def test_privileged_device_rule_joins_resources() -> None:
    spec = build(linux=linux(R(memory_limit_in_bytes=GIB), privileged=True))
    assert spec["linux"]["resources"] == {"memory": {"limit": GIB},
                                          "devices": [{"allow": True, "access": "rwm"}]}


# -- devices ----------------------------------------------------------------------

D = api.Device


@pytest.mark.parametrize(("devices", "expected"), [
    pytest.param([D(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rw")],
                 [{"path": "/dev/fuse", "vmrtGuestPath": "/dev/fuse", "vmrtAccess": "rw"}],
                 id="one"),
    pytest.param([D(container_path="/dev/xvdc", host_path="/dev/vdb")],
                 [{"path": "/dev/xvdc", "vmrtGuestPath": "/dev/vdb", "vmrtAccess": "rwm"}],
                 id="renamed-default-access"),
])
def test_devices(devices: list[api.Device], expected: list[dict[str, Any]]) -> None:
    assert build(devices=devices)["linux"]["devices"] == expected


@pytest.mark.parametrize("device", [D(container_path="dev/x", host_path="/dev/x"),
                                    D(container_path="/dev/x", host_path="x")])
def test_relative_device_path_is_invalid(device: api.Device) -> None:
    with pytest.raises(InvalidArgumentError, match="must be absolute"):
        build(devices=[device])
