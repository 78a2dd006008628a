"""What every RPC group of the CRI servicer shares."""

from __future__ import annotations

from vmrt.runtime.containers import ContainerService
from vmrt.runtime.core import Runtime
from vmrt.runtime.pods import PodService
from vmrt.runtime.streams import StreamService
from vmrt.streaming.server import StreamServer


class Base:
    def __init__(self, runtime: Runtime, stream_server: StreamServer) -> None:
        self.rt = runtime
        self.stream_server = stream_server
        self.pods = PodService(runtime)
        self.containers = ContainerService(runtime)
        # The streaming server's own: one count of sessions per pod for both.
        self.streams: StreamService = stream_server.service
        # (timestamp_ns, cpu_usage_ns) of the previous sample per container
        # or pod, to turn cumulative CPU time into usage_nano_cores.
        self.cpu_samples: dict[str, tuple[int, int]] = {}
