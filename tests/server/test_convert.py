import pytest

from tandem.server import convert
from tandem.server._generated import tandem_pb2 as pb


def test_filters_and_requests_convert():
    f = pb.Filters(categories=["A > B"], brands=["x"], price_min=1, price_max=5, in_stock_only=True,
                   exclude_item_ids=["i1"], max_per_brand=2)
    r = convert.recommend_from_pb(pb.RecommendRequest(user_id="u", k=7, filters=f,
                                                      context=[pb.Event(user_id="u", item_id="i", ts=3)]))
    assert r.k == 7 and r.filters.price_min == 1 and r.filters.max_per_brand == 2 and r.exclude_seen
    assert r.context[0].event == "purchase" and r.context[0].ts == 3
    s = convert.search_from_pb(pb.SearchRequest(query="  red shoe ", k=3))
    assert s.query == "red shoe" and s.user_id is None


@pytest.mark.parametrize(("msg", "text"), [
    (pb.SearchRequest(query="   ", k=3), "query must be between 1 and 1000 characters"),
    (pb.SearchRequest(query="ok", k=3, filters=pb.Filters(price_min=5, price_max=1)), "filters.price_min"),
    (pb.SearchRequest(query="ok", k=3, filters=pb.Filters(brands=["b" * 257])), "filters.brands must be at most 256"),
])
def test_invalid_fields_are_named(msg, text):
    with pytest.raises(convert.InvalidArgument, match=text):
        convert.search_from_pb(msg)


def test_events_validation():
    with pytest.raises(convert.InvalidArgument, match=r"events\[1\].item_id must not be empty"):
        convert.events_from_pb([pb.Event(user_id="u", item_id="i"), pb.Event(user_id="u")])
    with pytest.raises(convert.InvalidArgument, match=r"events\[0\].ts must be epoch seconds"):
        convert.events_from_pb([pb.Event(user_id="u", item_id="i", ts=-1)])
    ev = convert.events_from_pb([pb.Event(user_id="u", item_id="i", event="view", value=2.0)])[0]
    assert ev.event == "view" and ev.value == 2.0 and ev.ts > 1_700_000_000  # 0 -> receive time


def test_search_candidates_convert():
    s = convert.search_from_pb(pb.SearchRequest(query="red", k=3, candidate_item_ids=["i3", "i1", "unknown"]))
    assert s.candidate_item_ids == ("i3", "i1", "unknown")  # unknown ids are the engine's to skip and count
    assert convert.search_from_pb(pb.SearchRequest(query="red", k=3)).candidate_item_ids == ()
    at_most = [f"i{n}" for n in range(convert.LIMITS["candidates_max"])]
    assert len(convert.search_from_pb(pb.SearchRequest(query="red", k=3, candidate_item_ids=at_most))
               .candidate_item_ids) == 1000
    resp = convert.response_to_pb(convert.Response(items=(), bundle_version="v", unknown_candidates=4), "r")
    assert resp.unknown_candidates == 4


@pytest.mark.parametrize(("ids", "text"), [
    ([f"i{n}" for n in range(1001)], r"^candidate_item_ids must have at most 1000 ids, got 1001$"),
    (["i1", "i2", "i1"], r"^candidate_item_ids\[2\] must not repeat candidate_item_ids\[0\] \('i1'\)$"),
    (["i1", ""], r"^candidate_item_ids\[1\] must not be empty$"),
    (["i1", "x" * 257], r"^candidate_item_ids\[1\] must be at most 256 characters, got 257$"),
    ([f"i{n}" for n in range(999)] + ["i998"], r"^candidate_item_ids\[999\] must not repeat"),
])
def test_bad_candidates_are_refused_naming_the_element(ids, text):
    from tandem.server.client import parse_field

    with pytest.raises(convert.InvalidArgument, match=text) as err:
        convert.search_from_pb(pb.SearchRequest(query="red", k=3, candidate_item_ids=ids))
    assert parse_field(str(err.value)).startswith("candidate_item_ids")
