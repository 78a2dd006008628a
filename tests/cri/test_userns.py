"""User namespaces: a pod of its own (mode POD) whose root is an unprivileged
uid of the guest, its root filesystem id-mapped on the host; the node's
(mode NODE); and the mappings refused."""

from __future__ import annotations

import os

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, expect_error

pytestmark = pytest.mark.vm


def userns_pod(d: Daemon, mode: int, uids: list[api.IDMapping] | None = None,
               gids: list[api.IDMapping] | None = None) -> api.PodSandboxConfig:
    options = api.NamespaceOption(userns_options=api.UserNamespace(
        mode=mode, uids=uids or [], gids=gids if gids is not None else uids or []))
    return d.pod_config(linux=api.LinuxPodSandboxConfig(
        security_context=api.LinuxSandboxSecurityContext(namespace_options=options)))


def test_a_pod_of_its_own_user_namespace(vmrtd: Daemon) -> None:
    handlers = vmrtd.runtime.Status(api.StatusRequest()).runtime_handlers
    assert handlers and all(h.features.user_namespaces for h in handlers)
    mapping = [api.IDMapping(container_id=0, host_id=100000, length=65536)]
    config = userns_pod(vmrtd, api.POD, mapping)
    pod_id = vmrtd.run_pod(config)
    # As kubelet: the container's namespace options are the pod's.
    own = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
        namespace_options=config.linux.security_context.namespace_options))
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"], linux=own)

    def sh(script: str) -> tuple[int, str]:
        reply = vmrtd.exec(container, ["sh", "-c", script])
        return reply.exit_code, (reply.stdout + reply.stderr).decode()

    code, uid_map = sh("cat /proc/self/uid_map /proc/self/gid_map")
    assert code == 0 and uid_map.split() == ["0", "100000", "65536"] * 2, uid_map
    # Its root owns its root filesystem (id-mapped on the host) and writes to it.
    code, out = sh("id -u; stat -c %u:%g /bin/busybox /; echo x > /made && stat -c %u /made")
    assert code == 0 and out.split() == ["0", "0:0", "0:0", "0"], out
    upper = vmrtd.root / "containers" / container / "upper"
    assert (upper / "made").exists() and os.stat(upper / "made").st_uid == 0
    # ... but it is guest uid 100000: root of nothing outside its namespace.
    code, out = sh("mknod /tmp/mem c 1 1")
    assert code != 0 and "not permitted" in out, out
    code, out = sh("echo 1 > /proc/sys/vm/drop_caches")
    assert code != 0, out
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_the_nodes_user_namespace_and_refused_mappings(vmrtd: Daemon) -> None:
    config = userns_pod(vmrtd, api.NODE)
    pod_id = vmrtd.run_pod(config)
    container = vmrtd.run_container(pod_id, config, ["sleep", "300"])
    assert vmrtd.exec(container, ["cat", "/proc/self/uid_map"]).stdout.split() == [
        b"0", b"0", b"4294967295"]
    vmrtd.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    one = api.IDMapping(container_id=0, host_id=1000, length=100000)
    for bad, problem in [
            (userns_pod(vmrtd, api.POD, [one, api.IDMapping(container_id=0, host_id=2000,
                                                            length=100000)]),
             "exactly one is supported"),
            (userns_pod(vmrtd, api.POD, [api.IDMapping(container_id=1, host_id=1000,
                                                       length=100000)]),
             "container id 0 must be mapped"),
            (userns_pod(vmrtd, api.CONTAINER), "is not supported"),
            (userns_pod(vmrtd, api.TARGET), "is not supported"),
            (userns_pod(vmrtd, api.POD, [one], []), "0 mappings")]:
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, vmrtd.runtime.RunPodSandbox,
                               api.RunPodSandboxRequest(config=bad))
        assert "userns_options" in details and problem in details, details
