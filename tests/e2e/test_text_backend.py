"""A bundle built with an ONNX text encoder backend (docs/operations.md, "Text encoder backends"):
the manifest says which, the bundle carries the exported model, and `tandem serve` encodes queries
with it (never the torch model, never a new export)."""

import grpc
import numpy as np
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tests.conftest import TINY_CONFIG, Server

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BACKEND = "onnx-int8"


@pytest.fixture(scope="module")
def int8_bundles(tiny_shop, tmp_path_factory):
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config

    root = tmp_path_factory.mktemp("int8_bundles")
    build(tiny_shop, root, load_config(overrides={**TINY_CONFIG, "text": {"backend": BACKEND}}, environ={}))
    return root


def test_the_bundle_records_the_backend_and_keeps_the_exported_model(int8_bundles) -> None:
    from tandem.ranking.api import SearchRequest
    from tandem.ranking.loader import load_pipeline
    from tandem.retrieval.bundle import current_bundle, verify_bundle
    from tandem.retrieval.onnx_encoder import OnnxEncoderSession
    from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig

    folder = current_bundle(int8_bundles)
    manifest = verify_bundle(folder)  # the exported model is listed with its sha256
    assert manifest["models"]["text"]["backend"] == BACKEND
    listed = {entry["path"] for entry in manifest["files"]}
    assert {"sources/text/encoder/model.onnx", "sources/text/encoder/onnx_encoder.json"} <= listed
    pipeline = load_pipeline(folder)
    text = pipeline.sources["text"]
    assert text.encoder.config.backend == BACKEND
    query = text.encode_query("wireless earbuds")
    assert text.encoder.exported_folder() == folder / "sources/text/encoder" and text.encoder._tmp is None
    exported = OnnxEncoderSession(folder / "sources/text/encoder").encode(["wireless earbuds"], 1)[0]
    np.testing.assert_allclose(query, exported, atol=1e-6)
    torch_query = TextEncoder(TextEncoderConfig(backend="torch")).encode(["wireless earbuds"])[0]
    assert np.abs(query - torch_query).max() > 1e-3  # not torch fp32
    # the items were encoded by the same int8 model, in batches (int8 activations are quantised per
    # batch, so a vector depends a little on its batch: the same batches give the same vectors)
    texts = [pipeline.catalog.text(i) for i in range(len(pipeline.catalog))]
    again = OnnxEncoderSession(folder / "sources/text/encoder").encode(texts, text.encoder.config.batch_size)
    np.testing.assert_allclose(text.vectors, again, atol=1e-5)
    assert len(pipeline.search(SearchRequest(query="wireless earbuds", k=5)).items) == 5


def test_serve_searches_with_the_bundles_backend(int8_bundles) -> None:
    server = Server(int8_bundles)
    try:
        server.wait_ready()
        t = pb_grpc.TandemStub(grpc.insecure_channel(server.addr))
        r = t.Search(pb.SearchRequest(query="wireless earbuds", k=5, explain=True))
        assert len(r.items) == 5
        assert "text" in {hit.source for item in r.items for hit in item.explanation.sources}
    finally:
        server.stop()
    log = open(server.log.name).read()
    assert "text encoder exported" not in log  # the server used the bundle's model, it exported nothing
