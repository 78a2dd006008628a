"""Metrics: the Prometheus endpoint and CRI ListPodSandboxMetrics, from one pod."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as api
from prometheus_client.parser import text_string_to_metric_families

from tests.cri.conftest import Daemon, _daemon, _short_dir, expect_error
from tests.helpers.registry import free_port

pytestmark = pytest.mark.vm


@pytest.fixture
def measured(guest_image, request: pytest.FixtureRequest
             ) -> Iterator[tuple[Daemon, int]]:  # type: ignore[no-untyped-def]
    port = free_port()
    for base in _short_dir():
        for daemon in _daemon(base, guest_image, request,
                              extra_config=f'[metrics]\naddress = "127.0.0.1:{port}"\n'):
            yield daemon, port


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as reply:
        text = reply.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    matching = [v for found, v in samples if all(found.get(k) == w for k, w in labels.items())]
    assert len(matching) == 1, (labels, samples)
    return matching[0]


def test_prometheus_and_cri_metrics_of_a_pod(measured: tuple[Daemon, int]) -> None:
    daemon, port = measured
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    # A listening socket in the container, for container_sockets.
    container = daemon.run_container(
        pod_id, config, ["sh", "-c", "nc -l -p 7000 & exec sleep 300"], name="app",
        linux=api.LinuxContainerConfig(resources=api.LinuxContainerResources(
            memory_limit_in_bytes=96 << 20, cpu_shares=256)))
    daemon.exec(container, ["dd", "if=/dev/zero", "of=/filler", "bs=1M", "count=3"])
    expect_error(grpc.StatusCode.NOT_FOUND, daemon.runtime.PodSandboxStatus,
                 api.PodSandboxStatusRequest(pod_sandbox_id="f" * 64))
    # Some traffic out of eth0: a connection to the gateway's discard port.
    daemon.exec(container, ["sh", "-c", "nc -w 1 $(ip route | awk '/default/ {print $3}') 9 "
                                        "</dev/null; true"])
    network = daemon.runtime.PodSandboxStats(api.PodSandboxStatsRequest(
        pod_sandbox_id=pod_id)).stats.linux.network
    assert network.default_interface.name == "eth0", network
    assert network.default_interface.tx_bytes.value > 0, network
    assert "lo" not in {i.name for i in network.interfaces}
    found = scrape(port)
    calls = found["vmrt_cri_requests_total"]
    assert value(calls, method="RunPodSandbox", code="OK") == 1
    assert value(calls, method="PodSandboxStatus", code="NOT_FOUND") == 1
    assert value(found["vmrt_cri_request_seconds_count"], method="RunPodSandbox") == 1
    assert value(found["vmrt_pod_start_seconds_count"], path="cold") == 1
    assert value(found["vmrt_pods"], state="ready") == 1
    meta = config.metadata
    pod_labels = {"pod": meta.name, "namespace": meta.namespace, "uid": meta.uid,
                  "pod_id": pod_id}
    # QEMU's PSS as the host sees it: guest RAM touched, translation cache, QEMU.
    assert value(found["vmrt_pod_vm_pss_bytes"], **pod_labels) > 32 << 20
    assert value(found["vmrt_pod_guest_memory_working_set_bytes"], **pod_labels) > 0
    assert value(found["vmrt_pod_guest_processes"], **pod_labels) >= 1
    # The guest kernel's own meminfo: a VM of the handler's 256 MiB.
    total = value(found["vmrt_pod_vm_guest_memory_total_bytes"], **pod_labels)
    assert 200 << 20 < total <= 256 << 20
    assert 0 < value(found["vmrt_pod_vm_guest_memory_available_bytes"], **pod_labels) < total
    # cAdvisor's series, as kubelet serves them: the network per guest interface.
    sent = value(found["container_network_transmit_bytes_total"], interface="eth0",
                 pod=meta.name, namespace=meta.namespace, id=pod_id)
    assert sent >= network.default_interface.tx_bytes.value
    assert value(found["container_network_transmit_packets_total"], interface="eth0") > 0
    # The container's: its guest cgroup, its layer on the host, its record.
    app = {"container": "app", "id": container, "pod": meta.name, "namespace": meta.namespace}
    assert value(found["container_memory_working_set_bytes"], **app) > 0
    assert value(found["container_cpu_usage_seconds_total"], **app) > 0
    assert value(found["container_processes"], **app) >= 2  # sleep and nc
    assert value(found["container_sockets"], **app) >= 1
    assert value(found["container_file_descriptors"], **app) >= 6
    assert value(found["container_spec_memory_limit_bytes"], **app) == 96 << 20
    assert value(found["container_spec_cpu_shares"], **app) == 256
    assert value(found["container_fs_usage_bytes"], **app) >= 3 << 20
    assert value(found["container_fs_limit_bytes"], **app) > 3 << 20
    started = daemon.runtime.ContainerStatus(api.ContainerStatusRequest(
        container_id=container)).status.started_at
    assert value(found["container_start_time_seconds"], **app) == pytest.approx(started / 1e9)

    # The same numbers in CRI form, named by the descriptors.
    descriptors = {d.name: list(d.label_keys) for d in daemon.runtime.ListMetricDescriptors(
        api.ListMetricDescriptorsRequest()).descriptors}
    reply = daemon.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest())
    (pod,) = reply.pod_metrics
    assert pod.pod_sandbox_id == pod_id
    by_name = {m.name: m for m in pod.metrics}
    assert set(by_name) <= set(descriptors) and "vmrt_pod_vm_pss_bytes" in by_name
    pss = by_name["vmrt_pod_vm_pss_bytes"]
    assert pss.metric_type == api.GAUGE and pss.value.value > 32 << 20
    assert dict(zip(descriptors[pss.name], pss.label_values, strict=True)) == pod_labels
    assert by_name["vmrt_pod_guest_cpu_usage_nanoseconds_total"].metric_type == api.COUNTER
    (app_metrics,) = pod.container_metrics
    assert app_metrics.container_id == container
    # As critest checks it: every descriptor has a metric, labelled as it says
    # (the block-device series but for a device, and vmrt's guests have none).
    labelled = {m.name: len(m.label_values) for m in [*pod.metrics, *app_metrics.metrics]}
    optional = {"container_blkio_device_usage_total"}
    assert set(descriptors) - set(labelled) <= optional
    assert all(labelled[n] == len(keys) for n, keys in descriptors.items() if n in labelled)

    # Values follow the pods: stopped, the pod is counted NOTREADY and has no
    # samples; removed, it is gone from the counts too.
    daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    stopped = scrape(port)
    assert value(stopped["vmrt_pods"], state="ready") == 0
    assert value(stopped["vmrt_pods"], state="notready") == 1
    assert not stopped.get("vmrt_pod_vm_pss_bytes")
    assert value(stopped["vmrt_cri_requests_total"], method="StopPodSandbox", code="OK") == 1
    assert not daemon.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest()).pod_metrics
    daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert value(scrape(port)["vmrt_pods"], state="notready") == 0


def test_interfaces_a_privileged_container_makes_cannot_flood_or_forge(
        measured: tuple[Daemon, int]) -> None:
    """Guest root makes 40 bridges and one whose name would break the text
    format; the host keeps at most 32 interfaces, each with a name an
    interface can have, and the scrape still parses."""
    daemon, port = measured
    config = daemon.pod_config()
    pod_id = daemon.run_pod(config)
    evil = daemon.run_container(pod_id, config, ["sleep", "300"], linux=api.LinuxContainerConfig(
        security_context=api.LinuxContainerSecurityContext(privileged=True)))
    made = daemon.exec(evil, ["sh", "-c", "for i in $(seq 40); do ip link add br$i type bridge "
                                          "|| exit 1; done; ip link add 'x\"}{y' type bridge && "
                                          "grep -c : /proc/net/dev"])
    assert made.exit_code == 0, made.stderr
    assert int(made.stdout) >= 43  # lo, eth0, 40 bridges and the forged name in the guest
    network = daemon.runtime.PodSandboxStats(api.PodSandboxStatsRequest(
        pod_sandbox_id=pod_id)).stats.linux.network
    names = [network.default_interface.name, *(i.name for i in network.interfaces)]
    assert names[0] == "eth0" and len(names) == 32 and len(set(names)) == 32, names
    assert all('"' not in n and "{" not in n for n in names)
    found = scrape(port)  # parses: no label value broke out of its quotes
    sent = found["container_network_transmit_bytes_total"]
    assert len(sent) == 32 and {s["interface"] for s, _ in sent} == set(names)
