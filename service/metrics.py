"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Requests, windows, per-window inference latency and active stream sessions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "spquant_http_requests", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )
        self.windows = Counter(
            "spquant_windows", "windows run through the detector", ["source"], registry=self.registry
        )
        self.inference_seconds = Histogram(
            "spquant_window_inference_seconds", "detector time per stream window (its whole batch's forward pass)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_windows = Histogram(
            "spquant_batch_windows", "stream windows per forward pass (batched across sessions)",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )
        self.window_latency_seconds = Histogram(
            "spquant_stream_window_latency_seconds",
            "stream latency: from the message that completed a window to its detections being sent",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.active_sessions = Gauge("spquant_active_sessions", "open /v1/stream sessions", registry=self.registry)
        self.sessions = Counter(
            "spquant_stream_sessions", "stream sessions by how they ended", ["outcome"], registry=self.registry
        )
