"""What the rest of localsynth calls: the study report's data-quality table and the rank
correlation of each audit signal with the real-minus-synthetic F1 gap; the share of a run's
rows that are test contamination (for `train`'s warning and the report's marks); and the row
filter behind the generation option and the `few-shot+audited` condition.

Everything reads finished audits (report.json / rows.parquet under `<run>/audit/`), so these
functions are cheap and import nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from localsynth.audit.report import JSON, ROWS, is_complete

# signal -> (column of the quality table, what it means); a higher value is not always worse
SIGNALS = {
    "fidelity": "share of rows whose label the judge gives too",
    "flagged_share": "share flagged by confident learning",
    "contaminated_share": "share matching the real test set (exact, near or cosine)",
    "pool_copy_share": "share matching the few-shot pool",
    "semdup_share": "share of within-label semantic duplicates",
    "remote_clique_cosine": "diversity (Remote-Clique, cosine)",
    "similarity_to_real": "similarity to the real training texts",
}


def read_audit(audit: str | Path | Mapping[str, Any]) -> dict[str, Any] | None:
    """An audit's summary from its folder (or a run directory holding audit/, or the summary
    itself); None when there is no complete audit."""
    if isinstance(audit, Mapping):
        return dict(audit)
    path = Path(audit)
    if (path / "audit" / JSON).is_file():
        path = path / "audit"
    if not is_complete(path):
        return None
    return json.loads((path / JSON).read_text(encoding="utf-8"))


def _share(part: Mapping[str, Any] | None, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(part, Mapping) or key not in part:
            return None
        part = part[key]
    return float(part) if part is not None else None


def quality_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    contamination = summary.get("contamination", {})
    return {
        "rows": summary.get("rows"),
        "fidelity": _share(summary.get("fidelity"), "agreement"),
        "flagged_share": _share(summary.get("noise"), "share"),
        "contaminated_share": _share(contamination.get("test"), "contaminated", "share"),
        "pool_copy_share": _share(contamination.get("few_shot_pool"), "contaminated", "share"),
        "semdup_share": _share(summary.get("semantic_duplicates"), "share"),
    }


def audit_quality_table(audits: Mapping[tuple[str, str], str | Path | Mapping[str, Any]],
                        diversity: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per synthetic set: task, set (the study condition it feeds, e.g. few-shot), and
    the signals of its audit; with the study's diversity table (task, set, remote_clique_cosine,
    similarity_to_real) joined in. Sets without a complete audit get nulls."""
    rows = []
    for (task, name), audit in audits.items():
        summary = read_audit(audit)
        rows.append({"task": task, "set": name, **(quality_row(summary) if summary else dict.fromkeys(
            ["rows", "fidelity", "flagged_share", "contaminated_share", "pool_copy_share", "semdup_share"]))})
    schema = {"task": pl.Utf8, "set": pl.Utf8, "rows": pl.Int64, **{k: pl.Float64 for k in list(SIGNALS)[:5]}}
    table = pl.DataFrame(rows, schema=schema)
    if diversity is not None:
        keep = [c for c in ("remote_clique_cosine", "similarity_to_real") if c in diversity.columns]
        table = table.join(diversity.select("task", "set", *keep), on=["task", "set"], how="left")
    return table


def f1_gaps(cells: pl.DataFrame, sets: list[tuple[str, str]], real: str = "real") -> dict[tuple[str, str], tuple]:
    """Per (task, synthetic condition): (real F1 per seed, synthetic F1 per seed), of the
    first model and size in the cells (as the study's verdicts read them)."""
    first = cells.filter((pl.col("model") == cells["model"][0]) & (pl.col("size") == cells["size"][0]))
    per = {(t, c): np.array(g["macro_f1"].to_list(), dtype=float)
           for (t, c), g in first.group_by("task", "condition", maintain_order=True)}
    return {(t, s): (per[(t, real)], per[(t, s)]) for t, s in sets if (t, real) in per and (t, s) in per}


