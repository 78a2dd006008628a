"""The agent's settings, read from the kernel command line (Kata style).

The guest image carries no configuration file: the host puts ``vmrt.*``
keys on the kernel command line when it launches the VM.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_VSOCK_PORT = 1024
DEFAULT_SERIAL_NAME = "vmrt.agent"


@dataclass(frozen=True)
class AgentConfig:
    transport: str = "serial"
    vsock_port: int = DEFAULT_VSOCK_PORT
    serial_name: str = DEFAULT_SERIAL_NAME
    debug: bool = False
    grpc_socket: str = "/run/vmrt/agent.sock"
    # Test hooks (vmrt/agent/testhooks.py); never set in production.
    test_forged_events: bool = False
    # Seconds added to the guest's clock at start (negative: behind), so a
    # template saved now restores with the clock of one saved long ago.
    test_clock_offset: int = 0


def parse_cmdline(cmdline: str) -> AgentConfig:
    values: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if key.startswith("vmrt.") and sep:
            values[key[len("vmrt."):]] = value
    transport = values.get("transport", "serial")
    if transport not in ("serial", "vsock"):
        raise ValueError(f"vmrt.transport={transport}: expected serial or vsock")
    return AgentConfig(
        transport=transport,
        vsock_port=int(values.get("vsock_port", DEFAULT_VSOCK_PORT)),
        serial_name=values.get("serial_name", DEFAULT_SERIAL_NAME),
        debug=values.get("debug", "0") in ("1", "true", "yes"),
        test_forged_events=values.get("test_forged_events", "0") == "1",
        test_clock_offset=int(values.get("test_clock_offset", "0")),
    )
