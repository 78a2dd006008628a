"""A CNI network of a test's own: its own bridge, subnet and IPAM directory."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
from pathlib import Path

from pyroute2 import IPRoute

_counter = itertools.count(os.getpid() % 200)


class TestNetwork:
    __test__ = False  # a helper, not a test class for pytest to collect

    def __init__(self, base: Path) -> None:
        self.bridge = "vtb" + secrets.token_hex(4)
        octet = 10 + next(_counter) % 240
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{octet}.0/24"
        self.gateway = self.subnet.rsplit(".", 1)[0] + ".1"
        self.ipam_dir = base / "ipam"
        self.name = "vmrt-test-" + self.bridge

    def conflist(self, extra: list[dict[str, object]] | None = None) -> dict[str, object]:
        """``extra``: plugins chained after the bridge and portmap."""
        return {
            "cniVersion": "1.0.0", "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.ipam_dir),
                          "ranges": [[{"subnet": self.subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                *(extra or []),
            ]}

    def write(self, directory: Path) -> None:
        self.write_as(directory, "10-test.conflist")

    def write_as(self, directory: Path, file: str,
                 extra: list[dict[str, object]] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / file).write_text(json.dumps(self.conflist(extra), indent=1))

    def remove_bridge(self) -> None:
        with IPRoute() as ipr, contextlib.suppress(Exception):
            (index,) = ipr.link_lookup(ifname=self.bridge)
            ipr.link("del", index=index)
