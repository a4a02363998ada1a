"""Progress: a bar on a terminal, periodic log lines elsewhere."""

import io
import logging

from tandem.retrieval.progress import Progress


def test_log_lines_when_not_on_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="t")
    with Progress("work", 4, unit="item", logger=logging.getLogger("t"), interval=0, bar=False) as p:
        for i in range(4):
            p.update(1, loss=1.0 / (i + 1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # one per update, one when done
    assert lines[0].startswith("work: 1/4 item (25%)") and "loss 1.0000" in lines[0]
    assert lines[3].startswith("work: 4/4 item (100%)") and "loss 0.2500" in lines[3]
    assert lines[4].startswith("work: done, 4 item in ") and "loss 0.2500" in lines[4]


def test_lines_are_periodic_and_a_quick_task_stays_quiet(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="t")
    monkeypatch.setenv("TQDM_MININTERVAL", "3600")
    with Progress("quick", 1000, logger=logging.getLogger("t"), bar=False) as p:
        for _ in range(1000):
            p.update(1)
    assert caplog.records == []
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    with Progress("each", 3, logger=logging.getLogger("t"), bar=False) as p:
        for _ in range(3):
            p.update(1)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["each: 1/3 it (33%)", "each: 2/3 it (67%)",
                                                                     "each: 3/3 it (100%)", "each: done"]


def test_a_bar_on_a_terminal_logs_only_the_summary(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="t")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with Progress("drawn", 3, logger=logging.getLogger("t"), interval=0, bar=True) as p:
        p.update(3, recall=0.5)
    assert "drawn:" in err.getvalue() and "\r" in err.getvalue()  # a tqdm bar on stderr
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["drawn: done"]


def test_disabled_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="t")
    with Progress("off", 3, logger=logging.getLogger("t"), interval=0, enabled=False) as p:
        p.update(3)
    assert caplog.records == [] and p.n == 0


def test_time_left_only_where_the_total_decides_the_end(caplog):
    caplog.set_level(logging.INFO, logger="t")
    Progress("a", 4, logger=logging.getLogger("t"), interval=0, bar=False).update(1)
    Progress("b", 200, unit="epoch", logger=logging.getLogger("t"), interval=0, bar=False, eta=False).update(1)
    a, b = (r.getMessage() for r in caplog.records)
    assert "s left" in a and "s left" not in b
