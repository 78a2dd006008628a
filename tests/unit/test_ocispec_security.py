"""ocispec.build, the security half: capabilities, privileged, masked and read-only
paths, namespaces, seccomp and AppArmor (vmrt.runtime.ocisecurity).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as api

from tests.helpers.ocispec_build import (
    build,
    dig,
    env_of,
    linux,
    mount_at,
)
from vmrt import oci
from vmrt.errors import InvalidArgumentError
from vmrt.runtime import ocispec
from vmrt.runtime.ocisecurity import ALL_CAPABILITIES

# -- capabilities -----------------------------------------------------------------

DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def caps(add: Sequence[str] = (), drop: Sequence[str] = (),
         ambient: Sequence[str] = ()) -> api.Capability:
    return api.Capability(add_capabilities=add, drop_capabilities=drop,
                          add_ambient_capabilities=ambient)


@pytest.mark.parametrize(("security", "expected"), [
    pytest.param({}, DEFAULT_CAPS, id="default-set"),
    pytest.param({"capabilities": caps(add=["NET_ADMIN"])}, [*DEFAULT_CAPS, "CAP_NET_ADMIN"],
                 id="add"),
    pytest.param({"capabilities": caps(add=["CAP_NET_ADMIN"])},
                 [*DEFAULT_CAPS, "CAP_NET_ADMIN"], id="add-prefixed"),
    pytest.param({"capabilities": caps(add=["sys_time"])}, [*DEFAULT_CAPS, "CAP_SYS_TIME"],
                 id="add-lowercase"),
    pytest.param({"capabilities": caps(add=["CHOWN"])}, DEFAULT_CAPS,
                 id="add-default-not-duplicated"),
    pytest.param({"capabilities": caps(drop=["CHOWN", "KILL"])},
                 [c for c in DEFAULT_CAPS if c not in ("CAP_CHOWN", "CAP_KILL")], id="drop"),
    pytest.param({"capabilities": caps(add=["NET_ADMIN"], drop=["NET_ADMIN"])}, DEFAULT_CAPS,
                 id="drop-beats-add"),
    pytest.param({"capabilities": caps(drop=["ALL"])}, [], id="drop-all"),
    pytest.param({"capabilities": caps(drop=["all"])}, [], id="drop-all-lowercase"),
    pytest.param({"capabilities": caps(add=["NET_BIND_SERVICE"], drop=["ALL"])},
                 ["CAP_NET_BIND_SERVICE"], id="drop-all-add-one"),
    pytest.param({"capabilities": caps(add=["ALL"])}, ALL_CAPABILITIES, id="add-all"),
    pytest.param({"capabilities": caps(add=["ALL"], drop=["SYS_ADMIN"])},
                 [c for c in ALL_CAPABILITIES if c != "CAP_SYS_ADMIN"], id="add-all-drop-one"),
    # containerd and CRI-O: add ALL, then drop ALL, then the single names.
    pytest.param({"capabilities": caps(add=["ALL"], drop=["ALL"])}, [],
                 id="add-all-drop-all"),
    pytest.param({"capabilities": caps(add=["ALL", "CHOWN"], drop=["ALL"])}, ["CAP_CHOWN"],
                 id="add-all-drop-all-add-one"),
    pytest.param({"privileged": True}, ALL_CAPABILITIES, id="privileged"),
    pytest.param({"privileged": True, "capabilities": caps(drop=["ALL"])}, ALL_CAPABILITIES,
                 id="privileged-ignores-drop"),
])
def test_capabilities(security: dict[str, Any], expected: list[str]) -> None:
    process = build(linux=linux(**security))["process"]
    sets = process["capabilities"]
    assert set(sets) == {"bounding", "effective", "permitted"}
    for name in ("bounding", "effective", "permitted"):
        assert sorted(sets[name]) == sorted(expected), name
        assert len(set(sets[name])) == len(sets[name]), f"{name} has duplicates"


@pytest.mark.parametrize(("ambient", "expected"), [
    pytest.param(["NET_BIND_SERVICE"], ["CAP_NET_BIND_SERVICE"], id="one"),
    pytest.param(["cap_net_raw", "KILL"], ["CAP_NET_RAW", "CAP_KILL"], id="names-normalised"),
])
def test_ambient_capabilities(ambient: list[str], expected: list[str]) -> None:
    sets = build(linux=linux(capabilities=caps(ambient=ambient)))["process"]["capabilities"]
    assert sets["ambient"] == expected
    assert sets["inheritable"] == expected
    assert sorted(sets["bounding"]) == sorted(DEFAULT_CAPS)


@pytest.mark.parametrize("security", [
    {"capabilities": caps(add=["NOT_A_CAP"])},
    {"capabilities": caps(drop=["CAP_FLY"])},
])
def test_unknown_capability_is_invalid(security: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown capability"):
        build(linux=linux(**security))


# -- privileged, read-only rootfs, no_new_privs, masked and read-only paths ---------

DEFAULT_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                  "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                  "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                  "/sys/devices/virtual/powercap"]
DEFAULT_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
RDEFAULT = api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)


@pytest.mark.parametrize(("config", "path", "expected"), [
    # Privileged: no masked or read-only paths, no seccomp, every device, rw /sys.
    pytest.param({"linux": linux(privileged=True)}, "linux.maskedPaths", [],
                 id="privileged-no-masked"),
    pytest.param({"linux": linux(privileged=True)}, "linux.readonlyPaths", [],
                 id="privileged-no-readonly"),
    pytest.param({"linux": linux(privileged=True, masked_paths=["/proc/x"],
                                 readonly_paths=["/proc/y"])}, "linux.maskedPaths", [],
                 id="privileged-ignores-masked-paths"),
    pytest.param({"linux": linux(privileged=True)}, "linux.resources.devices",
                 [{"allow": True, "access": "rwm"}], id="privileged-all-devices"),
    pytest.param({"linux": linux(privileged=True)}, "mounts:/sys",
                 {"type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev"]},
                 id="privileged-sys-rw"),
    pytest.param({"linux": linux(privileged=True)}, "mounts:/sys/fs/cgroup",
                 {"type": "cgroup", "source": "cgroup",
                  "options": ["nosuid", "noexec", "nodev", "relatime"]},
                 id="privileged-cgroup-rw"),
    pytest.param({"linux": linux(privileged=True, readonly_rootfs=True)}, "root",
                 {"path": "rootfs", "readonly": True}, id="privileged-keeps-readonly-rootfs"),
    pytest.param({"linux": linux(privileged=True, no_new_privs=True)},
                 "process.noNewPrivileges", True, id="privileged-keeps-no-new-privs"),
    # Unprivileged defaults.
    pytest.param({}, "linux.maskedPaths", DEFAULT_MASKED, id="default-masked"),
    pytest.param({}, "linux.readonlyPaths", DEFAULT_READONLY, id="default-readonly"),
    pytest.param({}, "mounts:/sys",
                 {"type": "sysfs", "source": "sysfs",
                  "options": ["nosuid", "noexec", "nodev", "ro"]}, id="sys-ro"),
    pytest.param({"linux": linux(masked_paths=["/proc/a", "/sys/b"])}, "linux.maskedPaths",
                 ["/proc/a", "/sys/b"], id="cri-masked-paths"),
    pytest.param({"linux": linux(masked_paths=["/proc/a"])}, "linux.readonlyPaths",
                 DEFAULT_READONLY, id="cri-masked-keeps-default-readonly"),
    pytest.param({"linux": linux(readonly_paths=["/proc/c"])}, "linux.readonlyPaths",
                 ["/proc/c"], id="cri-readonly-paths"),
    pytest.param({"linux": linux(readonly_paths=["/proc/c"])}, "linux.maskedPaths",
                 DEFAULT_MASKED, id="cri-readonly-keeps-default-masked"),
    # Root filesystem.
    pytest.param({}, "root", {"path": "rootfs", "readonly": False}, id="rootfs-rw"),
    pytest.param({"linux": linux(readonly_rootfs=True)}, "root",
                 {"path": "rootfs", "readonly": True}, id="rootfs-ro"),
    pytest.param({"linux": linux(readonly_rootfs=True)}, "mounts:/etc/hosts",
                 {"type": "bind", "source": "vmrt-pod:hosts",
                  "options": ["rbind", "rprivate", "ro"]}, id="rootfs-ro-etc-hosts-ro"),
    pytest.param({"linux": linux(readonly_rootfs=True)}, "mounts:/etc/resolv.conf",
                 {"type": "bind", "source": "vmrt-pod:resolv.conf",
                  "options": ["rbind", "rprivate", "ro"]}, id="rootfs-ro-resolv-conf-ro"),
    pytest.param({"linux": linux(readonly_rootfs=True)}, "mounts:/etc/hostname",
                 {"type": "bind", "source": "vmrt-pod:hostname",
                  "options": ["rbind", "rprivate", "ro"]}, id="rootfs-ro-hostname-ro"),
    # no_new_privs (kubelet: !allowPrivilegeEscalation).
    pytest.param({}, "process.noNewPrivileges", False, id="no-new-privs-off"),
    pytest.param({"linux": linux(no_new_privs=True)}, "process.noNewPrivileges", True,
                 id="no-new-privs-on"),
    # Spec basics.
    pytest.param({}, "ociVersion", "1.0.2", id="oci-version"),
    pytest.param({}, "process.terminal", False, id="no-tty"),
    pytest.param({"tty": True}, "process.terminal", True, id="tty"),
    pytest.param({"annotations": {"a": "1", "io.kubernetes.x/y": "z"}}, "annotations",
                 {"a": "1", "io.kubernetes.x/y": "z"}, id="annotations"),
    pytest.param({}, "annotations", {}, id="no-annotations"),
    pytest.param({"pod": api.PodSandboxConfig(hostname="web-0")}, "hostname", "web-0",
                 id="hostname-from-pod"),
])
def test_fragment(config: dict[str, Any], path: str, expected: Any) -> None:
    spec = build(**config)
    if path.startswith("mounts:"):
        assert mount_at(spec, path[len("mounts:"):]) == expected
    else:
        assert dig(spec, path) == expected


@pytest.mark.parametrize("security", [{}, {"readonly_rootfs": True}])
def test_unprivileged_has_no_device_rule(security: dict[str, Any]) -> None:
    spec = build(linux=linux(**security))
    assert "devices" not in spec["linux"]["resources"]
    assert "devices" not in spec["linux"]


def test_hostname_defaults_to_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocispec.socket, "gethostname", lambda: "node-7")
    spec = build(pod=api.PodSandboxConfig())
    assert spec["hostname"] == "node-7"
    assert env_of(spec)["HOSTNAME"] == "node-7"


def test_pod_sysctls_are_not_in_the_container_spec() -> None:
    # The agent sets them VM-wide (the VM is the pod's network namespace) and
    # in the pod's IPC namespace holder, at SetupSandbox.
    pod = api.PodSandboxConfig(hostname="h", linux=api.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"}))
    spec = build(pod=pod)
    assert "sysctl" not in spec["linux"]
    assert "net.ipv4.ip_forward" not in json.dumps(spec)


# -- namespaces -------------------------------------------------------------------

N = api.NamespaceOption
BASE_NS = [{"type": "mount"}, {"type": "uts"}, {"type": "cgroup"}]
POD_PID = {"type": "pid", "path": "vmrt:pod"}
POD_IPC = {"type": "ipc", "path": "vmrt:pod"}


@pytest.mark.parametrize(("options", "namespaces"), [
    pytest.param(N(), [*BASE_NS, POD_PID, POD_IPC], id="zero-value-is-pod"),
    pytest.param(N(pid=api.CONTAINER, ipc=api.POD, network=api.POD),
                 [*BASE_NS, {"type": "pid"}, POD_IPC], id="kubelet-default"),
    pytest.param(N(pid=api.POD), [*BASE_NS, POD_PID, POD_IPC], id="share-process-namespace"),
    pytest.param(N(pid=api.NODE, ipc=api.NODE, network=api.NODE), BASE_NS,
                 id="host-pid-ipc-network-are-the-vm"),
    pytest.param(N(pid=api.TARGET, target_id="abc123"),
                 [*BASE_NS, {"type": "pid", "path": "vmrt:container:abc123"}, POD_IPC],
                 id="target-pid"),
    pytest.param(N(pid=api.CONTAINER, ipc=api.CONTAINER),
                 [*BASE_NS, {"type": "pid"}, {"type": "ipc"}], id="own-ipc"),
    pytest.param(N(pid=api.CONTAINER, network=api.CONTAINER),
                 [*BASE_NS, {"type": "pid"}, POD_IPC], id="network-is-always-the-vm"),
])
def test_namespaces(options: api.NamespaceOption, namespaces: list[dict[str, str]]) -> None:
    spec = build(linux=linux(namespace_options=options))
    assert spec["linux"]["namespaces"] == namespaces


def test_target_pid_needs_target_id() -> None:
    with pytest.raises(InvalidArgumentError, match="target_id"):
        build(linux=linux(namespace_options=N(pid=api.TARGET)))


# -- seccomp and AppArmor ---------------------------------------------------------

SP = api.SecurityProfile
ALWAYS_DENIED = {"add_key", "request_key", "keyctl", "userfaultfd", "uselib", "vhangup",
                 "get_mempolicy", "set_mempolicy", "mbind", "move_pages"}


@pytest.mark.parametrize(("security", "denied", "allowed"), [
    pytest.param({}, None, None, id="unset-unconfined"),
    pytest.param({"seccomp": SP(profile_type=SP.Unconfined)}, None, None, id="unconfined"),
    pytest.param({"seccomp": SP()}, {"mount", "ptrace", "reboot", "keyctl", "init_module"},
                 {"read", "clone"}, id="zero-value-is-runtime-default"),
    pytest.param({"seccomp": RDEFAULT, "capabilities": caps(add=["SYS_ADMIN"])},
                 {"keyctl", "ptrace"}, {"mount", "unshare", "setns"},
                 id="runtime-default-follows-added-caps"),
    pytest.param({"seccomp": RDEFAULT, "capabilities": caps(add=["SYS_PTRACE"])},
                 {"mount"}, {"ptrace", "process_vm_readv"}, id="runtime-default-ptrace"),
    pytest.param({"seccomp_profile_path": "runtime/default"}, {"mount", "keyctl"}, set(),
                 id="legacy-runtime-default"),
    pytest.param({"seccomp_profile_path": "docker/default"}, {"mount", "keyctl"}, set(),
                 id="legacy-docker-default"),
    pytest.param({"seccomp_profile_path": "unconfined"}, None, None, id="legacy-unconfined"),
    pytest.param({"seccomp": SP(profile_type=SP.Unconfined),
                  "seccomp_profile_path": "runtime/default"}, None, None,
                 id="field-beats-legacy-path"),
    pytest.param({"seccomp": RDEFAULT, "privileged": True}, None, None,
                 id="privileged-unconfined"),
])
def test_seccomp(security: dict[str, Any], denied: set[str] | None,
                 allowed: set[str] | None) -> None:
    spec = build(linux=linux(**security))
    if denied is None:
        assert "seccomp" not in spec["linux"]
        return
    profile = spec["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "SCMP_ARCH_X86_64" in profile["architectures"]
    [rule] = profile["syscalls"]
    assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 1
    assert denied <= set(rule["names"])
    assert not (allowed or set()) & set(rule["names"])


def test_runtime_default_with_all_caps_denies_only_the_always_denied() -> None:
    spec = build(linux=linux(seccomp=RDEFAULT, capabilities=caps(add=["ALL"])))
    assert set(spec["linux"]["seccomp"]["syscalls"][0]["names"]) == ALWAYS_DENIED


@pytest.mark.parametrize("apparmor", [SP(profile_type=SP.RuntimeDefault),
                                      SP(profile_type=SP.Unconfined)])
def test_apparmor_is_not_enforced_in_the_guest(apparmor: api.SecurityProfile) -> None:
    # The guest kernel has no AppArmor: the spec names no profile.
    spec = build(linux=linux(apparmor=apparmor, apparmor_profile="runtime/default"))
    assert "apparmorProfile" not in spec["process"]


@pytest.mark.parametrize(("profile", "expected"), [
    pytest.param(
        {"defaultAction": "SCMP_ACT_ERRNO",
         "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
         "syscalls": [{"name": "read", "action": "SCMP_ACT_ALLOW"},
                      {"names": ["write", "exit"], "action": "SCMP_ACT_ALLOW", "args": [],
                       "comment": "dropped"}]},
        {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
         "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                      {"names": ["write", "exit"], "action": "SCMP_ACT_ALLOW", "args": []}]},
        id="docker-form"),
    pytest.param(
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
         "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]},
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
         "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]},
        id="oci-form"),
    pytest.param(
        {"defaultAction": "SCMP_ACT_LOG"},
        {"defaultAction": "SCMP_ACT_LOG",
         "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
         "syscalls": []},
        id="no-arches-no-rules"),
])
@pytest.mark.parametrize("field", ["seccomp", "seccomp_profile_path"])
def test_localhost_seccomp(tmp_path: Path, field: str, profile: dict[str, Any],
                           expected: dict[str, Any]) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    if field == "seccomp":
        security: dict[str, Any] = {
            "seccomp": SP(profile_type=SP.Localhost, localhost_ref=str(path))}
    else:
        security = {"seccomp_profile_path": f"localhost/{path}"}
    assert build(linux=linux(**security))["linux"]["seccomp"] == expected


@pytest.mark.parametrize(("name", "content", "match"), [
    pytest.param(None, None, "must be an absolute path", id="relative"),
    pytest.param("missing.json", None, "does not exist", id="missing"),
    pytest.param("dir", "DIR", "is not a regular file", id="directory"),
    pytest.param("fifo", "FIFO", "is not a regular file", id="fifo"),
    pytest.param("p.json", b"{not json", "is not JSON", id="not-json"),
    pytest.param("p.json", b"[1, 2]", "has no defaultAction", id="json-list"),
    pytest.param("p.json", b'{"syscalls": []}', "has no defaultAction", id="no-default-action"),
    pytest.param("p.json", b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"]}]}',
                 "is malformed", id="rule-without-action"),
    pytest.param("p.json", b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [7]}',
                 "is malformed", id="rule-not-an-object"),
    pytest.param("big.json", b" " * (1024 * 1024) + b'{"defaultAction": "SCMP_ACT_ALLOW"}',
                 "is larger than", id="too-large"),
])
def test_localhost_seccomp_errors(tmp_path: Path, name: str | None, content: Any,
                                  match: str) -> None:
    if name is None:
        ref = "profiles/p.json"
    else:
        ref = str(tmp_path / name)
        if content == "DIR":
            os.mkdir(ref)
        elif content == "FIFO":
            os.mkfifo(ref)
        elif content is not None:
            Path(ref).write_bytes(content)
    with pytest.raises(InvalidArgumentError, match=match):
        build(linux=linux(seccomp=SP(profile_type=SP.Localhost, localhost_ref=ref)))


def test_default_constants_match_containerd() -> None:
    # The expectations above are written out; these are the module's copies.
    assert oci.DEFAULT_CAPABILITIES == DEFAULT_CAPS
    assert oci.MASKED_PATHS == DEFAULT_MASKED
    assert oci.READONLY_PATHS == DEFAULT_READONLY
