import logging

from tandem.server.logs import quiet_third_party


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_third_party_chatter_is_dropped_but_warnings_and_our_own_logs_pass():
    assert not quiet_third_party(_record("bm25s", logging.DEBUG))  # bm25s raises its own level to DEBUG
    assert not quiet_third_party(_record("faiss.loader", logging.INFO))
    assert quiet_third_party(_record("bm25s", logging.WARNING))
    assert quiet_third_party(_record("tandem.index_builder.build", logging.INFO))
    assert quiet_third_party(_record("tandem.server.rpc", logging.DEBUG))
