"""Structured JSON logs: one object per line with ``ts``, ``level``, ``logger``, ``msg`` and the
record's fields (``rpc``, ``request_id``, ``status``, ``latency_ms``, ``error_id``, ...)."""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["JsonFormatter", "log_fields", "use_json_logs"]


class JsonFormatter(logging.Formatter):
    """Formats every record as one JSON object; fields passed with :func:`log_fields` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_fields(logger: logging.Logger, level: int, msg: str, exc_info: bool = False, **fields: object) -> None:
    """Log ``msg`` with structured ``fields`` (rendered as JSON keys by :class:`JsonFormatter`)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})


def use_json_logs(level: int = logging.INFO) -> None:
    """Route the root logger to stderr as JSON lines (``tandem serve`` calls this at start)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
