"""vmrtd's own counters and histograms (prometheus_client, a registry of its
own): CRI calls by method and code with their latency, and pod starts, cold
or from a template. ``vmrt.metrics`` adds the pods' samples and serves the
registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Counters:
    """CRI calls (by method and code, with latency) and pod starts (cold or
    from a template), in a registry of vmrtd's own."""

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

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def observe_start(self, seconds: float, from_template: bool) -> None:
        self.pod_starts.labels("template" if from_template else "cold").observe(seconds)
