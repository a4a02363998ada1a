"""``tandem experiment report``: exposures and events -> per-arm metrics with confidence intervals
and a significance test against control.

Per arm: users, exposures, attributed clicks, carts and purchases (events, see
:mod:`tandem.server.attribution`), and four per-exposure metrics: **CTR** (the share of exposures
followed by a click), **cart rate**, **conversion** (the share followed by a purchase) and
**revenue per exposure** (catalog price of each attributed purchase, summed; a purchase of an
item without a price counts 0 and is reported as unpriced). Statistics: :mod:`tandem.server.experiment_stats`.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from tandem.retrieval.data import Event
from tandem.server.attribution import CONVERSION_EVENTS, Exposure, attribute
from tandem.server.event_log import sqlite_uri
from tandem.server.experiment import Experiment
from tandem.server.experiment_stats import compare, interval, ratio_estimate

__all__ = ["METRICS", "analyze", "read_conversion_events", "format_report"]

#: metric key -> (what it counts per exposure, label)
METRICS: dict[str, tuple[str, str]] = {"ctr": ("click", "CTR"), "cart_rate": ("cart", "cart rate"),
                                       "conversion": ("purchase", "conversion"),
                                       "revenue": ("revenue", "revenue/exposure")}


def read_conversion_events(path: str | Path, since_ts: int | None = None) -> Iterator[Event]:
    """Clicks, carts and purchases of a server event log (read-only), those with ``ts >= since_ts``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path}")
    conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    marks = ",".join("?" * len(CONVERSION_EVENTS))
    try:
        cur = conn.execute(f"SELECT user_id, item_id, ts, event, value FROM events WHERE ts >= ? "
                           f"AND event IN ({marks}) ORDER BY seq", (since_ts or 0, *CONVERSION_EVENTS))
        while rows := cur.fetchmany(10_000):
            for u, i, ts, ev, v in rows:
                yield Event(u, i, int(ts), ev, v)
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"event log {path}: cannot read it ({exc}); see `tandem events check {path}`") from None
    finally:
        conn.close()


def analyze(experiment: Experiment, exposures: Iterable[Exposure], events: Iterable[Event],
            prices: Mapping[str, float]) -> dict:
    """The report as a JSON-able dict. ``exposures`` in time order; ``prices`` item id -> price
    (items without a price left out)."""
    window, shown_only = experiment.attribution_window_s, experiment.attribution == "shown"
    arms = {a.name for a in experiment.arms}
    by_user: dict[str, list[Exposure]] = defaultdict(list)
    foreign = 0
    for e in exposures:
        if e.arm in arms:
            by_user[e.user_id].append(e)
        else:
            foreign += 1  # an arm the file no longer has (it was edited during the experiment)
    seconds = {u: [e.second for e in xs] for u, xs in by_user.items()}
    # per exposure: which outcomes followed it, and its revenue
    outcome: dict[tuple[str, int], set[str]] = defaultdict(set)
    revenue: dict[tuple[str, int], float] = defaultdict(float)
    events_per_arm = {a: dict.fromkeys(CONVERSION_EVENTS, 0) for a in arms}
    unpriced = dict.fromkeys(arms, 0)
    unattributed = 0
    for ev in events:
        xs = by_user.get(ev.user_id)
        if ev.event not in CONVERSION_EVENTS:
            continue
        j = None if xs is None else attribute(xs, seconds[ev.user_id], ev.item_id, ev.ts, window, shown_only)
        if j is None:
            unattributed += 1
            continue
        arm = xs[j].arm
        events_per_arm[arm][ev.event] += 1
        outcome[(ev.user_id, j)].add(ev.event)
        if ev.event == "purchase":
            price = prices.get(ev.item_id)
            if price is None or not math.isfinite(price):
                unpriced[arm] += 1
            else:
                revenue[(ev.user_id, j)] += float(price)
    # per (arm, user) totals: exposures, and exposures followed by each outcome, revenue
    units: dict[str, dict[str, list[float]]] = {a: {"n": [], "click": [], "cart": [], "purchase": [], "revenue": []}
                                                 for a in arms}
    for user, xs in by_user.items():
        per_arm: dict[str, list[float]] = {}
        for j, e in enumerate(xs):
            t = per_arm.setdefault(e.arm, [0.0, 0.0, 0.0, 0.0, 0.0])
            got = outcome.get((user, j), ())
            t[0] += 1
            t[1] += "click" in got
            t[2] += "cart" in got
            t[3] += "purchase" in got
            t[4] += revenue.get((user, j), 0.0)
        for arm, t in per_arm.items():
            for key, v in zip(("n", "click", "cart", "purchase", "revenue"), t, strict=True):
                units[arm][key].append(v)
    alpha, comparisons = experiment.alpha, len(experiment.arms) - 1
    estimates = {a: {m: ratio_estimate(np.array(units[a][what]), np.array(units[a]["n"]))
                     for m, (what, _) in METRICS.items()} for a in arms}
    out_arms = []
    for arm in experiment.arms:
        est = estimates[arm.name]
        row = {"name": arm.name, "share": arm.share, "users": len(units[arm.name]["n"]),
               "exposures": int(sum(units[arm.name]["n"])), "events": events_per_arm[arm.name],
               "unpriced_purchases": unpriced[arm.name],
               "metrics": {m: {"value": _num(e.value), "ci": [_num(x) for x in interval(e, alpha)]}
                           for m, e in est.items()}}
        if arm is not experiment.control:
            ctl = estimates[experiment.control.name]
            row["vs_control"] = {}
            for m in METRICS:
                c = compare(ctl[m], est[m], alpha, comparisons)
                row["vs_control"][m] = {"diff": _num(c.diff), "relative": _num(c.relative),
                                        "ci": [_num(x) for x in c.ci], "z": _num(c.z), "p_value": _num(c.p_value),
                                        "significant": c.significant,
                                        "verdict": ("better" if c.diff > 0 else "worse") if c.significant else
                                        "no significant difference"}
        out_arms.append(row)
    return {"experiment": experiment.name, "control": experiment.control.name, "alpha": alpha,
            "significance_level": alpha / max(1, comparisons), "test": "delta-method z-test over users, two-sided",
            "attribution": experiment.attribution, "attribution_window_s": window, "arms": out_arms,
            "unattributed_events": unattributed, "exposures_of_other_arms": foreign}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if metric == "revenue" else f"{100 * x:.2f}%"