def signal_gap_correlation(quality: pl.DataFrame, cells: pl.DataFrame, *, resamples: int = 2000,
                           confidence: float = 0.95, seed: int = 0) -> pl.DataFrame:
    """For each signal: Spearman's rho between it and the real-minus-synthetic Macro-F1 gap
    (mean over seeds) across the synthetic sets, with a percentile bootstrap interval. Each draw
    resamples the sets with replacement and, within each drawn set, the seeds of both
    conditions (both sources of uncertainty). A draw whose signal or gap is constant has no rho
    and is left out (`draws` counts the rest)."""
    from scipy.stats import spearmanr

    gaps = f1_gaps(cells, list(zip(quality["task"], quality["set"])))
    keys = list(gaps)
    mean_gap = np.array([gaps[k][0].mean() - gaps[k][1].mean() for k in keys])
    by_key = {(r["task"], r["set"]): r for r in quality.iter_rows(named=True)}
    rng = np.random.default_rng(seed)
    out = []
    for signal in [s for s in SIGNALS if s in quality.columns]:
        values = np.array([by_key[k][signal] if by_key[k][signal] is not None else np.nan for k in keys], dtype=float)
        ok = np.isfinite(values)
        xs, ks = values[ok], [k for k, good in zip(keys, ok) if good]
        row: dict[str, Any] = {"signal": signal, "sets": len(ks), "rho": None, "low": None, "high": None, "draws": 0}
        if len(ks) >= 3 and np.ptp(xs) > 0 and np.ptp(mean_gap[ok]) > 0:
            row["rho"] = float(spearmanr(xs, mean_gap[ok]).statistic)
            draws = []
            for _ in range(resamples):
                pick = rng.integers(0, len(ks), len(ks))
                boot = np.array([rng.choice(gaps[ks[i]][0], gaps[ks[i]][0].size).mean()
                                 - rng.choice(gaps[ks[i]][1], gaps[ks[i]][1].size).mean() for i in pick])
                if np.ptp(xs[pick]) > 0 and np.ptp(boot) > 0:
                    draws.append(spearmanr(xs[pick], boot).statistic)
            if draws:
                tail = (1 - confidence) / 2
                row["low"], row["high"] = (float(v) for v in np.quantile(draws, [tail, 1 - tail]))
                row["draws"] = len(draws)
        out.append(row)
    schema = {"signal": pl.Utf8, "sets": pl.Int64, "rho": pl.Float64, "low": pl.Float64, "high": pl.Float64,
              "draws": pl.Int64}
    return pl.DataFrame(out, schema=schema)


def contaminated_share(audit: str | Path | Mapping[str, Any]) -> float | None:
    """Share of an audited set's rows that match the real test set (None: no audit, or the
    audit had no test set)."""
    summary = read_audit(audit)
    return quality_row(summary)["contaminated_share"] if summary else None


def train_warning(run_dir: str | Path) -> str | None:
    """The line `train` logs before training on a generation run whose audit found test
    contamination (None when it found none, or there is no audit)."""
    summary = read_audit(run_dir)
    share = quality_row(summary)["contaminated_share"] if summary else None
    if not share:
        return None
    count = summary["contamination"]["test"]["contaminated"]["count"]
    return (f"warning: {count} of {summary['rows']} rows of {run_dir} match the real test set "
            f"({100 * share:.1f}%, see {Path(run_dir) / 'audit' / 'report.md'}); test scores of this model "
            f"overstate it. Drop them with audit.filter_rows(..., drop_contaminated=True) or regenerate")


def filter_rows(rows: pl.DataFrame, audit_rows: pl.DataFrame, *,
                judge: Literal["keep", "drop", "relabel"] = "keep", drop_noisy: bool = False,
                drop_contaminated: bool = False, drop_semdup: bool = False) -> tuple[pl.DataFrame, dict[str, int]]:
    """`rows` (id, text, label, ...) filtered by an audit's per-row signals (joined on id):
    judge mismatches kept, dropped, or relabelled to the judge's label (rows the judge gave no
    label stay as they are); confident-learning issues, test contamination, semantic duplicates
    dropped on request. Returns the rows and what each step removed or changed."""
    cols = [c for c in ("id", "judge_label", "noise_issue", "test_contaminated", "semdup") if c in audit_rows.columns]
    df = rows.join(audit_rows.select(cols), on="id", how="left")
    counts: dict[str, int] = {}
    mismatch = pl.col("judge_label").is_not_null() & (pl.col("judge_label") != pl.col("label"))
    if judge != "keep" and "judge_label" in df.columns:
        counts["judge_mismatch"] = int(df.select(mismatch.sum()).item())
        df = df.filter(~mismatch) if judge == "drop" else df.with_columns(
            pl.when(mismatch).then(pl.col("judge_label")).otherwise(pl.col("label")).alias("label"))
    for wanted, column in ((drop_noisy, "noise_issue"), (drop_contaminated, "test_contaminated"),
                           (drop_semdup, "semdup")):
        if wanted and column in df.columns:
            counts[column] = int(df[column].fill_null(False).sum())
            df = df.filter(~pl.col(column).fill_null(False))
    return df.drop([c for c in cols if c != "id" and c not in rows.columns]), counts


def read_audit_rows(run_dir: str | Path) -> pl.DataFrame:
    path = Path(run_dir)
    return pl.read_parquet(path / "audit" / ROWS if (path / "audit" / ROWS).is_file() else path / ROWS)
