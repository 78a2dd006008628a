"""vmrt run, runp/create/start and tenant ls/rm, as a platform engineer uses
them, against a real vmrtd with two tenants: blue (namespace blue-web, one
pod at most) and green."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cri.conftest import Daemon, _daemon, _short_dir, wait_for
from tests.helpers.registry import free_port

pytestmark = pytest.mark.vm

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
TENANTS = '[tenants.blue]\nnamespaces = ["blue-web"]\nmax_pods = 1\n[tenants.green]\n'


@pytest.fixture(scope="module")
def node(guest_image, request: pytest.FixtureRequest) -> Iterator[Daemon]:  # type: ignore[no-untyped-def]
    for base in _short_dir():
        yield from _daemon(base, guest_image, request, extra_config=TENANTS)


def vmrt(daemon: Daemon, *args: str, tenant: str = "", timeout: float = 240,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: ``--tenant`` and the endpoint before the
    verb; ``run`` keeps its logs under the daemon's base."""
    verb, *rest = args
    scope = ["--tenant", tenant] if tenant else []
    extra = ["--log-root", str(daemon.logs)] if verb == "run" else []
    return subprocess.run([sys.executable, "-m", "vmrt.cli.main", *scope, "-r",
                           f"unix://{daemon.socket}", verb, *extra, *rest],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          input=stdin)


def pods_of(daemon: Daemon, tenant: str = "") -> list[dict[str, Any]]:
    listed = vmrt(daemon, "pods", "-o", "json", tenant=tenant)
    assert listed.returncode == 0, listed.stderr
    items: list[dict[str, Any]] = json.loads(listed.stdout).get("items", [])
    return items


def test_run_in_the_foreground_returns_the_exit_code_and_removes_the_pod(node: Daemon) -> None:
    ran = vmrt(node, "run", "--rm", "busybox", "--",
               "sh", "-c", "echo out; echo err >&2; exit 3", tenant="green")
    assert ran.returncode == 3, ran.stderr
    # The whole log, each stream to its own, before the exit code.
    assert ran.stdout == "out\n" and ran.stderr == "err\n"
    assert pods_of(node) == []
    assert not node.logs.exists() or not any(node.logs.iterdir()), "--rm leaves no log"
    # An image that is not there, and may not be pulled: a clear error, no pod.
    refused = vmrt(node, "run", "--pull", "never", "example.invalid/none:1", "true")
    assert refused.returncode == 125 and "--pull is never" in refused.stderr
    assert pods_of(node) == []


def test_run_detached_publishes_a_port(node: Daemon) -> None:
    port = free_port()
    ran = vmrt(node, "run", "-d", "--name", "web", "-p", f"{port}:8080", "-e", "WHO=vmrt",
               "busybox", "--", "sh", "-c",
               "mkdir -p /www && echo $WHO-$(hostname) > /www/index.html && "
               "exec httpd -f -p 8080 -h /www", tenant="green")
    assert ran.returncode == 0, ran.stderr
    container_id = ran.stdout.strip()
    [pod] = pods_of(node, "green")
    assert pod["metadata"]["name"] == "web" and pod["metadata"]["namespace"] == "green"
    assert pod["labels"]["vmrt.io/run"] == "web"

    def page() -> str:
        try:
            with urllib.request.urlopen(f"http://{node.network.gateway}:{port}/",
                                        timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    assert wait_for(lambda: page() != "", timeout=60), "nothing answers on the published port"
    assert page().strip() == "vmrt-web"
    status = json.loads(vmrt(node, "inspect", container_id, tenant="green").stdout)
    assert status["status"]["state"] == "CONTAINER_RUNNING"
    assert vmrt(node, "rm", pod["id"], tenant="green").returncode == 0
    assert pods_of(node, "green") == []


def test_runp_create_start_from_crictl_files(node: Daemon, tmp_path: Path) -> None:
    logs = node.logs / "files"
    pod_yaml = yaml.safe_load((EXAMPLES / "pod.yaml").read_text())
    pod_yaml["log_directory"] = str(logs)
    pod_yaml["port_mappings"] = []
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(pod_yaml))
    container_json = json.loads((EXAMPLES / "container.json").read_text())
    container_file = tmp_path / "container.json"
    container_file.write_text(json.dumps(container_json))

    made = vmrt(node, "runp", str(pod_file))
    assert made.returncode == 0, made.stderr
    pod_id = made.stdout.strip()
    try:
        created = vmrt(node, "create", pod_id, str(container_file), str(pod_file))
        assert created.returncode == 0, created.stderr
        container_id = created.stdout.strip()
        started = vmrt(node, "start", container_id)
        assert started.returncode == 0, started.stderr
        assert wait_for(lambda: "hello from demo-yaml" in vmrt(node, "logs", container_id).stdout)
        env = vmrt(node, "exec", container_id, "--", "sh", "-c", "echo $GREETING")
        assert env.stdout == "hello\n"
        # A file that is not a pod config: the line and the field that is wrong.
        bad = tmp_path / "bad.yaml"
        bad.write_text("metadata:\n  name: x\n  colour: blue\n")
        refused = vmrt(node, "runp", str(bad))
        assert refused.returncode == 125 and "colour" in refused.stderr, refused.stderr
    finally:
        vmrt(node, "rm", pod_id)
    assert pods_of(node) == []