def format_report(report: dict) -> str:
    """The report as a plain-text table (what ``tandem experiment report`` prints)."""
    lines = [f"experiment {report['experiment']}: control {report['control']}; {report['test']}, "
             f"alpha {report['alpha']:g} (each arm vs control at {report['significance_level']:.4g}); "
             f"attribution {report['attribution']} within {report['attribution_window_s']:g} s", ""]
    header = f"{'arm':<16}{'users':>8}{'exposures':>11}{'clicks':>8}{'carts':>7}{'purch.':>8}"
    lines.append(header)
    for a in report["arms"]:
        ev = a["events"]
        lines.append(f"{a['name']:<16}{a['users']:>8}{a['exposures']:>11}{ev['click']:>8}{ev['cart']:>7}"
                     f"{ev['purchase']:>8}")
    for m, (_, label) in METRICS.items():
        lines += ["", f"{label} (95% interval per arm; difference vs control with its p-value)"]
        for a in report["arms"]:
            v = a["metrics"][m]
            text = f"  {a['name']:<14}{_fmt(v['value'], m):>10}  [{_fmt(v['ci'][0], m)}, {_fmt(v['ci'][1], m)}]"
            c = a.get("vs_control", {}).get(m)
            if c is not None:
                p = "n/a" if c["p_value"] is None else f"{c['p_value']:.4f}"
                rel = "" if c["relative"] is None else f" ({100 * c['relative']:+.1f}%)"
                diff = "n/a" if c["diff"] is None else (f"{c['diff']:+.3f}" if m == "revenue"
                                                        else f"{100 * c['diff']:+.2f} pts")
                text += f"  diff {diff}{rel}, p = {p}: {c['verdict'].upper() if c['significant'] else c['verdict']}"
            lines.append(text)
    lines += ["", f"events attributed to no exposure: {report['unattributed_events']}"]
    if report["exposures_of_other_arms"]:
        lines.append(f"exposures of arms not in the file (ignored): {report['exposures_of_other_arms']}")
    unpriced = sum(a["unpriced_purchases"] for a in report["arms"])
    if unpriced:
        lines.append(f"purchases of items without a catalog price (revenue 0): {unpriced}")
    return "\n".join(lines)
