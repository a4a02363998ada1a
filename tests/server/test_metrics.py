from server.metrics import ServiceMetrics


def test_engine_stats_become_labelled_histograms():
    m = ServiceMetrics()
    stats = {"two_tower_seconds": 0.002, "two_tower_candidates": 200.0, "ranker_seconds": 0.0003, "note": 7.0}
    m.observe_stats(stats)
    m.observe_stats({**stats, "item_cf_candidates": 0.0})
    r = m.registry
    assert r.get_sample_value("tandem_stage_seconds_count", {"stage": "two_tower"}) == 2
    assert r.get_sample_value("tandem_stage_seconds_sum", {"stage": "ranker"}) == 0.0006
    assert r.get_sample_value("tandem_candidates_per_source_count", {"source": "two_tower"}) == 2
    assert r.get_sample_value("tandem_candidates_per_source_bucket", {"source": "two_tower", "le": "200.0"}) == 2
    assert r.get_sample_value("tandem_candidates_per_source_count", {"source": "item_cf"}) == 1
    names = {s.name for metric in r.collect() for s in metric.samples}
    assert not any("note" in n for n in names)  # keys without a known suffix are ignored
