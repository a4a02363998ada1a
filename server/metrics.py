"""Prometheus metrics of the service, on their own registry (served on ``--metrics-port``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0)


class MetricsEndpoint:
    """A Prometheus ``registry`` served over HTTP on demand (the server's and the learner's)."""

    registry: CollectorRegistry
    _http: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP; returns the bound port (``port`` 0 picks a free one)."""
        httpd, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = httpd
        return int(httpd.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class ServiceMetrics(MetricsEndpoint):
    """Every metric the server exports. Names start with ``tandem_`` (see docs/operations.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("tandem_rpc_latency_seconds", "RPC latency", ["rpc"], registry=r,
                                 buckets=_LATENCY_BUCKETS)
        self.responses = Counter("tandem_rpc_responses_total", "RPC responses by status code", ["rpc", "code"],
                                 registry=r)
        self.candidates = Histogram("tandem_retrieval_candidates", "candidates a source returned per request",
                                    ["source"], registry=r, buckets=(0, 1, 10, 50, 100, 200, 500, 1000))
        self.stage_seconds = Histogram("tandem_stage_seconds", "time per pipeline stage (ranker, each source)",
                                       ["stage"], registry=r, buckets=_LATENCY_BUCKETS)
        self.bundle = Info("tandem_bundle", "the bundle serving now", registry=r)
        self.bundle_items = Gauge("tandem_bundle_items", "items in the serving bundle", registry=r)
        self.bundle_users = Gauge("tandem_bundle_users", "users with a history in the serving bundle",
                                  registry=r)
        self.events = Counter("tandem_events_ingested_total", "events durably logged", registry=r)
        self.events_refused = Counter("tandem_events_refused_total",
                                      "events refused by validation, by reason (nothing of their batch is logged)",
                                      ["reason"], registry=r)
        self.events_duplicate = Counter("tandem_events_duplicate_total",
                                        "events acknowledged but not logged again: their event_id was already logged",
                                        registry=r)
        self.events_applied = Counter("tandem_events_applied_total", "logged events on known items", registry=r)
        self.events_tailed = Counter("tandem_events_tailed_total",
                                     "events the other processes of the group logged, applied here (--processes)",
                                     registry=r)
        self.event_lag = Histogram("tandem_event_visible_lag_seconds",
                                   "time from an event's timestamp to its effect being visible", registry=r,
                                   buckets=(0.01, 0.1, 1, 10, 60, 600, 3600, 86400))
        self.swaps = Counter("tandem_bundle_swaps_total", "bundles swapped in", registry=r)
        self.refused = Counter("tandem_bundle_refused_total", "bundles refused (verification or load failed)",
                               registry=r)
        self.slot_wait = Histogram("tandem_compute_slot_wait_seconds",
                                   "time a Search/Recommend/SimilarItems call waited for a compute slot", registry=r,
                                   buckets=(0.0, *_LATENCY_BUCKETS))
        self.experiment_exposures = Counter("tandem_experiment_exposures_total",
                                            "answers an A/B experiment arm gave a user (logged exposures)",
                                            ["experiment", "arm"], registry=r)
        self.experiment_conversions = Counter("tandem_experiment_conversions_total",
                                              "clicks, carts and purchases attributed to an arm's exposures "
                                              "(live; `tandem experiment report` is exact)",
                                              ["experiment", "arm", "type"], registry=r)
        self.experiment_revenue = Counter("tandem_experiment_revenue_total",
                                          "catalog price of the purchases attributed to an arm's exposures",
                                          ["experiment", "arm"], registry=r)
        self.experiment_log_errors = Counter("tandem_experiment_exposure_log_errors_total",
                                             "exposures that could not be written to the exposure log", registry=r)
        self._stat_children: dict[str, Histogram | bool] = {}

    def watch_item_cf(self, engine: Callable[[], Any]) -> None:
        """Export the serving engine's live item-CF counters (its ``live_item_cf_stats()``), read at
        each scrape; they restart from 0 with each bundle, as the live state does."""
        self.registry.register(_LiveItemCFCollector(engine))

    def observe_stats(self, stats: Mapping[str, float]) -> None:
        """Read an engine's per-request stats: ``<stage>_seconds`` and ``<source>_candidates``
        keys (others are ignored). Each key's labelled histogram is looked up once and kept."""
        children = self._stat_children
        for key, value in stats.items():
            child = children.get(key)
            if child is None:
                if key.endswith("_seconds"):
                    child = self.stage_seconds.labels(key[: -len("_seconds")])
                elif key.endswith("_candidates"):
                    child = self.candidates.labels(key[: -len("_candidates")])
                else:
                    child = False
                children[key] = child
            if child is not False:
                child.observe(value)


class _LiveItemCFCollector:
    """``tandem_item_cf_live_*``: the live item-CF's state (retrieval/item_cf_live.py)."""

    _GAUGES = {"live_users": "users whose sequences item-CF holds beyond the bundle's",
               "live_entries": "entries of those sequences (bounded by --item-cf-live-entries)"}
    _COUNTERS = {"evicted_users": "live users evicted at the bound (their live events forgotten by item-CF)",
                 "evicted_entries": "sequence entries evicted at the bound",
                 "ignored_events": "events on items beyond the bundle's item-CF matrix (added live)",
                 "rows_recomputed": "item-CF rows recomputed from live events"}

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def describe(self) -> list:
        return []  # unchecked: the values exist only once a bundle with item-CF serves

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self._engine()
        read = getattr(engine, "live_item_cf_stats", None)
        stats = read() if read is not None else None
        if not stats:
            return
        for key, doc in self._GAUGES.items():
            yield GaugeMetricFamily(f"tandem_item_cf_{key}", doc, value=stats[key])
        for key, doc in self._COUNTERS.items():
            yield CounterMetricFamily(f"tandem_item_cf_live_{key}", doc, value=stats[key])
