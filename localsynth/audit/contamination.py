"""Contamination: synthetic texts that are (nearly) the real test set, or copies of the few-shot
pool the generator was shown. A classifier trained on test texts scores what it memorised, so
a cell trained on contaminated rows overstates the synthetic data; a copy of a pool example is
real data under a synthetic name.

Three checks, from strict to loose, each with the matched reference row:
- exact: equal after normalisation (lower case, punctuation to spaces, collapsed whitespace;
  `generation.filters.normalize_expr`, the dedup key of generation);
- near: word-set Jaccard at or above a threshold, found with generation's own MinHash LSH index
  (`generation.filters.DedupIndex`; the exact Jaccard decides, so no false positives);
- cosine: the nearest reference row by embedding cosine at or above a threshold (blocked, see
  `nearest.max_cosine`), which also catches paraphrases.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from localsynth.audit.nearest import max_cosine
from localsynth.generation.filters import DedupIndex, band_keys, jaccard, normalize_expr, word_set


def normalized(texts: pl.Series) -> pl.Series:
    return pl.DataFrame({"t": texts}).select(normalize_expr(pl.col("t")).fill_null(""))["t"]


def exact_matches(texts: pl.Series, ref: pl.Series) -> np.ndarray:
    """Index of the first reference text equal to each text after normalisation, else -1.
    Texts that normalise to nothing (emoji only) match nothing."""
    first: dict[str, int] = {}
    for i, key in enumerate(normalized(ref).to_list()):
        if key:
            first.setdefault(key, i)
    return np.array([first.get(key, -1) if key else -1 for key in normalized(texts).to_list()], dtype=np.int64)


def near_matches(texts: pl.Series, ref: pl.Series, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(index of the most similar reference text with word-set Jaccard >= threshold, else -1;
    that Jaccard, else 0) for each text, through generation's MinHash LSH index."""
    ref_norm, norm = normalized(ref), normalized(texts)
    index = DedupIndex(threshold)
    for key, keys in zip(ref_norm.to_list(), band_keys(ref_norm, threshold).tolist()):
        index.add(key, keys)
    match = np.full(norm.len(), -1, dtype=np.int64)
    score = np.zeros(norm.len(), dtype=np.float64)
    for i, (key, keys) in enumerate(zip(norm.to_list(), band_keys(norm, threshold).tolist())):
        if not key or index.check(key, keys, exact=False) is None:
            continue
        words = word_set(key)  # a hit (rare): which reference row, and how close
        for idx in {c for k in keys for c in index.buckets.get(k, ())}:
            sim = jaccard(words, word_set(index.kept[idx]))
            if sim >= threshold and (sim > score[i] or (sim == score[i] and idx < match[i])):
                match[i], score[i] = idx, sim
    return match, score


def check(texts: pl.Series, emb: np.ndarray | None, ref: pl.DataFrame, ref_emb: np.ndarray | None, prefix: str, *,
          near_threshold: float, cosine_threshold: float, block: int) -> pl.DataFrame:
    """One row per text: {prefix}_exact, _near, _jaccard, _cosine, _nn_id, _contaminated (any of
    the three), with the matched reference id in {prefix}_match_id (exact first, then near,
    then the nearest neighbour above the cosine threshold)."""
    ids = ref["id"].to_list()
    exact = exact_matches(texts, ref["text"])
    near, jac = near_matches(texts, ref["text"], near_threshold)
    cols: dict[str, Any] = {f"{prefix}_exact": exact >= 0, f"{prefix}_near": near >= 0, f"{prefix}_jaccard": jac}
    hit = (exact >= 0) | (near >= 0)
    match = np.where(exact >= 0, exact, near)
    if emb is not None and ref_emb is not None:
        cos, nn = max_cosine(emb, ref_emb, block=block)
        close = cos >= cosine_threshold
        cols[f"{prefix}_cosine"] = cos.astype(np.float64)
        cols[f"{prefix}_cosine_hit"] = close
        cols[f"{prefix}_nn_id"] = [ids[j] if j >= 0 else None for j in nn]
        match = np.where(hit, match, np.where(close, nn, -1))
        hit = hit | close
    cols[f"{prefix}_contaminated"] = hit
    cols[f"{prefix}_match_id"] = [ids[j] if j >= 0 else None for j in match]
    return pl.DataFrame(cols)


def summary(signals: pl.DataFrame, rows: pl.DataFrame, prefix: str, examples: int, texts: bool) -> dict[str, Any]:
    """Rates of each check and up to `examples` matched pairs (row ids; texts only with `texts`)."""
    n = signals.height
    out: dict[str, Any] = {"rows": n}
    for check_name in ("exact", "near", "cosine_hit", "contaminated"):
        column = f"{prefix}_{check_name}"
        if column in signals.columns:
            count = int(signals[column].sum())
            out[check_name.removesuffix("_hit")] = {"count": count, "share": count / n if n else 0.0}
    hits = pl.concat([rows.select("id", "label", "text"), signals], how="horizontal").filter(f"{prefix}_contaminated")
    shown = []
    for row in hits.head(examples).iter_rows(named=True):
        item = {"id": row["id"], "label": row["label"], "match_id": row[f"{prefix}_match_id"],
                "exact": row[f"{prefix}_exact"], "jaccard": round(row[f"{prefix}_jaccard"], 3)}
        if f"{prefix}_cosine" in row:
            item["cosine"] = round(row[f"{prefix}_cosine"], 3)
        if texts:
            item["text"] = row["text"]
        shown.append(item)
    out["examples"] = shown
    return out
