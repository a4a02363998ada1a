"""Reading a few rows of a scipy csr matrix on the request path.

scipy's fancy indexing builds a new matrix per call (~0.1 ms); a request only needs the entries
of a handful of rows, which these functions read straight from ``indptr`` / ``indices`` / ``data``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["row_entries", "rows_values"]


def row_entries(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``m[rows]``, row after row: (position in ``rows`` int64, column int64, value)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = m.indptr[rows], m.indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, m.dtype)
    first = np.cumsum(lengths) - lengths
    pos = np.arange(total) + np.repeat(starts - first, lengths)
    return np.repeat(np.arange(rows.shape[0]), lengths), m.indices[pos].astype(np.int64), m.data[pos]


def rows_values(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 (len(rows), len(cols)): ``m[rows][:, cols]``, 0 where absent; ``m`` needs sorted
    indices. One search over the rows' entries keyed ``position * n_cols + column``, which is
    sorted because each row's indices are."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    at_row, at_col, vals = row_entries(m, rows)
    if at_col.shape[0] == 0:
        return np.zeros((rows.shape[0], cols.shape[0]), dtype=np.float32)
    width = m.shape[1]
    keys = at_row * width + at_col
    q = (np.arange(rows.shape[0], dtype=np.int64)[:, None] * width + cols[None, :]).ravel()
    at = np.minimum(np.searchsorted(keys, q), keys.shape[0] - 1)
    return np.where(keys[at] == q, vals[at], 0).astype(np.float32).reshape(rows.shape[0], cols.shape[0])
