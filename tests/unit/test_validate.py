"""Table tests of the CRI input checks: each bad value is refused with the
field's name, each value kubelet or critest sends is accepted."""

from __future__ import annotations

from typing import Any

import pytest
from cri_api.v1 import api_pb2 as api

from vmrt.cri import validate
from vmrt.errors import InvalidArgumentError


def pod(**fields: Any) -> api.PodSandboxConfig:
    config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(
        name="nginx-7d9f", namespace="default", uid="0b6f2f0e-8c1f-4d0e-9d9e-6a1f3c3b9f20"),
        hostname="nginx-7d9f", log_directory="/var/log/pods/default_nginx_0b6f")
    for key, value in fields.items():
        target = config
        *path, last = key.split("__")
        for part in path:
            target = getattr(target, part)
        if isinstance(value, dict):
            getattr(target, last).update(value)
        elif isinstance(value, list):
            getattr(target, last).extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(target, last).CopyFrom(value)
        else:
            setattr(target, last, value)
    return config


def test_a_kubelet_pod_passes() -> None:
    validate.pod_config(pod(
        dns_config=api.DNSConfig(servers=["10.96.0.10", "fd00::a"],
                                 searches=["default.svc.cluster.local", "svc.cluster.local."],
                                 options=["ndots:5"]),
        port_mappings=[api.PortMapping(container_port=80, host_port=8080, host_ip="0.0.0.0"),
                       api.PortMapping(protocol=api.UDP, container_port=53)],
        labels={"io.kubernetes.pod.name": "nginx"},
        annotations={"kubernetes.io/config.seen": "2026-12-01T10:00:00Z"},
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/burstable/pod0b6f2f0e",
            sysctls={"net.ipv4.ip_forward": "1", "net/ipv4/conf/eth0.1/forwarding": "1",
                     "kernel.shm_rmid_forced": "1"})))
    validate.pod_config(pod(linux__cgroup_parent="kubepods-burstable-pod0b6f.slice"))
    validate.pod_config(pod(hostname="",
                            linux__security_context__namespace_options__network=api.NODE))
    # critest's names: upper case, long uuids.
    validate.pod_config(pod(metadata__name="PodSandbox-for-create-container-"
                                           "d5b3bc8a-2bb8-43e3-a45e-0b7bd7e3d1d0"))


@pytest.mark.parametrize(("fields", "field"), [
    ({"metadata__name": ""}, "config.metadata.name"),
    ({"metadata__name": "a;K8S_POD_NAME=x"}, "config.metadata.name"),
    ({"metadata__namespace": "ns/../x"}, "config.metadata.namespace"),
    ({"metadata__uid": "x" * 300}, "config.metadata.uid"),
    ({"metadata__uid": "a\nb"}, "config.metadata.uid"),
    ({"hostname": "a" * 65}, "config.hostname"),
    ({"hostname": "bad_host"}, "config.hostname"),
    ({"hostname": "-x"}, "config.hostname"),
    ({"log_directory": "relative/dir"}, "config.log_directory"),
    ({"log_directory": "/var/log/pods/../../etc"}, "config.log_directory"),
    ({"log_directory": "/var/log/\0"}, "config.log_directory"),
    ({"dns_config__servers": ["8.8.8.8\nnameserver 1.1.1.1"]}, "config.dns_config.servers[0]"),
    ({"dns_config__searches": ["a b"]}, "config.dns_config.searches[0]"),
    ({"dns_config__options": ["ndots:5\n"]}, "config.dns_config.options[0]"),
    ({"port_mappings": [api.PortMapping(container_port=80, host_port=80,
                                        host_ip="127.0.0.1:1-:1,tftp=/,hostfwd=tcp:127.0.0.1")]},
     "config.port_mappings[0].host_ip"),
    ({"port_mappings": [api.PortMapping(container_port=0)]},
     "config.port_mappings[0].container_port"),
    ({"port_mappings": [api.PortMapping(container_port=1, host_port=70000)]},
     "config.port_mappings[0].host_port"),
    ({"port_mappings": [api.PortMapping(container_port=1, protocol=7)]},
     "config.port_mappings[0].protocol"),
    ({"linux__cgroup_parent": "/kubepods/../../etc"}, "config.linux.cgroup_parent"),
    ({"linux__cgroup_parent": "/kube pods"}, "config.linux.cgroup_parent"),
    ({"linux__sysctls": {"../../proc/sysrq-trigger": "b"}}, "config.linux.sysctls"),
    ({"linux__sysctls": {"kernel.shmmax": "1\n2"}}, "config.linux.sysctls[kernel.shmmax]"),
    ({"linux__security_context__namespace_options__pid": 9},
     "config.linux.security_context.namespace_options.pid"),
    ({"linux__security_context__run_as_user__value": -1},
     "config.linux.security_context.run_as_user"),
    ({"linux__resources__memory_limit_in_bytes": -5},
     "config.linux.resources.memory_limit_in_bytes"),
    ({"linux__resources__memory_swap_limit_in_bytes": 1 << 30},
     "config.linux.resources.memory_swap_limit_in_bytes"),
    ({"linux__resources__memory_limit_in_bytes": 2 << 30,
      "linux__resources__memory_swap_limit_in_bytes": 1 << 30},
     "config.linux.resources.memory_swap_limit_in_bytes"),
    ({"linux__overhead__cpu_period": 10**12}, "config.linux.overhead.cpu_period"),
    # containerd's rule: a hostNetwork pod has the node's name (kubelet sends none).
    ({"linux__security_context__namespace_options__network": api.NODE},
     "config.hostname"),
    ({"annotations": {"k": "v" * (300 * 1024)}}, "config.annotations"),
])
def test_bad_pod_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate.pod_config(pod(**fields))
    assert str(info.value).startswith(field + ":"), info.value


