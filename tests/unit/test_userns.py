"""User namespaces: the mappings accepted and refused, the layers' mapping, the spec."""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2 as api

from tests.helpers.ocispec_build import build
from vmrt.cri import validate
from vmrt.errors import InvalidArgumentError
from vmrt.sandbox import userns


def options(mode: int, *ranges: tuple[int, int, int]) -> api.UserNamespace:
    mappings = [api.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in ranges]
    return api.UserNamespace(mode=mode, uids=mappings, gids=mappings)


@pytest.mark.parametrize(("userns_options", "problem"), [
    (options(api.POD), "uids: 0 mappings"),
    (options(api.POD, (0, 1000, 10), (10, 5000, 10)), "exactly one is supported"),
    (options(api.POD, (1, 1000, 10)), "container id 0 must be mapped"),
    (options(api.POD, (0, 1000, 0)), "not a range of 32-bit ids"),
    (options(api.POD, (0, (1 << 32) - 10, 100)), "not a range of 32-bit ids"),
    (options(api.NODE, (0, 1000, 10)), "mappings are for mode POD"),
    (options(api.CONTAINER), "mode: 1 is not supported"),
    (options(api.TARGET), "mode: 3 is not supported"),
])
def test_mappings_refused(userns_options: api.UserNamespace, problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=problem):
        validate.user_namespace(userns_options, "userns_options")


def test_mappings_accepted() -> None:
    validate.user_namespace(options(api.NODE), "x")
    validate.user_namespace(options(api.POD, (0, 100000, 65536)), "x")
    validate.user_namespace(options(api.POD, (0, 0, 1 << 16)), "x")


def test_the_layers_keep_host_root_writing() -> None:
    assert userns.layer_map(100000, 65536) == [(0, 100000, 65536),
                                               (userns.HOST_ROOT_ON_DISK, 0, 1)]
    # A range that maps host root already needs nothing more.
    assert userns.layer_map(0, 65536) == [(0, 0, 65536)]


def test_the_spec_of_a_pod_with_its_own_user_namespace() -> None:
    pod = api.PodSandboxConfig(hostname="h", linux=api.LinuxPodSandboxConfig(
        security_context=api.LinuxSandboxSecurityContext(namespace_options=api.NamespaceOption(
            userns_options=options(api.POD, (0, 100000, 65536))))))
    spec = build(pod=pod)
    assert {"type": "user"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000,
                                             "size": 65536}]
    assert spec["linux"]["gidMappings"] == spec["linux"]["uidMappings"]
    plain = build(pod=api.PodSandboxConfig(hostname="h", linux=api.LinuxPodSandboxConfig(
        security_context=api.LinuxSandboxSecurityContext(namespace_options=api.NamespaceOption(
            userns_options=options(api.NODE))))))
    assert {"type": "user"} not in plain["linux"]["namespaces"]
    assert "uidMappings" not in plain["linux"]
