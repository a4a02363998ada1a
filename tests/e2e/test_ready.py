"""Ready means ready: on a real bundle served by `tandem serve`, the first request of each kind
after health says SERVING (and after a hot swap) takes no longer than 3x the median of the next
hundred of its kind (plus a 50 ms allowance for a woken thread and cold CPU caches). Before the warm-up, the first Search loaded the query encoder itself
(11.4 s on a fresh clone of the demo)."""

import gzip
import json
import shutil
import statistics
import time
from pathlib import Path

import grpc
import pytest

from tandem.retrieval.bundle import current_bundle, read_manifest, set_current, write_bundle
from tandem.retrieval.catalog_io import load_catalog
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tests.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

_SLACK = 3.0
_NEXT = 100
# An absolute allowance on top of the ratio. The defect this test guards against cost seconds (the
# first Search loaded the query encoder: 11.4 s). A warm path still runs its first call a little slower
# than its hundredth on these machines (cold CPU caches, a thread just woken): CI read a first Recommend
# of 2.6 ms against a 0.8 ms median, and a plain numpy loop idle for 0.5 s takes 15-26 ms on its next
# call against 1.5 ms. 3x of a sub-millisecond median cannot tell those apart from a cold path.
_ALLOWANCE_MS = 50.0


def _copy_bundle(src, root, version):
    """A second bundle with ``src``'s files under a new version name (a fresh engine to swap in)."""
    manifest = {k: v for k, v in read_manifest(src).items()
                if k not in ("format_version", "version", "created_at", "files")}

    def fill(folder):
        for path in src.iterdir():
            if path.name != "manifest.json":
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, folder / path.name)
        return manifest

    return write_bundle(root, fill, version=version, make_current=False)


def _send(stub, queries, users, items):
    """The first request of each kind, then the next hundred of each kind, one at a time."""
    kinds = {
        # distinct queries, so that every Search encodes its query (no cache hit)
        "Search": lambda n: stub.Search(pb.SearchRequest(query=f"{queries[n % len(queries)]} {n}", k=10), timeout=120),
        "Recommend": lambda n: stub.Recommend(pb.RecommendRequest(user_id=users[n % len(users)], k=10), timeout=120),
        "SimilarItems": lambda n: stub.SimilarItems(pb.SimilarItemsRequest(item_id=items[n % len(items)], k=10),
                                                    timeout=120),
    }
    for call in kinds.values():
        assert call(0).items
    for call in kinds.values():
        for n in range(1, _NEXT + 1):
            assert call(n).items


def _settled_size(path):
    """The log's size once the server has written the lines of the calls made so far."""
    size = -1
    while size != path.stat().st_size:
        size = path.stat().st_size
        time.sleep(0.3)
    return size


def _assert_warm(log, offset, when):
    """Each kind's first request against the median of its next hundred, as the server measured
    them (its rpc log's latency_ms): the client's own clock on a busy 2-core CI box adds
    scheduling noise of the order of the whole request (a warm 2 ms Recommend read 15 ms)."""
    with open(log, encoding="utf-8") as f:
        f.seek(offset)
        lines = [json.loads(line) for line in f if line.startswith("{") and '"msg": "rpc"' in line]
    measured = {}
    for kind in ("Search", "Recommend", "SimilarItems"):
        ms = [line["latency_ms"] for line in lines if line["rpc"] == kind]
        assert len(ms) == _NEXT + 1, (kind, len(ms))
        measured[kind] = (ms[0], statistics.median(ms[1:]))
    slow = {kind: f"first {first:.1f} ms, median of the next {_NEXT} {median:.1f} ms"
            for kind, (first, median) in measured.items() if first > _SLACK * median + _ALLOWANCE_MS}
    assert not slow, f"{when}: {slow}"


def test_first_request_after_serving_and_after_a_swap_is_not_slow(tiny_bundles, tiny_shop, tmp_path):
    src = current_bundle(tiny_bundles)
    root = tmp_path / "bundles"
    shutil.copytree(src, root / src.name)
    set_current(root, src.name)
    with gzip.open(tiny_shop / "queries.jsonl.gz", "rt") as f:
        queries = sorted({json.loads(line)["query"] for line in f})
    users = (src / "histories" / "users.txt").read_text().split()
    catalog = load_catalog(src / "catalog")
    items = [catalog.item(i).item_id for i in range(0, len(catalog), 3)]

    s = Server(root)
    try:
        s.wait_ready()
        with grpc.insecure_channel(s.addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)  # connected: only the request is timed
            stub, admin = pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel)
            offset = _settled_size(Path(s.log.name))
            _send(stub, queries, users, items)
            _assert_warm(s.log.name, offset, "after SERVING")

            second = _copy_bundle(src, root, f"{src.name}-copy")
            set_current(root, second.name)  # the watcher swaps it in, warmed first
            deadline = time.monotonic() + 120
            while admin.GetStatus(pb.GetStatusRequest(), timeout=10).bundle_version != second.name:
                assert time.monotonic() < deadline, f"the server did not swap in {second.name}; see {s.log.name}"
                time.sleep(0.05)
            offset = _settled_size(Path(s.log.name))
            _send(stub, queries, users, items)
            _assert_warm(s.log.name, offset, "after a hot swap")
    finally:
        s.stop()
