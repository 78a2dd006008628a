#!/usr/bin/env python3
"""Boot benchmark: vmrt sandbox start against a bare boot of the same guest.

Three measurements, interleaved run by run so that machine noise hits all of
them alike, N times each:

  bare   QEMU with the same machine/CPU/memory flags, the same kernel and a
         busybox-only initramfs whose init prints a marker; timed from spawn
         to the marker on the serial console.
  ready  a vmrt sandbox VM from nothing to "agent Health answered".
  echo   ready, plus a container running ``echo`` to completion (rootfs
         shared over 9p, output collected).

The result is JSON with every sample, the medians and the ratios ready/bare
and echo/bare; absolute times on these machines mean little, ratios do.

Usage: bench/boot.py [--runs 5] [--output bench/results/boot.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from vmrt import oci
from vmrt.agent.v1 import agent_pb2 as pb
from vmrt.guest.image import GuestImage
from vmrt.hypervisor.accel import choose_accel, host_tsc_khz
from vmrt.hypervisor.spec import VMSpec, base_cmdline, machine_args
from vmrt.sandbox.settings import VMConfig
from vmrt.sandbox.vm import SandboxVM

MARKER = b"VMRT-BOOT-MARKER"


def bare_boot(image: GuestImage, config: VMConfig) -> float:
    spec = VMSpec(kernel=image.kernel, initrd=image.marker_initrd, memory_mib=config.memory_mib,
                  vcpus=config.vcpus, machine=config.machine, accel=config.accel,
                  tb_size_mib=config.tb_size_mib)
    cmdline = base_cmdline(replace(spec, tsc_khz=host_tsc_khz()))
    argv = ["qemu-system-x86_64", *machine_args(spec), "-serial", "stdio",
            "-kernel", str(image.kernel), "-initrd", str(image.marker_initrd), "-append", cmdline]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if MARKER in line:
                return time.monotonic() - start
        raise RuntimeError("the bare VM exited without printing its marker")
    finally:
        proc.kill()
        proc.wait()


async def sandbox_boot(image: GuestImage, config: VMConfig, state: Path,
                       with_echo: bool) -> tuple[float, int]:
    sandbox = SandboxVM(secrets.token_hex(6), state, image, config)
    start = time.monotonic()
    try:
        await sandbox.start()
        elapsed = sandbox.timings["agent_ready"]
        rss = _rss_kib(sandbox.pid)
        if with_echo:
            agent = sandbox.agent
            assert agent is not None
            share = await sandbox.bind_rootfs("echo", image.busybox_rootfs, readonly=True)
            spec = oci.container_spec(["echo", "hello"])
            await agent.create_container("echo", json.dumps(spec).encode(),
                                         pb.Rootfs(share_path=share, guest_overlay=True),
                                         pb.StdioOptions())
            await agent.start_container("echo")
            output = b""
            async for chunk in agent.follow_output("echo", "", pb.STDOUT):
                output += chunk.data
            status = await agent.wait_process("echo")
            assert output == b"hello\n" and status.exit_code == 0
            elapsed = time.monotonic() - start
        return elapsed, rss
    finally:
        await sandbox.destroy()


def _rss_kib(pid: int | None) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    parser = common.parser(__doc__, "boot.json")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    image = common.guest_image(args.root)
    config = VMConfig(accel=choose_accel("auto").name)
    samples: dict[str, list[float]] = {"bare": [], "ready": [], "echo": []}
    rss: list[int] = []
    with tempfile.TemporaryDirectory(prefix="vmrt-bench-") as tmp:
        state = Path(tmp)
        for run in range(args.runs):
            order = ["bare", "ready", "echo"]
            order = order[run % 3:] + order[: run % 3]
            for kind in order:
                if kind == "bare":
                    samples["bare"].append(bare_boot(image, config))
                else:
                    elapsed, qemu_rss = asyncio.run(
                        sandbox_boot(image, config, state, with_echo=kind == "echo"))
                    samples[kind].append(elapsed)
                    if kind == "ready":
                        rss.append(qemu_rss)
            print(f"run {run + 1}/{args.runs}: " + "  ".join(
                f"{k} {v[-1]:.2f}s" for k, v in samples.items()), file=sys.stderr)

    median = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "benchmark": "boot",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.machine(), "kernel": platform.release(),
                 "cpus": os.cpu_count(), "accel": config.accel},
        "config": {"machine": config.machine, "memory_mib": config.memory_mib,
                   "vcpus": config.vcpus, "tb_size_mib": config.tb_size_mib,
                   "image": image.manifest.get("key"), "initrd_bytes": image.initrd.stat().st_size},
        "runs": args.runs,
        "samples_s": samples,
        "median_s": median,
        "ratio": {"ready/bare": median["ready"] / median["bare"],
                  "echo/bare": median["echo"] / median["bare"]},
        "qemu_rss_kib_at_ready": {"median": statistics.median(rss), "samples": rss},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'':8}{'median':>9}{'ratio':>8}")
    print(f"{'bare':8}{median['bare']:8.2f}s{1.0:8.2f}")
    print(f"{'ready':8}{median['ready']:8.2f}s{result['ratio']['ready/bare']:8.2f}")
    print(f"{'echo':8}{median['echo']:8.2f}s{result['ratio']['echo/bare']:8.2f}")
    print(f"QEMU RSS at ready: {result['qemu_rss_kib_at_ready']['median'] / 1024:.0f} MiB")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
