"""A real docker-registry (Debian's package) on 127.0.0.1, for tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, base: Path, user: str = "", password: str = "") -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = base / "registry.log"
        config = base / "config.yml"
        auth = ""
        if user:
            htpasswd = base / "htpasswd"
            line = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                  capture_output=True, text=True).stdout.strip()
            htpasswd.write_text(line + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: vmrt-test\n    path: {htpasswd}\n"
        config.write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n" + auth)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://{self.address}/v2/", timeout=1)
                break
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: "
                                       f"{self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def blob_fetches(self, digest: str) -> int:
        """How many times the registry served a blob (from its access log)."""
        text = self.log.read_text(errors="replace")
        return text.count("GET /v2/") and sum(
            1 for line in text.splitlines()
            if f"/blobs/{digest}" in line and '"GET ' in line and " 200 " in line)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
