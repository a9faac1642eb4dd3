"""Instance-level subjectivity: accuracy against the agreement of a test instance's annotators.

 a test instance's agreement a_i is the share of annotators who chose its
majority label. It comes from a column, from several annotator columns, or from nested
agreement subsets such as Financial PhraseBank's `sentences_{50,66,75,all}agree.csv` (a
sentence's level is the highest subset it is in: 0.5, 0.66, 0.75 or 1.0; a lower bound on its
true agreement, so a gamma between two levels selects the subset above it). Accuracy and
Macro-F1 on the test instances with a_i >= gamma, over a sweep of gamma, for each condition
(a `predictions.parquet` written by `localsynth evaluate`, joined to the agreement by text).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from localsynth.errors import UserError
from localsynth.plots import figure, png

SUBSET_FILE = re.compile(r"sentences_(\d+|all)agree\.(csv|tsv|parquet|jsonl)$", re.IGNORECASE)


# ----------------------------------------------------------------------------- tables and plots


def markdown_table(df: pl.DataFrame, decimals: int = 4) -> str:
    """A Markdown table of every row and column (floats rounded, nulls blank)."""
    cells = [[_cell(v, decimals) for v in row] for row in df.iter_rows()]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(df.columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(df.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]) + "\n"


def _cell(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- instance agreement


def check_gammas(gammas: Sequence[float]) -> list[float]:
    bad = [g for g in gammas if not (isinstance(g, (int, float)) and 0.0 <= g <= 1.0)]
    if bad:
        raise UserError(f"gamma {bad[0]} is outside [0, 1]; an agreement threshold is a share, e.g. --gamma 0.75")
    if not gammas:
        raise UserError("no gamma values; give at least one threshold in [0, 1], e.g. --gamma 0.5")
    return sorted(set(float(g) for g in gammas))


def _texts(df: pl.DataFrame, text_column: str, where: str) -> pl.Expr:
    if text_column not in df.columns:
        raise UserError(f"{where} has no text column '{text_column}'; it has {', '.join(map(repr, df.columns))}")
    return pl.col(text_column).cast(pl.Utf8).str.strip_chars().alias("text")


def agreement_from_column(df: pl.DataFrame, column: str, text_column: str = "text", where: str = "the agreement file") -> pl.DataFrame:
    """(text, agreement) from a column of shares in [0, 1]; a repeated text keeps its highest."""
    if column not in df.columns:
        raise UserError(
            f"{where} has no column '{column}'; it has {', '.join(map(repr, df.columns))}; name the agreement "
            f"column with --agreement-column or the annotator columns with --annotators"
        )
    try:
        values = df[column].cast(pl.Float64)
    except pl.exceptions.PolarsError:
        raise UserError(f"{where}: column '{column}' is not numeric; it must hold shares in [0, 1]") from None
    out = df.select(_texts(df, text_column, where), values.alias("agreement")).drop_nulls()
    bad = out.filter((pl.col("agreement") < 0) | (pl.col("agreement") > 1) | pl.col("agreement").is_nan())
    if bad.height:
        raise UserError(f"{where}: column '{column}' has {bad.height} value(s) outside [0, 1] (e.g. {bad['agreement'][0]}); agreement is a share")
    return out.group_by("text").agg(pl.col("agreement").max())


def agreement_from_annotators(df: pl.DataFrame, columns: Sequence[str], text_column: str = "text",
                              where: str = "the agreement file") -> pl.DataFrame:
    """(text, agreement): the share of an instance's annotators (non-null labels in `columns`)
    who chose its majority label."""
    missing = [c for c in columns if c not in df.columns]
    if missing or len(columns) < 2:
        raise UserError(
            f"{where}: give at least two annotator columns that exist; missing {missing or 'none'}, "
            f"it has {', '.join(map(repr, df.columns))}"
        )
    labels = df.select([pl.col(c).cast(pl.Utf8) for c in columns]).rows()
    shares = []
    for row in labels:
        given = [v for v in row if v is not None and v != ""]
        shares.append(max(given.count(v) for v in set(given)) / len(given) if given else None)
    out = df.select(_texts(df, text_column, where)).with_columns(pl.Series("agreement", shares, dtype=pl.Float64))
    return out.drop_nulls().group_by("text").agg(pl.col("agreement").max())


def subset_level(name: str) -> float:
    """'sentences_66agree.csv' -> 0.66, 'sentences_allagree.csv' -> 1.0."""
    match = SUBSET_FILE.search(name)
    if not match:
        raise ValueError(name)
    return 1.0 if match.group(1).lower() == "all" else int(match.group(1)) / 100


def agreement_from_subsets(subsets: Mapping[float, pl.DataFrame], text_column: str = "text") -> pl.DataFrame:
    """(text, agreement) from nested subsets {level: frame}: the highest level a text is in."""
    frames = [f.select(_texts(f, text_column, f"the {level} subset")).with_columns(pl.lit(float(level)).alias("agreement"))
              for level, f in subsets.items()]
    return pl.concat(frames).drop_nulls().group_by("text").agg(pl.col("agreement").max())


def load_agreement(path: str | Path, column: str | None = "agreement", annotators: Sequence[str] = (),
                   text_column: str = "text") -> pl.DataFrame:
    """(text, agreement) from a folder of `sentences_*agree` files, or a file with an agreement
    column or annotator columns."""
    from localsynth.data.sources import read_table

    given = Path(os.path.expanduser(str(path)))
    if given.is_dir():
        files = {subset_level(p.name): p for p in sorted(given.iterdir()) if SUBSET_FILE.search(p.name)}
        if not files:
            raise UserError(
                f"--agreement: {given} holds no agreement subsets (files named like sentences_75agree.csv); "
                f"give that folder or a file with an agreement column"
            )
        return agreement_from_subsets({level: read_table(p, "--agreement") for level, p in files.items()}, text_column)
    df = read_table(given, "--agreement")
    if annotators:
        return agreement_from_annotators(df, annotators, text_column, str(given))
    return agreement_from_column(df, column or "agreement", text_column, str(given))


def load_predictions(path: str | Path) -> pl.DataFrame:
    """The predictions of `localsynth evaluate` (its --out folder or the parquet file)."""
    given = Path(os.path.expanduser(str(path)))
    file = given / "predictions.parquet" if given.is_dir() else given
    if not file.is_file():
        raise UserError(f"--predictions: {file} not found; give a folder written by 'localsynth evaluate --out' or its predictions.parquet")
    try:
        df = pl.read_parquet(file)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"--predictions: cannot read {file} ({str(exc).splitlines()[0][:200]}); run 'localsynth evaluate' again") from None
    missing = [c for c in ("text", "label", "predicted") if c not in df.columns]
    if missing:
        raise UserError(f"--predictions: {file} lacks column(s) {', '.join(missing)}; it must come from 'localsynth evaluate'")
    return df


def join_agreement(predictions: pl.DataFrame, agreement: pl.DataFrame, name: str) -> pl.DataFrame:
    """Predictions with an `agreement` column; every prediction must find its text."""
    keyed = predictions.drop([c for c in ("agreement",) if c in predictions.columns]).with_columns(
        pl.col("text").cast(pl.Utf8).str.strip_chars().alias("_key"))
    joined = keyed.join(agreement.rename({"text": "_key"}), on="_key", how="left").drop("_key")
    unmatched = joined["agreement"].null_count()
    if unmatched:
        example = joined.filter(pl.col("agreement").is_null())["text"][0]
        raise UserError(
            f"{unmatched} of {joined.height} predictions of '{name}' have no agreement value (e.g. {example[:80]!r}); "
            f"the agreement source must cover the test set that was evaluated"
        )
    return joined


def accuracy_curves(conditions: Mapping[str, pl.DataFrame], gammas: Sequence[float]) -> pl.DataFrame:
    """condition, gamma, n, share (of the test set), accuracy, macro_f1 on instances with
    agreement >= gamma (null where none is left). Macro-F1 over the labels present in truth
    or predictions, as `localsynth evaluate` computes it."""
    from sklearn.metrics import f1_score

    rows = []
    for name, df in conditions.items():
        for gamma in check_gammas(list(gammas)):
            part = df.filter(pl.col("agreement") >= gamma - 1e-12)
            truth, pred = part["label"].cast(pl.Utf8).to_list(), part["predicted"].cast(pl.Utf8).to_list()
            rows.append({
                "condition": name, "gamma": gamma, "n": part.height, "share": part.height / max(df.height, 1),
                "accuracy": float(np.mean([t == p for t, p in zip(truth, pred)])) if truth else None,
                "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)) if truth else None,
            })
    return pl.DataFrame(rows, schema={"condition": pl.Utf8, "gamma": pl.Float64, "n": pl.Int64, "share": pl.Float64,
                                      "accuracy": pl.Float64, "macro_f1": pl.Float64})


def plot_curves(table: pl.DataFrame) -> bytes:
    """PNG: accuracy and Macro-F1 against gamma, one curve per condition."""
    fig = figure(10, 4.2)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("accuracy", "macro_f1")):
        for (name,), part in table.group_by("condition", maintain_order=True):
            part = part.drop_nulls(metric)
            ax.plot(part["gamma"], part[metric], marker="o", label=str(name))
        ax.set_xlabel("agreement threshold gamma (instances with a_i >= gamma)")
        ax.set_ylabel("Macro-F1" if metric == "macro_f1" else "accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Test performance against instance agreement", fontsize=10)
    return png(fig)
