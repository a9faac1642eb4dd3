"""Noisy labels by confident learning (Northcutt et al. 2021, via cleanlab): a cheap classifier
(logistic regression on the cached sentence embeddings) predicts each row's label out of fold,
so no row is judged by a model that saw it; rows whose given label the classifier confidently
rejects, in the numbers the estimated noise rates call for, are flagged.

Why this and not the judge alone: it needs no LLM and costs seconds, and it asks a different
question, "is this row consistent with the rest of its label?", which catches a generator
writing a spam text under `ham` however plausible each text looks to a judge.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from localsynth.errors import UserError


def out_of_fold_probs(emb: np.ndarray, y: np.ndarray, classes: int, *, folds: int = 5, seed: int = 0,
                      c: float = 1.0) -> np.ndarray:
    """n x classes probabilities, each row from a logistic regression fitted on the other folds
    (stratified k-fold; k lowered to the smallest class size when a class is smaller)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=classes)
    present = counts[counts > 0]
    k = int(min(folds, present.min()))
    if k < 2:
        raise UserError("noise: a label has a single row; out-of-fold probabilities need at least 2 rows per label "
                        "(disable the check with --set noise.enabled=false)")
    probs = np.zeros((len(y), classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for train, held in splitter.split(emb, y):
        model = LogisticRegression(C=c, max_iter=1000)
        model.fit(emb[train], y[train])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(emb[held])
    return probs


def label_issues(emb: np.ndarray, row_labels: list[str], labels: list[str], *, folds: int = 5, seed: int = 0,
                 c: float = 1.0, filter_by: str = "prune_by_noise_rate") -> pl.DataFrame:
    """Columns noise_issue (flagged by cleanlab), noise_quality (cleanlab's self-confidence
    score: the out-of-fold probability of the given label), noise_predicted (the classifier's
    label)."""
    from cleanlab.filter import find_label_issues

    position = {lab: i for i, lab in enumerate(labels)}
    y = np.array([position[lab] for lab in row_labels], dtype=np.int64)
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        raise UserError("noise: the rows carry a single label; confident learning needs at least two "
                        "(disable the check with --set noise.enabled=false)")
    # cleanlab wants classes 0..K-1 all present: drop the label columns no row carries
    remap = {old: new for new, old in enumerate(present)}
    probs = out_of_fold_probs(emb, np.array([remap[v] for v in y]), len(present), folds=folds, seed=seed, c=c)
    probs = np.clip(probs, 1e-12, None)
    probs /= probs.sum(axis=1, keepdims=True)
    given = np.array([remap[v] for v in y])
    issues = find_label_issues(given, probs, filter_by=filter_by, n_jobs=1)
    predicted = [labels[present[j]] for j in probs.argmax(axis=1)]
    return pl.DataFrame({"noise_issue": issues, "noise_quality": probs[np.arange(len(y)), given],
                         "noise_predicted": predicted})


def summary(signals: pl.DataFrame, labels: list[str], row_labels: pl.Series, row_ids: pl.Series,
            examples: int) -> dict[str, Any]:
    df = pl.DataFrame({"label": row_labels, "issue": signals["noise_issue"], "quality": signals["noise_quality"]})
    per = {lab: {"rows": 0, "flagged": 0, "share": 0.0} for lab in labels}
    for row in df.group_by("label").agg(pl.len().alias("n"), pl.col("issue").sum().alias("f")).iter_rows(named=True):
        per[row["label"]] = {"rows": row["n"], "flagged": int(row["f"]), "share": row["f"] / row["n"]}
    total = int(df["issue"].sum())
    worst = pl.concat([signals, row_ids.to_frame("id")], how="horizontal").filter("noise_issue").sort("noise_quality")
    shown = [{"id": r["id"], "predicted": r["noise_predicted"], "quality": round(r["noise_quality"], 4)}
             for r in worst.head(examples).iter_rows(named=True)]
    return {"flagged": total, "share": total / df.height if df.height else 0.0, "per_label": per, "examples": shown}
