"""Progress of long offline work: a tqdm bar on a terminal, periodic log lines elsewhere.

A build runs for minutes. On a terminal a bar shows where it is; in a log file (CI, ``nohup``,
a scheduler) a bar's carriage returns make one unreadable line, so there a task logs a line
at most every ``interval`` seconds and one when it ends. The interval defaults to
``TQDM_MININTERVAL`` (``tandem`` sets it to 30 when stderr is not a terminal), else 30 s.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

__all__ = ["Progress", "on_terminal"]

_DEFAULT_INTERVAL_S = 30.0


def on_terminal() -> bool:
    """Whether stderr (where bars and logs go) is an interactive terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _interval_from_env() -> float:
    raw = os.environ.get("TQDM_MININTERVAL")
    try:
        value = float(raw) if raw is not None else _DEFAULT_INTERVAL_S
    except ValueError:
        return _DEFAULT_INTERVAL_S
    return value if math.isfinite(value) and value >= 0 else _DEFAULT_INTERVAL_S


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class Progress:
    """One task's progress: ``update(n, **postfix)`` as work is done, ``close()`` (or ``with``) at the end.

    ``total`` the expected count (None: unknown); ``postfix`` values (a loss, a recall) are shown
    beside the count. ``bar`` True draws a tqdm bar, False logs lines to ``logger`` at INFO,
    None picks by :func:`on_terminal`. ``enabled`` False makes every call a no-op. ``interval``
    the least seconds between log lines (0: every update). ``eta`` False leaves out the time
    left (for epochs, where early stopping, not the total, decides the end)."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "it",
                 logger: logging.Logger | None = None, interval: float | None = None,
                 bar: bool | None = None, enabled: bool = True, eta: bool = True) -> None:
        self.desc = desc
        self.eta = eta
        self.total = total
        self.unit = unit
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.enabled = enabled
        self._log = logger or logging.getLogger(__name__)
        self._interval = _interval_from_env() if interval is None else float(interval)
        self._start = self._last = time.perf_counter()
        self._logged = False
        self._closed = False
        self._bar = None
        if enabled and (on_terminal() if bar is None else bar):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more units done; ``postfix`` replaces the shown values of the same names."""
        if not self.enabled:
            return
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self._interval:
            self._last = now
            self._logged = True
            self._log.info("%s", self.line())

    def line(self, done: bool = False) -> str:
        """The text of a log line: count, share of the total, elapsed time, time left, postfix."""
        el = self.elapsed
        if done:
            parts = [f"{self.desc}: done, {self.n} {self.unit} in {el:.1f}s"]
        elif self.total:
            share = self.n / self.total
            left = el / share - el if share > 0 else float("nan")
            parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * share:.0f}%), {el:.0f}s"
                     + (f", ~{left:.0f}s left" if self.eta and math.isfinite(left) else "")]
        else:
            parts = [f"{self.desc}: {self.n} {self.unit}, {el:.0f}s"]
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def close(self, summary: bool | None = None) -> None:
        """End the task. The closing log line is written when ``summary`` is True, or (None)
        when a periodic line was logged or the task took at least ``interval`` seconds."""
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if summary or (summary is None and (self._logged or self.elapsed >= self._interval)):
            self._log.info("%s", self.line(done=True))