def container(**fields: Any) -> api.ContainerConfig:
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name="app"),
                                 image=api.ImageSpec(image="busybox"), command=["sh"],
                                 log_path="app/0.log")
    for key, value in fields.items():
        target = config
        *path, last = key.split("__")
        for part in path:
            target = getattr(target, part)
        if isinstance(value, list):
            del getattr(target, last)[:]
            getattr(target, last).extend(value)
        else:
            setattr(target, last, value)
    return config


def test_a_kubelet_container_passes() -> None:
    validate.container_config(container(
        envs=[api.KeyValue(key="PATH", value="/bin")], working_dir="/srv",
        mounts=[api.Mount(container_path="/data", host_path="/var/lib/kubelet/pods/x/volumes/y",
                          propagation=api.PROPAGATION_HOST_TO_CONTAINER),
                api.Mount(container_path="/ro", host_path="/srv/ro", readonly=True,
                          recursive_read_only=True),
                api.Mount(container_path="/models", readonly=True,
                          image=api.ImageSpec(image="registry.example/models:1"),
                          image_sub_path="weights/v1")],
        devices=[api.Device(container_path="/dev/fuse", host_path="/dev/fuse",
                            permissions="rwm")]), "/var/log/pods/x")


@pytest.mark.parametrize(("fields", "field"), [
    ({"metadata__name": "x/y"}, "config.metadata.name"),
    ({"image__image": ""}, "config.image.image"),
    ({"stop_signal": 999}, "config.stop_signal"),
    ({"command": ["sh", "-c", "a\0b"]}, "config.command+args[2]"),
    ({"working_dir": "tmp"}, "config.working_dir"),
    ({"envs": [api.KeyValue(key="A=B", value="c")]}, "config.envs[0]"),
    ({"envs": [api.KeyValue(key="", value="c")]}, "config.envs[0]"),
    ({"mounts": [api.Mount(container_path="data", host_path="/x")]},
     "config.mounts[0].container_path"),
    ({"mounts": [api.Mount(container_path="/", host_path="/x")]},
     "config.mounts[0].container_path"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/var/../etc")]},
     "config.mounts[0].host_path"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/x", propagation=5)]},
     "config.mounts[0].propagation"),
    ({"mounts": [api.Mount(container_path="/d", image=api.ImageSpec(image="i:1"))]},
     "config.mounts[0].readonly"),
    ({"mounts": [api.Mount(container_path="/d", readonly=True, image=api.ImageSpec(image="i:1"),
                           image_sub_path="../etc")]},
     "config.mounts[0].image_sub_path"),
    ({"mounts": [api.Mount(container_path="/d", readonly=True, image=api.ImageSpec(image="i:1"),
                           image_sub_path="/etc")]},
     "config.mounts[0].image_sub_path"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/x", image_sub_path="etc")]},
     "config.mounts[0].image_sub_path"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/x", readonly=True,
                           image=api.ImageSpec(image="i:1"))]},
     "config.mounts[0].host_path"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/x", recursive_read_only=True)]},
     "config.mounts[0].recursive_read_only"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/x", readonly=True,
                           recursive_read_only=True,
                           propagation=api.PROPAGATION_HOST_TO_CONTAINER)]},
     "config.mounts[0].recursive_read_only"),
    ({"mounts": [api.Mount(container_path="/d", host_path="/x", readonly=True,
                           recursive_read_only=True, propagation=api.PROPAGATION_BIDIRECTIONAL)]},
     "config.mounts[0].recursive_read_only"),
    ({"devices": [api.Device(container_path="/dev/x", host_path="/dev/x",
                             permissions="rwx")]}, "config.devices[0].permissions"),
    ({"log_path": "/var/log/evil.log"}, "config.log_path"),
    ({"log_path": "../../../etc/cron.d/x"}, "config.log_path"),
    ({"log_path": "a//b"}, "config.log_path"),
    ({"linux__resources__oom_score_adj": 5000}, "config.linux.resources.oom_score_adj"),
    ({"linux__resources__cpuset_cpus": "0-1; rm"}, "config.linux.resources.cpuset_cpus"),
    ({"linux__security_context__run_as_username": "a:b"},
     "config.linux.security_context.run_as_username"),
    ({"linux__security_context__masked_paths": ["proc/kcore"]},
     "config.linux.security_context.masked_paths[0]"),
])
def test_bad_container_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate.container_config(container(**fields), "/var/log/pods/x")
    assert str(info.value).startswith(field + ":"), info.value


def test_log_path_needs_a_log_directory() -> None:
    with pytest.raises(InvalidArgumentError, match=r"config.log_path: .*log_directory"):
        validate.container_config(container(), "")
    validate.container_config(container(log_path=""), "")


def test_exec_timeouts_and_enums() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^cmd: is required"):
        validate.command([])
    with pytest.raises(InvalidArgumentError, match=r"^timeout: -1 is negative"):
        validate.timeout(-1, "timeout")
    with pytest.raises(InvalidArgumentError, match=r"^timeout: "):
        validate.timeout(2**62, "timeout")
    with pytest.raises(InvalidArgumentError, match=r"^filter.state.state: 99 is not a known"):
        validate.enum(99, (0, 1, 2, 3), "filter.state.state")
    with pytest.raises(InvalidArgumentError, match=r"pod_cidr"):
        validate.pod_cidrs("10.0.0.0/8,nonsense", "pod_cidr")
    validate.pod_cidrs("10.88.0.0/16,fd00::/64", "pod_cidr")
