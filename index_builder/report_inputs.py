"""The inputs of ``tandem report``, read and checked: the evaluation JSON of ``tandem eval``, the
latency JSON of ``benchmarks/serve_latency.py --json`` (whose format is defined here, by
:func:`latency_record`), and the training curves a bundle records (manifest and loaded models).

Every reader raises :class:`ValueError` (or :class:`FileNotFoundError`) with one line naming the
file and what is wrong in it, which the CLI prints and exits 2 on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LATENCY_FORMAT", "LATENCY_EDGES_MS", "latency_record", "read_json", "read_eval", "read_latency",
           "training_curves"]

#: Version of the latency JSON written by ``benchmarks/serve_latency.py --json``.
LATENCY_FORMAT = 1
#: Histogram bin edges of the latency JSON: 20 log-spaced bins a decade, 10 us to 100 s.
LATENCY_EDGES_MS: np.ndarray = np.logspace(-2, 5, 141)


def latency_record(rpc: str, concurrency: int, samples_ms: Sequence[float] | np.ndarray, wall_s: float,
                   errors: int = 0) -> dict[str, Any]:
    """One measurement of the latency JSON: percentiles, throughput and the histogram of the
    ``samples_ms`` (float, one per answered request) over :data:`LATENCY_EDGES_MS`."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"latency_record({rpc!r}, c={concurrency}): no request was answered")
    counts, _ = np.histogram(np.clip(a, LATENCY_EDGES_MS[0], LATENCY_EDGES_MS[-1]), bins=LATENCY_EDGES_MS)
    return {"rpc": rpc, "concurrency": int(concurrency),
            "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "rps": float(a.size / wall_s) if wall_s > 0 else 0.0, "n": int(a.size), "errors": int(errors),
            "histogram": {"edges_ms": [float(x) for x in LATENCY_EDGES_MS], "counts": counts.tolist()}}


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; errors name the file (``what``: the option that gave it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path}: not valid JSON ({exc})") from None


def _numbers(d: Any) -> bool:
    return isinstance(d, Mapping) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          for v in d.values())


def read_eval(path: Path) -> dict[str, Any]:
    """A ``tandem eval --json`` report: ``metrics`` must map each stage to ``{metric: number}``, and
    ``metrics.search`` (if any) each search stage. Returned with the search stages moved to ``search``."""
    report = read_json(path, "--eval")
    metrics = report.get("metrics") if isinstance(report, Mapping) else None
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"--eval {path}: no 'metrics' object; expected the JSON of `tandem eval --bundle B "
                         "--data D --json FILE`")
    for stage, m in metrics.items():
        if stage != "search" and not _numbers(m):
            raise ValueError(f"--eval {path}: metrics.{stage} must map metric names to numbers")
    search = metrics.get("search", report.get("search"))  # top-level "search": reports before #13
    if search is not None and not (isinstance(search, Mapping) and all(_numbers(m) for m in search.values())):
        raise ValueError(f"--eval {path}: metrics.search must map stages to {{metric: number}}")
    out = dict(report)
    out["metrics"] = {stage: m for stage, m in metrics.items() if stage != "search"}
    if search is not None:
        out["search"] = search
    return out


def read_latency(path: Path) -> dict[str, Any]:
    """A ``serve_latency.py --json`` file (see :func:`latency_record`), checked field by field."""
    report = read_json(path, "--latency")
    if not isinstance(report, Mapping) or not isinstance(report.get("results"), list) or not report["results"]:
        raise ValueError(f"--latency {path}: no 'results' list; expected the JSON of "
                         "`benchmarks/serve_latency.py --json FILE`")
    if int(report.get("format", 0)) > LATENCY_FORMAT:
        raise ValueError(f"--latency {path}: format {report['format']} is newer than {LATENCY_FORMAT}; update tandem")
    for i, r in enumerate(report["results"]):
        where = f"--latency {path}: results[{i}]"
        if not isinstance(r, Mapping):
            raise ValueError(f"{where} is not an object")
        for key in ("rpc", "concurrency", "p50", "p99", "histogram"):
            if key not in r:
                raise ValueError(f"{where}: missing '{key}'")
        h = r["histogram"]
        edges, counts = (h.get("edges_ms"), h.get("counts")) if isinstance(h, Mapping) else (None, None)
        if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1:
            raise ValueError(f"{where}.histogram: expected 'edges_ms' with one more entry than 'counts'")
    return dict(report)


def training_curves(manifest: Mapping[str, Any], pipeline: Any) -> list[dict[str, Any]]:
    """Per trained model, the per-epoch training loss and validation metrics the bundle recorded:
    the two-tower's first fit from the manifest (``models.two_tower.history``), the served
    two-tower's own log when it differs (the refit of a split-none build trains without
    validation), and each ranker's ``history`` (``pipeline``: the loaded bundle)."""
    curves: list[dict[str, Any]] = []
    tt = (manifest.get("models") or {}).get("two_tower") or {}
    k = ((manifest.get("config") or {}).get("two_tower") or {}).get("eval_k", 10)
    hist = tt.get("history")
    if hist:
        valid = [tuple(e) for e in hist.get("valid", [])]
        curves.append({"title": "two-tower (fit with validation)",
                       "loss": list(enumerate(hist.get("loss", []), start=1)),
                       "valid": {f"recall@{k}": [(e[0], e[1]) for e in valid],
                                 f"ndcg@{k}": [(e[0], e[2]) for e in valid]},
                       "best_epoch": tt.get("best_epoch"), "best_label": "kept epoch"})
    served = getattr(pipeline.sources.get("two_tower"), "log", None)
    if served is not None and (not hist or not served.evals):
        curves.append({"title": "two-tower (served model" + (", refit on every event)" if hist else ")"),
                       "loss": list(enumerate(served.losses, start=1)),
                       "valid": {f"recall@{k}": [(e[0], e[1]) for e in served.evals],
                                 f"ndcg@{k}": [(e[0], e[2]) for e in served.evals]},
                       "best_epoch": served.best_epoch if served.evals else None, "best_label": "kept epoch"})
    for kind, ranker in sorted(pipeline.rankers.items()):
        history = list(getattr(ranker, "history", None) or [])
        if not history:
            continue
        valid_key = next((key for key in history[0] if key.startswith("valid_")), None)
        best = max(history, key=lambda h: h.get(valid_key, 0.0))["epoch"] if valid_key else None
        curves.append({"title": f"{kind} ranker",
                       "loss": [(h["epoch"], h["loss"]) for h in history],
                       "valid": {} if valid_key is None else
                       {valid_key.removeprefix("valid_"): [(h["epoch"], h[valid_key]) for h in history]},
                       "best_epoch": best, "best_label": "best validation epoch"})
    return curves
