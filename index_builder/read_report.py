"""What a read reports: :class:`ReadError` (a bad row or file, naming file, line and field) and
:class:`ReadStats` (the counts of one read). Shared by the readers and the importers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["ReadError", "ReadStats"]


class ReadError(ValueError):
    """A row (or a whole file) that breaks the data contract.

    ``file`` is the file name, ``line`` the 1-based line or row number (0 for the file as a
    whole), ``field`` the offending field (None when the row itself is malformed).
    """

    def __init__(self, file: str, line: int, field: str | None, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}: " if line else f"{file}: "
        text = f'{where}field "{field}": {message}' if field else where + message
        super().__init__(text)

    def __reduce__(self):  # keep it picklable for multiprocessing callers
        return (ReadError, (self.file, self.line, self.field, self.message))


@dataclass
class ReadStats:
    """Counts of one read: every row seen, the good ones, the skipped ones by field.

    ``skipped`` maps a field name (``"json"`` / ``"csv"`` for rows that could not be parsed)
    to the number of rows skipped for it; ``errors`` keeps the first :attr:`MAX_ERRORS` messages.
    """

    file: str = ""
    rows_read: int = 0
    rows_ok: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    MAX_ERRORS: ClassVar[int] = 20

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, error: ReadError, key: str | None = None) -> None:
        """Count one skipped row under ``key`` (default: the error's field)."""
        key = key or error.field or "row"
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(str(error))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows_read": self.rows_read, "rows_ok": self.rows_ok,
                "rows_skipped": self.rows_skipped, "skipped": dict(sorted(self.skipped.items())),
                "errors": list(self.errors)}
