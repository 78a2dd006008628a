"""``vmrt run-vm`` end to end: real QEMU, real guest kernel, real agent and crun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import dump_console
from tests.helpers import leaks

pytestmark = pytest.mark.vm


class Runner:
    def __init__(self, state: Path, artifacts: Path) -> None:
        self.state = state
        self.console = artifacts / "console.log"

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vmrt.cli.main", "--state", str(self.state), "run-vm",
                "--console-log", str(self.console), *args]

    def __call__(self, *args: str, input: bytes | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*args), input=input, capture_output=True,
                              timeout=timeout, check=False)


@pytest.fixture
def run(guest_image, state_dir: Path, artifacts: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    runner = Runner(state_dir, artifacts)
    yield runner
    if leaks.failed(request):
        dump_console(request.node.name, runner.console)


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert lines, "expected an error message"
    first = lines[0]
    assert first.startswith("vmrt: "), result.stderr
    return first


def test_stdout_stderr_and_exit_code(run: Runner) -> None:
    result = run("--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


def test_container_sees_the_guest_kernel_and_its_own_pid_namespace(run: Runner,
                                                                  guest_image) -> None:  # type: ignore[no-untyped-def]
    result = run("--", "sh", "-c", "uname -r; echo pid=$$; ps -o pid,comm")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == guest_image.kernel_release
    assert lines[0] != os.uname().release
    assert lines[1] == "pid=1"
    processes = [line.split()[1] for line in lines[3:]]
    # Only the container's own shell and ps: no agent, no python, no crun.
    assert processes and set(processes) <= {"sh", "ps"}, lines


def test_stdin_is_passed_with_dash_i(run: Runner) -> None:
    payload = b"".join(b"line %d\n" % i for i in range(2000))
    result = run("-i", "--", "sh", "-c", "cat; echo done")
    assert result.returncode == 0
    result = run("-i", "--", "sh", "-c", "cat; echo done", input=payload)
    assert result.stdout == payload + b"done\n"


def test_rootfs_is_not_modified_by_the_container(run: Runner, tmp_path: Path,
                                                 guest_image) -> None:  # type: ignore[no-untyped-def]
    rootfs = tmp_path / "rootfs"
    shutil.copytree(guest_image.busybox_rootfs, rootfs, symlinks=True)
    result = run("--rootfs", str(rootfs), "--", "sh", "-c",
                 "echo hi > /made-inside && cat /made-inside && rm /bin/cat && ls /made-inside")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\n/made-inside\n"
    assert not (rootfs / "made-inside").exists()
    assert (rootfs / "bin" / "cat").is_symlink()


def test_missing_rootfs(run: Runner, tmp_path: Path) -> None:
    result = run("--rootfs", str(tmp_path / "nope"), "--", "true")
    assert result.returncode == 125
    assert "rootfs" in one_line_error(result) and "does not exist" in one_line_error(result)


def test_missing_command(run: Runner) -> None:
    result = run()
    assert result.returncode == 125
    assert "no command given" in one_line_error(result)


def test_command_not_in_rootfs(run: Runner) -> None:
    result = run("--", "/no/such/program")
    assert result.returncode != 0
    message = result.stderr.decode()
    assert "/no/such/program" in message


def test_missing_guest_image(run: Runner, tmp_path: Path) -> None:
    result = run("--image", str(tmp_path / "noimage"), "--", "true")
    assert result.returncode == 125
    assert "guest image not found" in one_line_error(result)


def test_truncated_guest_image(run: Runner, tmp_path: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "image"
    image.mkdir()
    for name in ("manifest.json", "vmlinux"):
        os.link(guest_image.directory / name, image / name)
    (image / "initrd.img").write_bytes(guest_image.initrd.read_bytes()[: 1 << 20])
    result = run("--image", str(image), "--", "true")
    assert result.returncode == 125
    assert "corrupt" in one_line_error(result) and "initrd.img" in one_line_error(result)


def test_guest_image_corrupt_inside(run: Runner, tmp_path: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    """Same size, good header, garbage body: only booting can tell, and it must say so."""
    image = tmp_path / "image"
    image.mkdir()
    for name in ("manifest.json", "vmlinux"):
        os.link(guest_image.directory / name, image / name)
    data = bytearray(guest_image.initrd.read_bytes())
    data[4096:] = bytes(len(data) - 4096)
    (image / "initrd.img").write_bytes(bytes(data))
    result = run("--image", str(image), "--rootfs", str(guest_image.busybox_rootfs),
                 "--boot-timeout", "60", "--", "true")
    assert result.returncode == 125
    first = one_line_error(result)
    assert "the VM exited while booting" in first, result.stderr
    assert "last lines of the guest console" in result.stderr.decode()


def test_qemu_that_fails_to_start_reports_its_own_words(run: Runner) -> None:
    result = run("--memory", "64T", "--", "true")
    assert result.returncode == 125
    first = one_line_error(result)
    assert "QEMU failed to start" in first
    assert "cannot set up guest memory" in first


def test_qemu_binary_that_cannot_run(run: Runner, tmp_path: Path) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'qemu: -machine microvm: unsupported machine type' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    result = run("--qemu-binary", str(fake), "--", "true")
    assert result.returncode == 125
    first = one_line_error(result)
    assert "QEMU failed to start (exit code 1)" in first
    assert "unsupported machine type" in first


@pytest.mark.parametrize("memory", ["64M", "128M"])
def test_memory_too_small_to_boot(run: Runner, memory: str) -> None:
    result = run("--memory", memory, "--boot-timeout", "90", "--", "true")
    assert result.returncode == 125
    first = one_line_error(result)
    assert "while booting" in first and "raise --memory" in first, result.stderr


def test_memory_below_the_floor_is_refused_before_booting(run: Runner) -> None:
    result = run("--memory", "16M", "--", "true")
    assert result.returncode == 125
    assert "below the minimum" in one_line_error(result)


def test_qemu_killed_while_the_command_runs(run: Runner, state_dir: Path) -> None:
    proc = subprocess.Popen(run.argv("--", "sh", "-c", "echo started; sleep 60"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        pids = leaks.qemu_processes(str(state_dir))
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 125
    message = stderr.decode()
    assert message.startswith("vmrt: the VM died while the command ran: "
                              "QEMU was killed by signal 9"), message
    assert "last lines of the guest console" in message


def test_killing_the_cli_takes_its_vm_along(run: Runner, state_dir: Path) -> None:
    proc = subprocess.Popen(run.argv("--", "sh", "-c", "echo started; sleep 60"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    deadline = time.monotonic() + 10
    while leaks.qemu_processes(str(state_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
