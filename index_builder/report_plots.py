"""The figures of ``tandem report``, each drawn with matplotlib's Agg canvas into PNG bytes.

No pyplot: every figure is its own :class:`matplotlib.figure.Figure` on a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, so nothing touches matplotlib's global
state or needs a display. matplotlib is imported inside each function (``tandem --help`` stays fast).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["metric_curves", "overlap_figure", "coverage_popularity_figure", "training_figure",
           "latency_figure"]

_DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ks_of(metrics: Mapping[str, float], prefix: str) -> list[int]:
    return sorted(int(name.split("@", 1)[1]) for name in metrics
                  if name.startswith(prefix + "@") and name.split("@", 1)[1].isdigit())


def metric_curves(metrics: Mapping[str, Mapping[str, float]]) -> bytes:
    """Recall@K and NDCG@K against K (log axis), one line per stage (``{stage: {"recall@10": ...}}``)."""
    from matplotlib.ticker import NullFormatter

    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for ax, prefix, label in ((axes[0], "recall", "Recall@K"), (axes[1], "ndcg", "NDCG@K")):
        for stage, m in metrics.items():
            ks = _ks_of(m, prefix)
            if not ks:
                continue
            style = {"linewidth": 2.6} if stage in ("final", "fused") else {"linewidth": 1.4, "linestyle": "--"}
            ax.plot(ks, [m[f"{prefix}@{k}"] for k in ks], marker="o", label=stage, **style)
        ax.set_xscale("log")
        shown = sorted({k for m in metrics.values() for k in _ks_of(m, prefix)})
        if shown:  # the measured K as plain numbers, not 10^x ticks
            ax.set_xticks(shown, [str(k) for k in shown])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("K (list length)")
        ax.set_ylabel(label)
        ax.set_title(label + " by stage")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(bottom=0)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=9, title="stage")
    return _png(fig)


def overlap_figure(stats: Mapping[str, Any]) -> bytes:
    """Left: mean pairwise Jaccard of the sources' candidate lists; right: per source, the share of
    its candidates no other source returned and the share of final top-k items it retrieved."""
    names = list(stats["sources"])
    ov = stats["overlap"]
    jac = np.asarray(ov["jaccard"], dtype=float)
    fig = _figure(11, 4.4)
    left, right = fig.subplots(1, 2)
    im = left.imshow(jac, vmin=0, vmax=1, cmap="viridis")
    left.set_xticks(range(len(names)), names, rotation=30, ha="right")
    left.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            left.text(j, i, f"{jac[i, j]:.2f}", ha="center", va="center",
                      color="black" if jac[i, j] > 0.6 else "white", fontsize=9)
    left.set_title("candidate-list overlap (mean Jaccard)")
    fig.colorbar(im, ax=left, shrink=0.8)
    x = np.arange(len(names))
    right.bar(x - 0.2, [ov["unique_share"][n] for n in names], 0.4, label="candidates no other source found")
    right.bar(x + 0.2, [ov["final_from"][n] for n in names], 0.4, label=f"final top-{stats['k']} it retrieved")
    right.set_xticks(x, names, rotation=30, ha="right")
    right.set_ylim(0, 1.3)  # headroom for the legend above the bars (shares are <= 1)
    right.set_yticks(np.linspace(0, 1, 6))
    right.set_ylabel("share")
    right.set_title("what each source adds")
    right.legend(loc="upper right", fontsize=8)
    right.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def coverage_popularity_figure(stats: Mapping[str, Any]) -> bytes:
    """Left: catalog coverage of each stage's top-k over the sample; right: popularity percentile
    histogram of the final lists' items against the reference items."""
    cov = stats["coverage"]
    pop = stats["popularity"]
    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2)
    stages = list(cov)
    colors = ["#d62728" if s == "final" else "#1f77b4" if s == "fused" else "#7f7f7f" for s in stages]
    left.bar(range(len(stages)), [cov[s]["share"] for s in stages], color=colors)
    for i, s in enumerate(stages):
        left.text(i, cov[s]["share"], f"{cov[s]['share']:.1%}", ha="center", va="bottom", fontsize=8)
    left.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    left.set_ylabel("share of the catalog")
    left.set_ylim(0, max(cov[s]["share"] for s in stages) * 1.15 + 0.02)
    left.set_title(f"catalog coverage of top-{stats['k']} over {stats['users']} users")
    left.grid(True, axis="y", alpha=0.3)
    bins = np.linspace(0, 100, 21)
    ref = np.asarray(pop["reference_percentiles"], dtype=float)
    rec = np.asarray(pop["final_percentiles"], dtype=float)
    if ref.size:
        right.hist(ref, bins=bins, density=True, alpha=0.5, label=pop["reference_label"], color="#7f7f7f")
    if rec.size:
        right.hist(rec, bins=bins, density=True, alpha=0.6, label=f"final top-{stats['k']}", color="#d62728")
    for values, color in ((ref, "#555555"), (rec, "#d62728")):
        if values.size:
            right.axvline(values.mean(), color=color, linestyle="--", linewidth=1.5)
    right.set_xlabel("item popularity percentile (100 = most popular)")
    right.set_ylabel("density")
    right.set_title("item popularity (dashed lines: means)")
    right.legend(loc="upper left", fontsize=8)
    return _png(fig)


