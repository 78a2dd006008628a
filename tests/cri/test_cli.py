"""The vmrt CLI's crictl-style commands, against a real vmrtd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, wait_for

pytestmark = pytest.mark.vm


def vmrt(daemon: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmrt.cli.main", args[0], "-r",
                           f"unix://{daemon.socket}", *args[1:]],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_commands(vmrtd: Daemon, pod: tuple[str, api.PodSandboxConfig]) -> None:
    pod_id, config = pod
    container = vmrtd.run_container(pod_id, config,
                                    ["sh", "-c", "echo to-out; echo to-err >&2; sleep 300"],
                                    name="cli-target")

    pods = vmrt(vmrtd, "pods")
    assert pods.returncode == 0, pods.stderr
    assert pod_id[:13] in pods.stdout and "Ready" in pods.stdout
    assert json.loads(vmrt(vmrtd, "pods", "-o", "json").stdout)["items"][0]["id"] == pod_id
    # crictl's habit: the endpoint before the verb.
    before = subprocess.run([sys.executable, "-m", "vmrt.cli.main", "-r",
                             f"unix://{vmrtd.socket}", "pods", "-o", "json"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["items"][0]["id"] == pod_id

    ps = vmrt(vmrtd, "ps")
    assert container[:13] in ps.stdout and "cli-target" in ps.stdout and "Running" in ps.stdout
    listed = json.loads(vmrt(vmrtd, "ps", "-a", "-o", "json").stdout)["containers"]
    assert container in {c["id"] for c in listed}

    inspected = json.loads(vmrt(vmrtd, "inspect", container[:16]).stdout)
    assert inspected["status"]["id"] == container
    assert json.loads(inspected["info"]["info"])["sandboxID"] == pod_id
    assert json.loads(vmrt(vmrtd, "inspect", pod_id).stdout)["status"]["id"] == pod_id

    executed = vmrt(vmrtd, "exec", container, "--", "sh", "-c", "echo hi; exit 4")
    assert executed.returncode == 4 and executed.stdout == "hi\n"

    assert wait_for(lambda: "to-err" in vmrt(vmrtd, "logs", container).stderr)
    logs = vmrt(vmrtd, "logs", container)
    assert logs.stdout == "to-out\n" and logs.stderr == "to-err\n"

    stats = vmrt(vmrtd, "stats")
    assert container[:13] in stats.stdout and "MiB" in stats.stdout

    assert vmrt(vmrtd, "stop", "-t", "1", container).returncode == 0
    assert vmrtd.status(container).state == api.CONTAINER_EXITED
    followed = vmrt(vmrtd, "logs", "-f", container)
    assert followed.returncode == 0 and "to-out" in followed.stdout
    assert vmrt(vmrtd, "rm", container).returncode == 0

    missing = vmrt(vmrtd, "inspect", "f" * 20)
    assert missing.returncode == 125 and "no container or pod" in missing.stderr
    unreachable = subprocess.run([sys.executable, "-m", "vmrt.cli.main", "pods", "-r",
                                  "unix:///nonexistent.sock", "--timeout", "2"],
                                 capture_output=True, text=True, timeout=60, check=False)
    assert unreachable.returncode == 125 and "cannot reach vmrtd" in unreachable.stderr


def test_overhead_is_measured_from_a_probe_pod_that_goes_away(vmrtd: Daemon,
                                                              tmp_path: Path) -> None:
    before = {p.id for p in vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items}
    result = vmrt(vmrtd, "overhead", "--seconds", "2", "-o", "json",
                  "--log-root", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    # QEMU's PSS holds the guest's kernel, agent and translation cache: far
    # more than a sleeping container's own working set.
    assert figures["qemu_pss_mib"] > 32 and figures["memory_mib"] > 32
    assert 0 < figures["containers_working_set_mib"] < 16
    assert figures["measured_seconds"] >= 2 and figures["idle_cpu_millicores"] >= 0
    assert figures["pod_fixed_memory"].endswith("Mi")
    assert int(figures["pod_fixed_memory"][:-2]) >= figures["memory_mib"] * 1.1
    assert {p.id for p in vmrtd.runtime.ListPodSandbox(api.ListPodSandboxRequest()).items} == before
    manifest = vmrt(vmrtd, "overhead", "--seconds", "1", "--runtimeclass", "vmrt",
                    "--log-root", str(tmp_path), timeout=300)
    assert manifest.returncode == 0, manifest.stderr
    assert "kind: RuntimeClass" in manifest.stdout and "podFixed:" in manifest.stdout
    refused = vmrt(vmrtd, "overhead", "--seconds", "0")
    assert refused.returncode != 0 and "--seconds" in refused.stderr
