"""Blocked nearest-neighbour cosine between two embedding sets, or within one set against the
rows before each row. Contamination (100,000 synthetic rows against a 7,600-row test set) and
within-label duplicates both need the best match per row, not the matrix: a 100,000 x 7,600
float32 matrix is 3 GB, a 4,096 x 4,096 block 64 MiB. NumPy's BLAS matmul does the work, so no
torch import is needed for an audit of cached embeddings.

`analysis.diversity.nearest_neighbours` finds each row's nearest *other* row within one set
(both directions, torch); here the questions are "nearest row of another set" and "nearest
*earlier* row" (so that keeping the first of a group of duplicates is well defined).
"""

from __future__ import annotations

import numpy as np

from localsynth.errors import UserError

DEFAULT_BLOCK = 4096


def unit_rows(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """float32 rows scaled to unit length; a zero row stays zero (its cosine with anything is 0)."""
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise UserError(f"{what}: expected an N x d array, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1.0)


def max_cosine(query: np.ndarray, ref: np.ndarray | None = None, *, block: int = DEFAULT_BLOCK,
               earlier_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine, index of the best row of `ref`) for each row of `query`; index -1 and
    cosine -inf where there is no candidate. With `earlier_only` (and no `ref`), each row is
    compared only with the rows before it in `query`."""
    if block < 1:
        raise UserError(f"block size must be at least 1; got {block}")
    q = unit_rows(query, "query embeddings")
    r = q if ref is None else unit_rows(ref, "reference embeddings")
    if earlier_only and ref is not None:
        raise ValueError("earlier_only compares a set with itself; give no ref")
    if q.shape[1] != r.shape[1]:
        raise UserError(f"embeddings differ in width ({q.shape[1]} and {r.shape[1]}); embed both with the same model")
    n, m = q.shape[0], r.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        stop = i1 if earlier_only else m
        for j0 in range(0, stop, block):
            j1 = min(j0 + block, stop)
            sims = q[i0:i1] @ r[j0:j1].T
            if earlier_only and j1 > i0:  # the block touches the diagonal: row i sees only j < i
                rows = np.arange(i0, i1)[:, None]
                sims[np.arange(j0, j1)[None, :] >= rows] = -np.inf
            top = sims.argmax(axis=1)
            values = sims[np.arange(i1 - i0), top]
            better = values > best[i0:i1]
            best[i0:i1][better] = values[better]
            arg[i0:i1][better] = top[better] + j0
    return best, arg
