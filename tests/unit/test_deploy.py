"""deploy/: the manifests against Kubernetes' own schemas, the unit's promises,
and the node installer's dry run."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from vmrt.cli.overhead import Overhead, runtime_class

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VERSIONS = ("1.31", kubernetes_validate.latest_version())
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(DEPLOY)) for p in MANIFESTS])
@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes_objects(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schemas_refuse_what_kubernetes_would() -> None:
    doc = documents(DEPLOY / "runtimeclass" / "vmrt.yaml")[0]
    broken = {**doc, "overhead": {"podFixed": {"memory": ["128Mi"]}}}  # not a quantity
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**doc, "handlr": "vmrt"}, VERSIONS[0], strict=True)


def test_the_runtimeclass_vmrt_overhead_prints_is_valid() -> None:
    measured = Overhead("vmrt", True, 96.1, 0.4, 95.7, 8.2, 30.0, "112Mi", "10m")
    doc = runtime_class("vmrt", "vmrt", measured)
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    assert doc["overhead"] == {"podFixed": {"memory": "112Mi", "cpu": "10m"}}
    shipped = documents(DEPLOY / "runtimeclass" / "vmrt.yaml")[0]
    assert shipped["handler"] == "vmrt" and set(shipped["overhead"]["podFixed"]) == {  # type: ignore[index]
        "memory", "cpu"}


def test_the_unit_leaves_qemu_running() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "vmrtd.service")
    service = unit["Service"]
    assert service["KillMode"] == "process"  # a stop or an upgrade kills vmrtd only
    assert service["ExecStart"].split()[1:] == ["--config", "/etc/vmrt/config.toml"]
    assert service["Restart"] == "always"
    dropin = (DEPLOY / "kubelet" / "10-vmrt.conf").read_text()
    assert "--container-runtime-endpoint=unix:///run/vmrt/vmrt.sock" in dropin


def test_the_installer_dry_run_installs_and_keeps_the_nodes_config(tmp_path: Path) -> None:
    script = DEPLOY / "node-installer" / "install.sh"
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    artifacts = tmp_path / "artifacts"
    vmrtd = artifacts / "opt" / "vmrt" / "venv" / "bin" / "vmrtd"
    vmrtd.parent.mkdir(parents=True)
    vmrtd.write_text("#!/bin/sh\n")
    vmrtd.chmod(0o755)
    root = tmp_path / "root"

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), "--root", str(root), "--no-systemd",
                               "--artifacts", str(artifacts)],
                              capture_output=True, text=True, check=False)

    first = install()
    assert first.returncode == 0, first.stderr
    assert (root / "opt/vmrt/venv/bin/vmrtd").exists()
    assert (root / "etc/systemd/system/vmrtd.service").read_text() == \
        (DEPLOY / "systemd" / "vmrtd.service").read_text()
    assert (root / "etc/systemd/system/kubelet.service.d/10-vmrt.conf").exists()
    config = root / "etc/vmrt/config.toml"
    from vmrt.config import parse
    assert parse(config.read_text()).metrics.address == "127.0.0.1:9464"
    config.write_text("# the operator's own\n")
    again = install()  # an upgrade: the old tree set aside, the config kept
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# the operator's own\n"
    assert (root / "opt/vmrt.old/venv/bin/vmrtd").exists()
    missing = subprocess.run(["sh", str(script), "--root", str(root), "--no-systemd",
                              "--artifacts", str(tmp_path / "none")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "no vmrt in" in missing.stderr
