"""``tandem report``: one self-contained HTML page about a bundle, with its figures beside it.

The page (``report.html``) embeds every figure as a base64 ``data:`` URI, so it can be mailed or
attached to a ticket alone; the same PNGs are written next to it. Its sections, in order:

* ``quality``: Recall@K and NDCG@K per stage, from ``tandem eval --json`` when given, else the
  metrics the build recorded on its test split (bundles built with a split);
* ``overlap``: how much the sources' candidate lists overlap, on a sample of users;
* ``coverage``: catalog coverage and popularity bias of the final lists, on the same sample
  (see :mod:`tandem.index_builder.list_stats` for the definitions and the cost);
* ``cleaning``: the cleaning report of the build's data;
* ``training``: per-epoch loss and validation metric of every model trained in epochs;
* ``latency``: serving latency histograms from ``benchmarks/serve_latency.py --json``.

A section whose input is missing says which command produces it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tandem.index_builder import report_plots as plots
from tandem.index_builder.list_stats import DEFAULT_SAMPLE_USERS, list_statistics
from tandem.index_builder.report_inputs import read_eval, read_latency, training_curves
from tandem.retrieval.bundle import current_bundle

__all__ = ["SECTIONS", "REPORT_FILE", "write_report"]

log = logging.getLogger(__name__)

#: ``id`` and heading of every section, in page order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("quality", "Offline quality by stage"),
    ("overlap", "Source overlap"),
    ("coverage", "Catalog coverage and popularity bias"),
    ("cleaning", "Data cleaning"),
    ("training", "Training curves"),
    ("latency", "Serving latency"),
)
REPORT_FILE = "report.html"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1140px;
       padding: 16px 24px 48px; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
.meta { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 8px 0; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 8px 0; }
.source { color: #666; font-size: 0.85em; }
nav a { margin-right: 12px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return _e(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.4f}"
    return _e(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


class _Figures:
    """Writes each PNG beside the page and returns its ``<img>`` tag with the bytes inlined."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[Path] = []

    def img(self, name: str, png: bytes, alt: str) -> str:
        path = self.out / f"{name}.png"
        path.write_bytes(png)
        self.files.append(path)
        data = base64.b64encode(png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}" title="{_e(path.name)}">'


def _metric_order(name: str) -> tuple[int, str, int]:
    """recall@K, ndcg@K, ... grouped by metric, K ascending; ``users`` and the like last."""
    base, _, k = name.partition("@")
    first = ("recall", "ndcg", "mrr", "hit_rate", "coverage")
    return (first.index(base) if base in first else len(first), base, int(k) if k.isdigit() else 0)


def _metric_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    stages = list(metrics)
    names: list[str] = []
    for m in metrics.values():
        names += [n for n in m if n not in names]
    names.sort(key=_metric_order)
    return _table(["metric", *stages], [[n, *[metrics[s].get(n, "-") for s in stages]] for n in names])


def _quality(manifest: Mapping[str, Any], evaluation: Mapping[str, Any] | None, eval_path: Path | None,
             folder: Path, figs: _Figures) -> str:
    parts = []
    if evaluation is not None:
        metrics = evaluation["metrics"]
        p = evaluation.get("protocol", {})
        parts.append(f'<p class="source">from {_e(eval_path)}: split {_e(p.get("name", "?"))}, '
                     f'{_e((p.get("counts") or {}).get("test_users", "?"))} test users</p>')
        if "bundle" not in evaluation:
            parts.append(_note("this evaluation is of stages fitted on the data alone (<code>tandem eval</code> "
                               f"without <code>--bundle</code>), not of the models of bundle {_e(folder.name)}"))
        elif evaluation["bundle"] != folder.name:
            parts.append(_note(f"this evaluation is of bundle {_e(evaluation['bundle'])}, not of "
                               f"{_e(folder.name)}, the bundle described by the rest of this page"))
        search = evaluation.get("search")
    else:
        metrics = manifest.get("metrics") or {}
        split = manifest.get("split") or {}
        if metrics:
            parts.append(f'<p class="source">recorded by the build on its {_e(split.get("name"))} test split '
                         "(manifest.json)</p>")
        search = manifest.get("search_metrics")
    if metrics:
        parts.append(figs.img("quality", plots.metric_curves(metrics), "Recall@K and NDCG@K by stage"))
        parts.append(_metric_table(metrics))
    else:
        parts.append(_note("no recommendation metrics: this bundle was built with split none (every event "
                           "trained on) and no --eval was given. Build with <code>split = \"leave-last-out\""
                           "</code> and run <code>tandem eval --bundle B --data D --json eval.json</code>, then "
                           "pass <code>--eval eval.json</code>."))
    if search:
        parts.append("<h3>Search (graded queries, evaluation half)</h3>")
        parts.append(_metric_table(search))
    return "".join(parts)


