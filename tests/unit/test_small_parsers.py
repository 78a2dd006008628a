"""Small parsers: the agent's kernel cmdline, --memory sizes, kernel ELF notes."""

import struct

import pytest

from vmrt.agent.config import parse_cmdline
from vmrt.cli.run import UsageError, parse_memory
from vmrt.guest.kernel import KernelError, _payload, decompress, has_pvh_entry


def test_agent_cmdline() -> None:
    config = parse_cmdline("console=ttyS0 quiet vmrt.transport=vsock vmrt.vsock_port=2000 "
                           "vmrt.debug=1 vmrt.boot_modules=a,b")
    assert config.transport == "vsock"
    assert config.vsock_port == 2000
    assert config.debug
    assert parse_cmdline("quiet").transport == "serial"
    assert parse_cmdline("quiet").test_clock_offset == 0
    assert parse_cmdline("vmrt.test_clock_offset=-3600").test_clock_offset == -3600
    with pytest.raises(ValueError, match=r"vmrt\.transport=tcp"):
        parse_cmdline("vmrt.transport=tcp")


@pytest.mark.parametrize("text, mib", [
    ("256M", 256), ("256m", 256), ("1G", 1024), ("512MiB", 512), ("300", 300), ("2048K", 2),
])
def test_memory_sizes(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "1.5G", "0", "1K", "-5M"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(UsageError, match="--memory"):
        parse_memory(text)


def _elf_with_note(name: bytes, note_type: int) -> bytes:
    desc = b"\0" * 8
    note = struct.pack("<III", len(name) + 1, len(desc), note_type) + name + b"\0"
    note += b"\0" * (-len(note) % 4) + desc
    ehdr = bytearray(64)
    ehdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", ehdr, 0x20, 64)          # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)      # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(ehdr) + phdr + note


def test_pvh_note_detection() -> None:
    assert has_pvh_entry(_elf_with_note(b"Xen", 18))
    assert not has_pvh_entry(_elf_with_note(b"Xen", 6))
    assert not has_pvh_entry(_elf_with_note(b"GNU", 18))
    assert not has_pvh_entry(b"not an elf at all" * 8)


def test_bzimage_payload_and_compression_checks() -> None:
    with pytest.raises(KernelError, match="HdrS"):
        _payload(b"\0" * 4096)
    with pytest.raises(KernelError, match="unknown kernel compression"):
        decompress(b"\x00\x01\x02\x03")
