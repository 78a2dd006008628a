"""A real containerd (Debian's 1.6) + runc for tests, as containerd's own
``script/critest.sh`` runs one: its own config, root, state, socket and
CNI network, and a registry mirror for the images it pulls."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc

from tests.helpers import leaks


class Containerd:
    def __init__(self, base: Path, mirrors: dict[str, str], sandbox_image: str,
                 subnet: str = "10.241.0.0/24") -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.socket = base / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self.log = base / "containerd.log"
        self.bridge = f"vct{os.getpid() % 100000}"
        self.config = base / "config.toml"
        certs = base / "certs.d"
        for host, address in mirrors.items():
            (certs / host).mkdir(parents=True, exist_ok=True)
            (certs / host / "hosts.toml").write_text(
                f'server = "http://{address}"\n[host."http://{address}"]\n'
                '  capabilities = ["pull", "resolve"]\n')
        cni = base / "net.d"
        cni.mkdir(exist_ok=True)
        (cni / "10-test.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": f"test-{self.bridge}", "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                          "dataDir": str(base / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}}]}))
        self.config.write_text(
            f'version = 2\nroot = "{base / "root"}"\nstate = "{base / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n'
            f'  sandbox_image = "{sandbox_image}"\n'
            # This machine's root may not lower an OOM score (runc would fail
            # setting the sandbox's -998).
            "  restrict_oom_score_adj = true\n"
            '  [plugins."io.containerd.grpc.v1.cri".registry]\n'
            f'    config_path = "{certs}"\n'
            '  [plugins."io.containerd.grpc.v1.cri".cni]\n'
            f'    bin_dir = "/usr/lib/cni"\n    conf_dir = "{cni}"\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        with grpc.insecure_channel(self.endpoint) as channel:
            api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=30,
                                                         wait_for_ready=True)

    def stop(self) -> None:
        """containerd only: its shims and their containers keep running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pods(self) -> list[api.PodSandbox]:
        with grpc.insecure_channel(self.endpoint) as channel:
            return list(api_grpc.RuntimeServiceStub(channel).ListPodSandbox(
                api.ListPodSandboxRequest(), timeout=30).items)

    def has_image(self, name: str) -> bool:
        with grpc.insecure_channel(self.endpoint) as channel:
            return bool(api_grpc.ImageServiceStub(channel).ImageStatus(
                api.ImageStatusRequest(image=api.ImageSpec(image=name)), timeout=30).image.id)

    def cleanup(self) -> None:
        """Every pod removed, containerd stopped, its shims killed, its mounts
        and bridge gone."""
        with contextlib.suppress(Exception):
            if self.proc is None:
                self.start()
            with grpc.insecure_channel(self.endpoint) as channel:
                runtime = api_grpc.RuntimeServiceStub(channel)
                for pod in runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items:
                    runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                           timeout=60)
                    runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                             timeout=60)
        self.stop()
        for pid in self.shims():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for point in sorted(leaks.mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)

    def shims(self) -> list[int]:
        """containerd-shim processes serving this containerd."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and str(self.socket).encode() in cmdline:
                found.append(int(entry))
        return found
