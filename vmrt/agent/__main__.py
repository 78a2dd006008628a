"""Entry point of the guest agent: ``python3 -m vmrt.agent``."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent import futures

import grpc

from vmrt.agent import slack
from vmrt.agent.config import parse_cmdline
from vmrt.agent.containers import ContainerManager
from vmrt.agent.crun import Crun
from vmrt.agent.events import EventBus
from vmrt.agent.guest import Guest
from vmrt.agent.proctable import ProcessTable
from vmrt.agent.service import AgentService
from vmrt.agent.transport import find_serial_port, serve_serial, serve_vsock
from vmrt.agent.v1 import agent_pb2_grpc

log = logging.getLogger("vmrt.agent")


def _uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _become_subreaper() -> None:
    """As PID 1 we reap orphans anyway; run any other way, ask for them."""
    if os.getpid() == 1:
        return
    import ctypes

    from vmrt.agent.libc import LIBC

    pr_set_child_subreaper = 36
    if LIBC.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        log.warning("cannot become a child subreaper: errno %d", ctypes.get_errno())


def quiet_grpc_server() -> None:
    """gRPC's sync server wakes once a second to see whether the Python
    server object was garbage-collected; the agent's lives as long as the
    guest. Each wake-up of an idle guest is QEMU work under TCG, so once an
    hour is enough (grpc._server's constant; if a release drops it, nothing
    breaks, the wake-ups come back)."""
    import grpc._server as internals

    if hasattr(internals, "_DEALLOCATED_SERVER_CHECK_PERIOD_S"):
        internals._DEALLOCATED_SERVER_CHECK_PERIOD_S = 3600.0


def main() -> None:
    with open("/proc/cmdline") as f:
        config = parse_cmdline(f.read())
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if config.debug else logging.WARNING,
        format="vmrt-agent: %(levelname)s %(name)s: %(message)s",
    )
    log.debug("imports done at %.3fs", _uptime())
    slack.relax_agent()
    _become_subreaper()
    table = ProcessTable()
    table.start()
    guest = Guest(table)
    events = EventBus()
    containers = ContainerManager(table, Crun(table), events, guest.mount)
    if config.test_clock_offset:
        from vmrt.agent.testhooks import offset_clock

        offset_clock(config.test_clock_offset)
    if config.test_forged_events:
        from vmrt.agent.testhooks import start_event_forger

        start_event_forger(events)
    ready_at = 0.0
    service = AgentService(containers, guest, events, config.transport, lambda: ready_at)

    os.makedirs(os.path.dirname(config.grpc_socket), exist_ok=True)
    # Streams (output follows, waits, events) each hold a worker for as long
    # as they last; threads are created only as needed.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="rpc"),
        # The host's liveness pings (HTTP/2 PING every few seconds, answered
        # by gRPC's core without Python) are welcome at any rate.
        options=[("grpc.keepalive_permit_without_calls", 1),
                 ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                 ("grpc.http2.max_ping_strikes", 0)])
    agent_pb2_grpc.add_AgentServicer_to_server(service, server)
    server.add_insecure_port(f"unix:{config.grpc_socket}")
    quiet_grpc_server()
    server.start()
    slack.relax_agent()  # gRPC's core threads, whoever started them
    log.debug("gRPC server started at %.3fs", _uptime())

    if config.transport == "vsock":
        bridge = threading.Thread(
            target=serve_vsock, args=(config.vsock_port, config.grpc_socket), daemon=True
        )
    else:
        port = find_serial_port(config.serial_name)
        forged = -1
        if config.test_forged_events:
            from vmrt.agent.testhooks import open_serial_forger

            forged = open_serial_forger()
        bridge = threading.Thread(
            target=serve_serial, args=(port, config.grpc_socket, forged), daemon=True
        )
    bridge.start()
    ready_at = _uptime()
    print(f"vmrt-agent: ready at {ready_at:.3f}s ({config.transport})", file=sys.stderr,
          flush=True)
    # Not server.wait_for_termination(): it wakes ten times a second to
    # look at its event (grpc._common.wait), and each wake-up of an idle
    # guest is QEMU's work under TCG. The server never ends; this waits
    # without a timeout.
    threading.Event().wait()


if __name__ == "__main__":
    main()