def test_tenants_see_their_own_and_are_limited(node: Daemon) -> None:
    blue = vmrt(node, "run", "-d", "--name", "blue-app", "busybox", "--", "sleep", "600",
                tenant="blue")
    assert blue.returncode == 0, blue.stderr
    blue_ctr = blue.stdout.strip()
    green = vmrt(node, "run", "-d", "--name", "green-app", "busybox", "--", "sleep", "600",
                 tenant="green")
    assert green.returncode == 0, green.stderr
    green_ctr = green.stdout.strip()
    [blue_pod] = pods_of(node, "blue")
    # Blue's new pods go to its first listed namespace.
    assert blue_pod["metadata"]["namespace"] == "blue-web"
    assert [p["metadata"]["name"] for p in pods_of(node, "green")] == ["green-app"]
    assert len(pods_of(node)) == 2, "without --tenant, the whole node (kubelet's view)"

    ps = vmrt(node, "ps", tenant="green")
    assert green_ctr[:13] in ps.stdout and blue_ctr[:13] not in ps.stdout
    for verb in (["inspect", blue_ctr], ["logs", blue_ctr], ["exec", blue_ctr, "--", "id"],
                 ["inspect", blue_pod["id"]]):
        denied = vmrt(node, *verb, tenant="green")
        assert denied.returncode == 125 and "vmrt: no container" in denied.stderr, \
            (verb, denied.stderr)
    # Blue's limit is one pod: a clear refusal that names the setting.
    second = vmrt(node, "run", "-d", "busybox", "--", "true", tenant="blue")
    assert second.returncode == 125
    assert "RESOURCE_EXHAUSTED" in second.stderr and "tenants.blue.max_pods" in second.stderr
    assert len(pods_of(node, "blue")) == 1, "the refused run left no pod"

    listed = vmrt(node, "tenant", "ls", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    usage = {t["name"]: t for t in json.loads(listed.stdout)["tenants"]}
    assert usage["blue"]["pods"] == 1 and usage["blue"]["max_pods"] == 1
    assert usage["green"]["pods"] == 1 and usage["green"]["containers_running"] == 1
    assert usage["blue"]["vm_memory_mib"] > 0 and usage["blue"]["vcpus"] >= 1
    table = vmrt(node, "tenant", "ls")
    assert "1/1" in table.stdout, table.stdout

    removed = vmrt(node, "tenant", "rm", "blue")
    assert removed.returncode == 0, removed.stderr
    assert pods_of(node, "blue") == []
    assert [p["metadata"]["name"] for p in pods_of(node)] == ["green-app"]
    assert vmrt(node, "exec", green_ctr, "--", "true", tenant="green").returncode == 0
    # Room again under blue's limit.
    again = vmrt(node, "run", "--rm", "busybox", "--", "echo", "back", tenant="blue")
    assert again.returncode == 0 and again.stdout == "back\n", again.stderr
    assert vmrt(node, "tenant", "rm", "green").returncode == 0
    assert pods_of(node) == []
    shutil.rmtree(node.logs, ignore_errors=True)
