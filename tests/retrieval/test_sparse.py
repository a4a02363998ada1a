import numpy as np
import scipy.sparse as sp

from tandem.retrieval.sparse import row_entries, rows_values


def test_rows_values_match_dense_lookup():
    rng = np.random.default_rng(3)
    for density in (0.0, 0.05, 0.3, 1.0):
        m = sp.random(40, 70, density=density, format="csr", random_state=int(density * 100), dtype=np.float32)
        m.sort_indices()
        rows = rng.integers(0, 40, 7)  # repeats allowed
        cols = rng.integers(0, 70, 90)
        np.testing.assert_array_equal(rows_values(m, rows, cols), m.toarray()[rows][:, cols])
    empty = sp.csr_matrix((3, 3), dtype=np.float32)
    assert rows_values(empty, np.array([1, 2]), np.array([0, 1, 2])).shape == (2, 3)
    assert rows_values(empty, np.zeros(0, np.int64), np.array([0])).shape == (0, 1)


def test_row_entries_are_the_rows_in_order():
    m = sp.csr_matrix(np.array([[0, 1, 2], [0, 0, 0], [3, 0, 4]], np.float32))
    at, cols, vals = row_entries(m, np.array([2, 1, 0]))
    assert at.tolist() == [0, 0, 2, 2] and cols.tolist() == [0, 2, 1, 2] and vals.tolist() == [3, 4, 1, 2]
