"""``vmrtd --config FILE``: serve CRI on a unix socket until SIGTERM.

Stopping vmrtd leaves pods and their VMs running; the next vmrtd picks them up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from vmrt import crashpoint, metrics
from vmrt.config import Config, ConfigError, load
from vmrt.cri.server import serve
from vmrt.delegate import router as delegation
from vmrt.errors import VmrtError
from vmrt.guest.image import GuestImage, default_image_dir
from vmrt.hypervisor.accel import choose_accel
from vmrt.images.archive import ensure_builtin_busybox
from vmrt.network.firewall import protect_node_loopback
from vmrt.runtime import recovery
from vmrt.runtime.core import Runtime
from vmrt.runtime.streams import StreamService
from vmrt.streaming.server import StreamServer

log = logging.getLogger("vmrtd")
GRACE = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmrtd", description="vmrt's CRI daemon")
    parser.add_argument("--config", type=Path, help="TOML config file (default: built-in "
                                                    "defaults)")
    parser.add_argument("--debug", action="store_true", help="log every CRI call")
    return parser


async def _adopt_then_warm(runtime: Runtime) -> None:
    """The running pods first; then the templates (a boot each, if not on
    disk) are built in the background."""
    await recovery.adopt(runtime)
    try:
        runtime.warm()
    except Exception:  # pods boot cold; never a reason to stop serving
        log.exception("VM templates could not be prepared")


async def run(config: Config, image: GuestImage) -> None:
    runtime = Runtime(config, image)
    runtime.images.remove_partials()
    ensure_builtin_busybox(runtime.images, image.busybox_rootfs)
    # One warning about TCG, at start-up rather than at the first pod.
    choose_accel(config.hypervisor.accel)
    if config.cni.protect_node_loopback:
        await protect_node_loopback()
    recovery.load(runtime)
    await recovery.settle(runtime)
    streaming = StreamServer(StreamService(runtime), config.cri.stream_address,
                             config.cri.stream_port, config.cri.stream_idle_timeout)
    try:
        await streaming.start()
    except OSError as exc:
        raise ConfigError(f"cri.stream_address/stream_port: cannot listen on "
                          f"{config.cri.stream_address}:{config.cri.stream_port}: "
                          f"{exc.strerror or exc}") from None
    endpoint = None
    if config.metrics.address:  # before the CRI socket, so a bad address leaves none
        try:
            endpoint = metrics.Endpoint(runtime, *config.metrics.host_port())
        except OSError as exc:
            await streaming.stop()
            raise ConfigError(f"metrics.address: cannot listen on {config.metrics.address}: "
                              f"{exc.strerror or exc}") from None
        log.info("metrics on http://%s/metrics", endpoint.address)
    router = delegation.from_config(runtime)
    server = await serve(runtime, config.cri.socket, streaming, router)
    # Served from here on; calls on a pod still being adopted wait for it.
    adoption = asyncio.create_task(_adopt_then_warm(runtime), name="recovery")
    log.info("serving CRI on %s, streaming on %s (%d pods being recovered)",
             config.cri.socket, streaming.base_url, len(runtime.adoptions))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signo in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signo, stop.set)
    await stop.wait()
    log.info("stopping; pods and their VMs keep running")
    await server.stop(GRACE)
    if router is not None:
        await router.close()
    if endpoint is not None:
        endpoint.close()
    # Open exec and attach sessions end here; their processes are killed
    # (exec) or left running (attach), as when their clients disconnect.
    await streaming.stop()
    # Adoption is left to finish (each pod's is bounded), so that every VM is let go of.
    with contextlib.suppress(Exception):
        await adoption
    await recovery.detach_all(runtime)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s vmrtd %(levelname)s %(name)s: %(message)s")
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
    try:
        crashpoint.configured()
        config = load(args.config)
        image_dir = config.hypervisor.image or default_image_dir(config.storage.root)
        image = GuestImage.load(Path(image_dir).resolve())
        asyncio.run(run(config, image))
    except VmrtError as exc:
        print(f"vmrtd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