def training_figure(curves: Sequence[Mapping[str, Any]]) -> bytes:
    """One panel per model: training loss per epoch (left axis) and the validation metric
    (right axis), the kept epoch marked. ``curves``: ``{"title", "loss": [(epoch, v)],
    "valid": {metric name: [(epoch, v)]}, "best_epoch": int | None, "best_label": str}``."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 3.6 * ((len(curves) + 1) // 2))
    axes = np.atleast_1d(fig.subplots((len(curves) + 1) // 2, 2)).ravel()
    for ax, c in zip(axes, curves, strict=False):
        if c["loss"]:
            e, v = zip(*c["loss"], strict=True)
            ax.plot(e, v, color="#1f77b4", marker=".", label="training loss")
        ax.set_xlabel("epoch")
        epochs = [e for e, _ in c["loss"]] + [e for points in c["valid"].values() for e, _ in points]
        last = max(epochs, default=1)
        ax.set_xlim(0.5, last + 0.5)
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss", color="#1f77b4")
        ax.set_title(c["title"])
        ax.grid(True, alpha=0.3)
        twin = ax.twinx()
        for (metric, points), color in zip(c["valid"].items(), ("#d62728", "#2ca02c", "#9467bd"), strict=False):
            if points:
                e, v = zip(*points, strict=True)
                twin.plot(e, v, color=color, marker="o", label=f"validation {metric}")
        twin.set_ylabel("validation metric")
        if not any(c["valid"].values()):
            twin.set_visible(False)  # trained without a validation set: no empty 0..1 axis
        if c.get("best_epoch"):
            ax.axvline(c["best_epoch"], color="#555555", linestyle=":", label=f"{c.get('best_label', 'best epoch')} {c['best_epoch']}")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    return _png(fig)


def latency_figure(results: Sequence[Mapping[str, Any]]) -> bytes:
    """One panel per RPC: the latency histogram (log axis) of each concurrency, p50 and p99 marked."""
    rpcs = list(dict.fromkeys(r["rpc"] for r in results))
    rows = (len(rpcs) + 1) // 2
    fig = _figure(11, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, 2)).ravel()
    for ax, rpc in zip(axes, rpcs, strict=False):
        for r in (r for r in results if r["rpc"] == rpc):
            edges = np.asarray(r["histogram"]["edges_ms"], dtype=float)
            counts = np.asarray(r["histogram"]["counts"], dtype=float)
            share = counts / max(counts.sum(), 1.0)
            line = ax.stairs(share, edges, label=f"c={r['concurrency']}: p50 {r['p50']:.2f}, p99 {r['p99']:.2f} ms")
            ax.axvline(r["p99"], color=line.get_edgecolor(), linestyle=":", linewidth=1)
        used = [np.asarray(r["histogram"]["edges_ms"], dtype=float)[np.flatnonzero(r["histogram"]["counts"])[[0, -1]]
                                                                     + [0, 1]]
                for r in results if r["rpc"] == rpc and any(r["histogram"]["counts"])]
        if used:  # the bins that hold requests, not the histogram's whole 10 us .. 100 s range
            ax.set_xlim(min(u[0] for u in used) / 1.5, max(u[1] for u in used) * 1.5)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("share of requests")
        ax.set_title(rpc)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    for ax in axes[len(rpcs):]:
        ax.set_visible(False)
    return _png(fig)
