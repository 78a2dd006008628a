"""vmrtd's TOML config: defaults, handlers, and errors that name the key."""

from pathlib import Path

import pytest

from vmrt.config import Config, ConfigError, load, parse


def test_defaults_without_a_file() -> None:
    config = load(None)
    assert config == Config()
    assert config.cri.socket == "/run/vmrt/vmrt.sock"
    assert config.cri.stream_address == "127.0.0.1"
    assert config.cri.stream_idle_timeout == 4 * 3600
    assert (config.storage.root, config.storage.state) == ("/var/lib/vmrt", "/run/vmrt")
    assert (config.hypervisor.accel, config.hypervisor.memory_mib,
            config.hypervisor.vcpus) == ("auto", 256, 1)
    # Mirrors are opt-in: no plain-HTTP stand-in for registry.k8s.io by default.
    assert config.registry.mirrors == {}
    assert config.cni.conf_dir == "/etc/cni/net.d"
    assert config.cni.bin_dirs == ["/opt/cni/bin", "/usr/lib/cni"]
    assert config.handler("vmrt") == config.hypervisor
    assert config.handler("") == config.hypervisor


def test_handlers_override_the_hypervisor_block() -> None:
    config = parse("""
[hypervisor]
memory_mib = 512
[runtime_handlers.big]
memory_mib = 2048
vcpus = 2
[registry.mirrors."gcr.io"]
endpoints = ["http://127.0.0.1:5000"]
""")
    big = config.handler("big")
    assert (big.memory_mib, big.vcpus, big.accel) == (2048, 2, "auto")
    assert config.hypervisor.memory_mib == 512
    assert set(config.registry.mirrors) == {"gcr.io"}
    with pytest.raises(ConfigError, match="unknown runtime handler 'kata'"):
        config.handler("kata")


@pytest.mark.parametrize("text, message", [
    ("[hypervisor]\nmemory = 1", "unknown key hypervisor.memory"),
    ("[hypervisor]\nmemory_mib = 'lots'", "hypervisor.memory_mib: expected an integer"),
    ("[hypervisor]\nmemory_mib = 16", "hypervisor.memory_mib: 16 is below"),
    ("[hypervisor]\naccel = 'hvf'", "hypervisor.accel"),
    ("[hypervisor]\ndebug = 1", "hypervisor.debug: expected true or false"),
    ("[runtime_handlers.x]\nfoo = 1", "unknown key runtime_handlers.x.foo"),
    ("[runtime_handlers.x]\nvcpus = 0", "runtime_handlers.x.vcpus"),
    ("[runtime_handlers.x]\nagent_keepalive_s = -1.0", "runtime_handlers.x.agent_keepalive_s"),
    ("[hypervisor]\nmemory_overcommit = 0.0", "hypervisor.memory_overcommit: 0.0 is not positive"),
    ("[runtime_handlers.x]\nmemory_overcommit = 2.0",
     "runtime_handlers.x.memory_overcommit: is node-wide; set it in [hypervisor]"),
    ("[cri]\nsocket = 1", "cri.socket: expected a string"),
    ("[cri]\nstream_port = 70000", "cri.stream_port"),
    ("[cri]\nstream_idle_timeout = -1.0", "cri.stream_idle_timeout"),
    ("[cni]\nbin_dirs = '/opt'", "cni.bin_dirs: expected a list"),
    ("[metrics]\naddress = 'localhost:9464'", "metrics.address: 'localhost:9464' is not IP:PORT"),
    ("[metrics]\naddress = '127.0.0.1:99999'", "metrics.address"),
    ("[metrics]\naddress = '127.0.0.1'", "metrics.address"),
    ("surprise = 1", "unknown key surprise"),
    ("not toml at all [", "not valid TOML"),
])
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        parse(text)


def test_metrics_address() -> None:
    assert parse("").metrics.address == ""
    assert parse("[metrics]\naddress = '127.0.0.1:9464'").metrics.address == "127.0.0.1:9464"
    assert parse("[metrics]\naddress = '[::1]:0'").metrics.address == "[::1]:0"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
