"""Structured JSON logs: one object per line with ``ts``, ``level``, ``logger``, ``msg`` and the
record's fields (``rpc``, ``request_id``, ``status``, ``latency_ms``, ``error_id``, ...)."""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["JsonFormatter", "NOISY_LOGGERS", "log_fields", "quiet_third_party", "use_json_logs"]


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


#: Third-party loggers whose records below WARNING Tandem's CLI drops (unless --verbose).
NOISY_LOGGERS = ("faiss", "faiss.loader", "bm25s", "sentence_transformers", "httpx", "urllib3")


def quiet_third_party(record: logging.LogRecord) -> bool:
    """Logging filter: third-party records below WARNING are dropped."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] not in NOISY_LOGGERS


def use_json_logs(level: int = logging.INFO) -> None:
    """Route the root logger to stderr as JSON lines (``tandem serve`` calls this at start)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if level > logging.DEBUG:
        handler.addFilter(quiet_third_party)