def _overlap(stats: Mapping[str, Any], figs: _Figures) -> str:
    ov = stats["overlap"]
    names = stats["sources"]
    rows = [[n, ov["list_length"][n], ov["unique_share"][n], ov["final_from"][n]] for n in names]
    return (f'<p class="source">{stats["users"]} users sampled from the bundle (seed {stats["seed"]}), '
            "each answered as a Recommend; history items left out of every list</p>"
            + figs.img("overlap", plots.overlap_figure(stats), "source overlap")
            + _table(["source", "mean candidates", "share found by no other source",
                      f"share of final top-{stats['k']} it retrieved"], rows))


def _coverage(stats: Mapping[str, Any], figs: _Figures) -> str:
    cov, pop = stats["coverage"], stats["popularity"]
    rows = [[s, cov[s]["items"], cov[s]["share"], pop["mean_percentile"][s]] for s in cov]
    ref = pop["reference_mean_percentile"]
    final = pop["mean_percentile"]["final"]
    summary = (f"mean popularity percentile of the final top-{stats['k']}: <b>{final:.1f}</b>, of the "
               f"{_e(pop['reference_label'])} ({pop['reference_events']:,} events): <b>{ref:.1f}</b>"
               if ref is not None and final is not None else "no items to compare")
    return (f'<p class="source">the same {stats["users"]} users; popularity = training interaction count, as '
            "a percentile of the catalog (100 = the most popular item)</p>"
            f"<p>{summary}</p>"
            + figs.img("coverage", plots.coverage_popularity_figure(stats), "coverage and popularity")
            + _table(["stage", f"distinct items in top-{stats['k']}", "share of catalog",
                      "mean popularity percentile"], rows))


def _cleaning(manifest: Mapping[str, Any]) -> str:
    c = manifest.get("cleaning") or {}
    if not c:
        return _note("the manifest has no cleaning report")
    rows = [["items read", c.get("items_read")], ["items kept", c.get("items_kept")],
            *[[f"items dropped: {k}", v] for k, v in (c.get("items_dropped") or {}).items()],
            ["duplicate item ids", c.get("duplicate_item_ids")], ["titles filled", c.get("titles_filled")],
            ["prices imputed", c.get("prices_imputed")], ["price outliers flagged", c.get("price_outliers")],
            ["events read", c.get("events_read")], ["extra events", c.get("extra_events")],
            ["events kept", c.get("events_kept")],
            *[[f"events dropped: {k}", v] for k, v in (c.get("events_dropped") or {}).items()],
            ["bot users removed", len(c.get("bot_users") or [])],
            *[[f"k-core: {k}", v] for k, v in (c.get("k_core") or {}).items()],
            ["users", c.get("users")], ["items", c.get("items")], ["items with events", c.get("items_with_events")],
            ["events", c.get("events")]]
    read = c.get("read") or {}
    read_rows = [[name, r.get("file", ""), r.get("rows_read"), r.get("rows_ok"), r.get("rows_skipped"),
                  ", ".join(f"{k} {v}" for k, v in (r.get("skipped") or {}).items()) or "-"]
                 for name, r in read.items()]
    out = (f'<p class="source">data {_e(c.get("data_dir", "?"))}</p>'
           + _table(["count", "value"], [r for r in rows if r[1] is not None]))
    if read_rows:
        out += "<h3>Rows read per file</h3>" + _table(["input", "file", "read", "ok", "skipped", "why"], read_rows)
    bots = c.get("bot_users") or []
    if bots:
        out += "<h3>Bot-like users removed</h3>" + _table(
            ["user", "events", "active hours", "reasons"],
            [[b.get("user_id"), b.get("events"), b.get("active_hours"), ", ".join(b.get("reasons", []))]
             for b in bots[:20]])
    return out


def _training(manifest: Mapping[str, Any], pipeline: Any, figs: _Figures) -> str:
    curves = training_curves(manifest, pipeline)
    if not curves:
        return _note("no model of this bundle recorded per-epoch training")
    rows = []
    for c in curves:
        last_loss = c["loss"][-1][1] if c["loss"] else None
        valid = {metric: points for metric, points in c["valid"].items() if points}
        for metric, points in (valid or {"-": []}).items():
            best = max(points, key=lambda p: p[1]) if points else None
            rows.append([c["title"], len(c["loss"]), last_loss, metric,
                         "-" if best is None else f"{best[1]:.4f} (epoch {best[0]})"])
    return (figs.img("training", plots.training_figure(curves), "training curves")
            + _table(["model", "epochs", "last training loss", "validation metric", "best"], rows))


