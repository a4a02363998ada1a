"""The files of a data folder: ``items.*``, the optional ``events.*`` and ``queries.*``, and
their format from the file name (docs/data.md). A folder without events makes a search-only
bundle (docs/operations.md, "Search-only shops")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SUFFIXES", "DataFiles", "file_format", "find_data_files"]

#: Accepted file name endings, in the order they are looked for.
SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class DataFiles:
    """The files of one data folder; ``events`` and ``queries`` are None when the folder has none."""

    folder: Path
    items: Path
    events: Path | None
    queries: Path | None = None


def file_format(path: str | Path) -> str:
    """``"jsonl"``, ``"csv"`` or ``"parquet"`` from the file name; gzip is handled by the opener."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".jsonl", ".csv.gz", ".csv", ".parquet"):
        if name.endswith(suffix):
            return suffix.split(".")[1]
    raise ValueError(f"{path}: unknown data file type; name it with one of the endings "
                     f"{', '.join(SUFFIXES)} (see docs/data.md)")


def find_data_files(data_dir: str | Path) -> DataFiles:
    """Locate ``items.*`` and the optional ``events.*`` and ``queries.*`` in ``data_dir``.

    Raises FileNotFoundError when the folder or its items are missing, or when a file that looks
    meant as items or events (``events.json``) has no accepted name, and ValueError when one kind
    is present in two formats (the reader would have to guess).
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist or is not a folder; point --data at the "
                                "folder holding items.jsonl.gz and events.jsonl.gz (see docs/data.md)")
    found: dict[str, Path | None] = {}
    for stem in ("items", "events", "queries"):
        hits = [folder / (stem + s) for s in SUFFIXES if (folder / (stem + s)).is_file()]
        if len(hits) > 1:
            raise ValueError(f"data folder {folder} has {stem} in more than one format "
                             f"({', '.join(p.name for p in hits)}); keep one and move the others away")
        near = sorted(p.name for p in folder.iterdir() if p.name.startswith(stem)) if not hits else []
        # no events at all is a search-only shop; a misnamed events file is a mistake to report
        if not hits and (stem == "items" or (stem == "events" and near)):
            hint = f"; found {', '.join(near)}, which is not an accepted name" if near else ""
            raise FileNotFoundError(f"data folder {folder} has no {stem} file: expected one of "
                                    f"{', '.join(stem + s for s in SUFFIXES)}{hint} (see docs/data.md)")
        found[stem] = hits[0] if hits else None
    return DataFiles(folder, found["items"], found["events"], found["queries"])  # type: ignore[arg-type]
