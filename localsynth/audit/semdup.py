"""Semantic duplicates within a label: a row whose embedding cosine with an earlier row of the
same label is at or above a threshold. Exact and word-level near duplicates are already dropped
during generation (MinHash on word sets); paraphrases ("Win a free phone now!" / "You have won a
free phone, claim now") pass that filter but teach the classifier nothing new. Comparing each
row with the rows *before* it keeps the first of every group, so the flagged share is what a
keep-first filter removes (a row close to a flagged row alone is flagged too: conservative).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from localsynth.audit.nearest import max_cosine


def semantic_duplicates(emb: np.ndarray, labels: list[str], threshold: float, block: int) -> pl.DataFrame:
    """Columns semdup (bool), semdup_of (position of the most similar earlier row of the same
    label, null when there is none above the threshold), semdup_cosine (that cosine, or the best
    below the threshold; null for the first row of a label)."""
    n = len(labels)
    dup = np.zeros(n, dtype=bool)
    of = np.full(n, -1, dtype=np.int64)
    cos = np.full(n, np.nan, dtype=np.float64)
    positions: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        positions.setdefault(label, []).append(i)
    for members in positions.values():
        idx = np.array(members)
        best, arg = max_cosine(emb[idx], block=block, earlier_only=True)
        has = arg >= 0
        cos[idx[has]] = best[has]
        hit = has & (best >= threshold)
        dup[idx[hit]] = True
        of[idx[hit]] = idx[arg[hit]]
    return pl.DataFrame({"semdup": dup, "semdup_of": pl.Series(of).replace(-1, None),
                         "semdup_cosine": pl.Series(cos).fill_nan(None)})


def summary(signals: pl.DataFrame, labels: list[str], row_labels: pl.Series) -> dict[str, Any]:
    df = pl.DataFrame({"label": row_labels, "semdup": signals["semdup"]})
    per = {lab: {"rows": 0, "duplicates": 0, "share": 0.0} for lab in labels}
    for row in df.group_by("label").agg(pl.len().alias("n"), pl.col("semdup").sum().alias("d")).iter_rows(named=True):
        per[row["label"]] = {"rows": row["n"], "duplicates": int(row["d"]), "share": row["d"] / row["n"]}
    total = int(df["semdup"].sum())
    return {"count": total, "share": total / df.height if df.height else 0.0, "per_label": per}