def _latency(latency: Mapping[str, Any] | None, latency_path: Path | None, folder: Path, figs: _Figures) -> str:
    if latency is None:
        return _note("no latency measurement given: run <code>python benchmarks/serve_latency.py --bundles B "
                     "--data D --json latency.json</code> and pass <code>--latency latency.json</code>")
    results = latency["results"]
    def ms(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) else "-"

    rows = [[r["rpc"], r["concurrency"], ms(r["p50"]), ms(r.get("p95")), ms(r["p99"]),
             f"{r['rps']:,.0f}" if isinstance(r.get("rps"), (int, float)) else "-",
             r.get("n", "-"), r.get("errors", "-")] for r in results]
    where = ", ".join(f"{k} {_e(latency[k])}" for k in ("bundle", "items", "users", "cores", "seconds")
                      if k in latency)
    warning = (_note(f"this measurement is of bundle {_e(latency['bundle'])}, not of {_e(folder.name)}, "
                     "the bundle described by the rest of this page")
               if latency.get("bundle") not in (None, folder.name) else "")
    return (f'<p class="source">from {_e(latency_path)}{": " + where if where else ""}</p>' + warning
            + figs.img("latency", plots.latency_figure(results), "latency histograms")
            + _table(["RPC", "concurrency", "p50 ms", "p95 ms", "p99 ms", "req/s", "requests", "errors"], rows))


def _reference(data: Path, manifest: Mapping[str, Any], pipeline: Any) -> tuple[np.ndarray, str]:
    """Catalog indices of the data folder's purchase events (all events if it has none)."""
    from tandem.index_builder.cleaning import CleaningConfig, load_dataset
    from tandem.index_builder.config import _build
    from tandem.retrieval.data import EVENT_CODE

    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data}: not a folder; point it at the folder holding items.jsonl.gz "
                                "and events.jsonl.gz")
    cleaning = _build(CleaningConfig, (manifest.get("config") or {}).get("cleaning", {}), "cleaning")
    clean = load_dataset(Path(data), cleaning)
    if clean.catalog.item_ids != pipeline.catalog.item_ids:
        raise ValueError(f"--data {data} does not hold the catalog the bundle was built from "
                         f"({len(clean.catalog)} vs {len(pipeline.catalog)} items); pass the same data folder")
    inter = clean.interactions
    bought = inter.events == EVENT_CODE["purchase"]
    if bought.any():
        return inter.items[bought].astype(np.int64), f"purchases in {Path(data).name}"
    return inter.items.astype(np.int64), f"events in {Path(data).name} (it has no purchases)"


def write_report(bundle: Path, out: Path, *, eval_path: Path | None = None, data: Path | None = None,
                 latency_path: Path | None = None, users: int = DEFAULT_SAMPLE_USERS, k: int = 10,
                 seed: int = 0) -> Path:
    """Write ``out/report.html`` and its PNGs for ``bundle`` (a bundle root, whose CURRENT is used,
    or a bundle folder); returns the page's path. Inputs are read and checked before any work."""
    from tandem.ranking.loader import load_pipeline

    evaluation = read_eval(Path(eval_path)) if eval_path is not None else None
    latency = read_latency(Path(latency_path)) if latency_path is not None else None
    folder = current_bundle(Path(bundle))
    pipeline = load_pipeline(folder)  # verifies the manifest digest and every checksum
    manifest = json.loads((folder / "manifest.json").read_text())
    reference, label = (None, "items in the sampled users' histories")
    if data is not None:
        reference, label = _reference(Path(data), manifest, pipeline)
    stats = list_statistics(pipeline, users=users, k=k, seed=seed, reference_items=reference,
                            reference_label=label)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out)
    bodies = {
        "quality": _quality(manifest, evaluation, eval_path, folder, figs),
        "overlap": _overlap(stats, figs),
        "coverage": _coverage(stats, figs),
        "cleaning": _cleaning(manifest),
        "training": _training(manifest, pipeline, figs),
        "latency": _latency(latency, latency_path, folder, figs),
    }
    d = manifest.get("data") or {}
    head = (f"<h1>Tandem bundle {_e(folder.name)}</h1>"
            f'<p class="meta">built {_e(manifest.get("created_at", "?"))} from {_e(d.get("path", "?"))}: '
            f'{d.get("items", 0):,} items, {d.get("users", 0):,} users, {d.get("events", 0):,} events; '
            f'sources {_e(", ".join(manifest.get("sources", [])))}; rankers '
            f'{_e(", ".join(manifest.get("rankers", [])) or "none")}; split '
            f'{_e((manifest.get("split") or {}).get("name", "?"))}. Report written '
            f'{_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}.</p>'
            "<nav>" + "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS) + "</nav>")
    sections = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Tandem report {_e(folder.name)}'
            f"</title><style>{_CSS}</style></head><body>{head}{sections}</body></html>\n")
    path = out / REPORT_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    log.info("report of bundle %s written to %s (%d figures beside it)", folder.name, path, len(figs.files))
    return path
