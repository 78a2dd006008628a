"""vmrtd's own counters and histograms (prometheus_client, a registry of its
own): CRI calls by method and code with their latency, and pod starts, cold
or from a template. ``vmrt.metrics`` adds the pods' samples and serves both."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class Counters:
    """vmrtd's metrics: CRI calls (by method and code, with latency), pod
    starts (cold or from a template), and the pod samples above."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("vmrt_cri_requests", "CRI calls by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("vmrt_cri_request_seconds", "CRI call latency", ["method"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30,
                                          60, 120))
        self.pod_starts = Histogram("vmrt_pod_start_seconds",
                                    "RunPodSandbox's VM start, cold or from a template",
                                    ["path"], registry=self.registry,
                                    buckets=(.25, .5, .75, 1, 1.5, 2, 3, 4, 6, 8, 12, 20, 40))
        self._server: Any = None

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def observe_start(self, seconds: float, from_template: bool) -> None:
        self.pod_starts.labels("template" if from_template else "cold").observe(seconds)

    def serve(self, address: str) -> str:
        """Start the Prometheus endpoint (its own thread); returns host:port."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]"),
                                            registry=self.registry)
        self._server = server
        bound = server.server_address
        return f"{host}:{bound[1]}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
