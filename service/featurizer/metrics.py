"""Every Prometheus metric featurizer exports, declared once, on a registry owned by the server.

A fresh ``CollectorRegistry`` per ``Metrics`` object lets tests run several servers in one
process and read ``registry.get_sample_value(...)``. Labels stay low-cardinality: protocol, method,
model, version, state, reason, code, device; never request ids or image sizes. Device memory is read
after each batch, on CUDA only (no GPU was available to test that path).

Counters an alert watches start at 0 for every label set known in advance (``model_seen``, and
the drop reasons when a model's observer is made): a series born at 1 would hide its first event
from ``increase()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

from featurizer.states import ModelState

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DROP_REASONS = ("cancelled", "deadline", "overload")  # batcher.py's reasons for not computing an image


class Metrics:
    """The server's metric families (docs/operations.md explains each)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # protocol: featurizer.v1, v2-grpc or v2-http (rpc/observation.py's Protocol); dashboards
        # and alerts aggregate over it with sum by (...), so series queries from before it still work.
        self.requests = Counter("featurizer_requests", "RPCs handled, by gRPC status code name",
                                ["protocol", "method", "model", "code"], registry=r)
        self.request_duration = Histogram("featurizer_request_duration_seconds", "RPC latency",
                                          ["protocol", "method", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("featurizer_in_flight_requests", "RPCs being handled right now",
                               ["protocol", "method"], registry=r)
        self.images = Counter("featurizer_images", "Images served (successfully embedded or predicted)",
                              ["model"], registry=r)
        self.batch_size = Histogram("featurizer_batch_size", "Images per forward pass",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("featurizer_queue_wait_seconds", "Time an image waited in the batch queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.preprocess = Histogram("featurizer_preprocess_seconds", "Decode + resize time per request",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("featurizer_inference_seconds", "Forward pass time per batch",
                                   ["model", "device"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("featurizer_queue_depth", "Images waiting in the batch queue",
                                 ["model"], registry=r)
        self.dropped = Counter("featurizer_dropped", "Images not computed: cancelled, deadline or overload",
                               ["model", "reason"], registry=r)
        self.model_state = Gauge("featurizer_model_state", "1 for the current state of each model version",
                                 ["model", "version", "state"], registry=r)
        self.load_failures = Counter("featurizer_model_load_failures", "Model versions that failed to load",
                                     ["model"], registry=r)
        self.build_info = Info("featurizer_build", "Build and runtime versions", registry=r)
        self.device_memory = Gauge("featurizer_device_memory_bytes", "Device memory in use (CUDA only)",
                                   ["device"], registry=r)
        # The response cache (--cache-bytes; inference/cache.py): declared always, 0 while it is off.
        self.cache_hits = Counter("featurizer_cache_hits", "Images answered from the response cache",
                                  ["model"], registry=r)
        self.cache_misses = Counter("featurizer_cache_misses", "Images looked up in the response cache and computed",
                                    ["model"], registry=r)
        self.cache_evictions = Counter("featurizer_cache_evictions", "Cache entries evicted to stay within --cache-bytes",
                                       registry=r)
        self.cache_bytes = Gauge("featurizer_cache_bytes", "Bytes held by the response cache (rows + per-entry overhead)",
                                 registry=r)
        self.cache_entries = Gauge("featurizer_cache_entries", "Images held by the response cache", registry=r)

    def set_build_info(self, version: str, torch_version: str, device: str) -> None:
        self.build_info.info({"version": version, "torch": torch_version, "device": device})

    def set_model_state(self, model: str, version: int, state: Optional[ModelState]) -> None:
        """Mark ``state`` as current (None removes the version's series: it is gone)."""
        for s in ModelState:
            if state is None:
                try:
                    self.model_state.remove(model, str(version), s.value)
                except KeyError:
                    pass
            else:
                self.model_state.labels(model, str(version), s.value).set(1 if s == state else 0)

    def model_seen(self, model: str) -> None:
        """A registry scan found ``model``: its load-failure series exists from now on, at 0."""
        self.load_failures.labels(model)

    def model_observer(self, model: str, device: str,
                       memory_in_use: Optional[Callable[[], Optional[int]]] = None) -> "ModelObserver":
        """Callbacks for a model's batcher and runner; its drop series start at 0 here.
        ``memory_in_use`` reads the device's memory after each forward pass (``Device.memory_in_use``:
        None where the device keeps no count, and then no series is exported)."""
        for reason in DROP_REASONS:
            self.dropped.labels(model, reason)
        return ModelObserver(self, model, device, memory_in_use)

    def cache_observer(self) -> "CacheObserver":
        """Callbacks for the response cache (``inference/cache.py``'s CacheObserver)."""
        return CacheObserver(self)

    def serve_http(self, port: int, host: str = "0.0.0.0"):
        """Start /metrics on a daemon thread; returns (server, thread) with the bound port."""
        return start_http_server(port, addr=host, registry=self.registry)


class ModelObserver:
    """Batcher and runner callbacks for one model, writing into its labelled series."""

    def __init__(self, metrics: Metrics, model: str, device: str,
                 memory_in_use: Optional[Callable[[], Optional[int]]] = None) -> None:
        self.m = metrics
        self.model = model
        self.device = device
        self.memory_in_use = memory_in_use

    def on_queue_depth(self, depth: int) -> None:
        self.m.queue_depth.labels(self.model).set(depth)

    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        hist = self.m.queue_wait.labels(self.model)
        for wait in queue_waits:
            hist.observe(wait)

    def on_drop(self, reason: str, count: int) -> None:
        self.m.dropped.labels(self.model, reason).inc(count)

    def on_forward(self, size: int, seconds: float) -> None:
        """One forward pass (warm-up passes included: they are real work on the device)."""
        self.m.batch_size.labels(self.model).observe(size)
        self.m.inference.labels(self.model, self.device).observe(seconds)
        used = self.memory_in_use() if self.memory_in_use is not None else None
        if used is not None:
            self.m.device_memory.labels(self.device).set(used)


class CacheObserver:
    """Response-cache callbacks: evictions and the cache's current size."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def on_evict(self, count: int) -> None:
        self.m.cache_evictions.inc(count)

    def on_size(self, size_bytes: int, entries: int) -> None:
        self.m.cache_bytes.set(size_bytes)
        self.m.cache_entries.set(entries)
