from tandem.server.metrics import ServiceMetrics


def test_engine_stats_become_labelled_histograms():
    m = ServiceMetrics()
    stats = {"two_tower_seconds": 0.002, "two_tower_candidates": 200.0, "ranker_seconds": 0.0003, "note": 7.0}
    m.observe_stats(stats)
    m.observe_stats({**stats, "item_cf_candidates": 0.0})
    r = m.registry
    assert r.get_sample_value("tandem_stage_seconds_count", {"stage": "two_tower"}) == 2
    assert r.get_sample_value("tandem_stage_seconds_sum", {"stage": "ranker"}) == 0.0006
    assert r.get_sample_value("tandem_retrieval_candidates_count", {"source": "two_tower"}) == 2
    assert r.get_sample_value("tandem_retrieval_candidates_bucket", {"source": "two_tower", "le": "200.0"}) == 2
    assert r.get_sample_value("tandem_retrieval_candidates_count", {"source": "item_cf"}) == 1
    names = {s.name for metric in r.collect() for s in metric.samples}
    assert not any("note" in n for n in names)  # keys without a known suffix are ignored


def test_metric_names_follow_prometheus_conventions():
    """Prometheus naming: a ``tandem_`` prefix, ``_total`` on counters, histograms named for their
    unit (base unit seconds, or a plural count noun), no ``_per_<label>`` / ``_by_<label>``."""
    from prometheus_client.metrics import MetricWrapperBase

    metrics = [v for v in vars(ServiceMetrics()).values() if isinstance(v, MetricWrapperBase)]
    assert len(metrics) >= 10
    for metric in metrics:
        name, kind, labels = metric._name, metric._type, metric._labelnames
        assert name.startswith("tandem_") and name == name.lower(), name
        full = f"{name}_total" if kind == "counter" else name  # prometheus_client keeps _total off the name
        for label in labels:
            assert f"_per_{label}" not in full and f"_by_{label}" not in full, (name, label)
        assert not any(unit in full.split("_") for unit in ("ms", "milliseconds", "minutes", "hours")), name
        if kind == "histogram":
            assert full.endswith(("_seconds", "_candidates")), name
        if kind == "gauge":
            assert not full.endswith("_total"), name
