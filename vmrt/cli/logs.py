"""A container's CRI log file, read back: each line to its own stream."""

from __future__ import annotations

import sys
import time

from cri_api.v1 import api_pb2 as api

from vmrt.cli.cri_client import Client, CRIError


def copy_log(client: Client, status: api.ContainerStatus, follow: bool,
             timestamps: bool = False) -> None:
    """A container's log to stdout and stderr, each line to its own stream;
    ``follow``: until the container has exited (its log is complete then)."""
    if not status.log_path:
        raise CRIError(f"container {status.id[:13]} has no log file")
    pending: dict[bytes, bytes] = {}
    position = 0
    while True:
        current = client.find_container(status.id) if follow else None
        try:
            with client.open_log(status.log_path) as f:
                f.seek(position)
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    write_log_line(line, timestamps, pending)
                    position += len(line)
        except FileNotFoundError:
            if not follow:
                raise CRIError(f"log file {status.log_path} does not exist") from None
        if not follow:
            return
        # Read after the state: vmrtd records an exit once the log has all
        # the container wrote, so this pass has read it all.
        if current is None or current.state == api.CONTAINER_EXITED:
            return
        time.sleep(0.2)


def write_log_line(line: bytes, timestamps: bool, pending: dict[bytes, bytes]) -> None:
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return
    stamp, stream, tag = parts[:3]
    message = parts[3] if len(parts) > 3 else b""
    out = sys.stderr.buffer if stream == b"stderr" else sys.stdout.buffer
    if tag == b"P":
        pending[stream] = pending.get(stream, b"") + message
        return
    text = pending.pop(stream, b"") + message
    out.write((stamp + b" " if timestamps else b"") + text + b"\n")
    out.flush()
