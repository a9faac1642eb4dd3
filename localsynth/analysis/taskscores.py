"""Task-level subjectivity: "A is more objective than B" judgments -> one Bradley-Terry score
per task (log-strength, mean 0, higher = more objective; rank 1 = most objective, as in the task
configs), fitted by Hunter's MM algorithm or by logistic regression (maximum likelihood with
L-BFGS: the same estimate), with percentile bootstrap intervals over judgments; and the
Spearman correlation between each task's real-minus-synthetic F1 gap and its subjectivity.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from localsynth.errors import UserError
from localsynth.plots import figure, png

PAIR_COLUMNS = (("more_objective", "less_objective"), ("winner", "loser"))


def _known(name: str, known: Sequence[str], where: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(
            f"{where} names task '{name}', which is not a known task; {hint}known tasks: {', '.join(known)}; "
            f"fix the name, add a task config, or list the tasks with --task"
        )


def load_judgments(path: str | Path, known: Sequence[str]) -> pl.DataFrame:
    """winner, loser, count from a CSV (or other table) with more_objective,less_objective or
    winner,loser columns and an optional count column."""
    from localsynth.data.sources import read_table

    given = Path(os.path.expanduser(str(path)))
    df = read_table(given, "--judgments")
    pair = next((p for p in PAIR_COLUMNS if set(p) <= set(df.columns)), None)
    if pair is None:
        raise UserError(
            f"--judgments: {given} needs the columns more_objective,less_objective (or winner,loser); it has "
            f"{', '.join(map(repr, df.columns))}"
        )
    counts = df["count"].cast(pl.Float64, strict=False) if "count" in df.columns else pl.Series([1.0] * df.height)
    out = pl.DataFrame({"winner": df[pair[0]].cast(pl.Utf8).str.strip_chars(), "loser": df[pair[1]].cast(pl.Utf8).str.strip_chars(),
                        "count": counts})
    if out.height == 0 or out.null_count().sum_horizontal()[0] or (out["count"] < 0).any():
        raise UserError(f"--judgments: {given} has no judgments, an empty cell or a negative/non-numeric count; every row needs both tasks")
    for name in sorted(set(out["winner"]) | set(out["loser"])):
        _known(name, known, f"--judgments {given}")
    same = out.filter(pl.col("winner") == pl.col("loser"))
    if same.height:
        raise UserError(f"--judgments: {given} compares task '{same['winner'][0]}' with itself; remove those rows")
    return out


def win_matrix(judgments: pl.DataFrame, tasks: Sequence[str], weights: np.ndarray | None = None) -> np.ndarray:
    index = {t: i for i, t in enumerate(tasks)}
    w = np.zeros((len(tasks), len(tasks)))
    counts = judgments["count"].to_numpy() if weights is None else weights
    np.add.at(w, (np.array([index[t] for t in judgments["winner"]]), np.array([index[t] for t in judgments["loser"]])), counts)
    return w


def _connected(w: np.ndarray) -> bool:
    """A finite maximum-likelihood estimate exists iff 'beat' is strongly connected (Zermelo)."""
    from scipy.sparse.csgraph import connected_components

    return connected_components(w > 0, directed=True, connection="strong")[0] == 1


def fit_bradley_terry(w: np.ndarray, method: str = "mm", prior: float = 0.0, tol: float = 1e-10,
                      max_iter: int = 100_000) -> np.ndarray:
    """Log-strengths (mean 0) from a win matrix w[i, j] = times i beat j. `prior` adds that many
    virtual wins each way to every pair (a shrinkage that makes the estimate always finite)."""
    k = w.shape[0]
    w = w + prior * (1 - np.eye(k))
    if not _connected(w):
        raise ValueError("not strongly connected")
    n = w + w.T
    if method == "mm":  # Hunter (2004): p_i <- W_i / sum_j n_ij / (p_i + p_j)
        wins, p = w.sum(1), np.ones(k)
        for _ in range(max_iter):
            new = wins / (n / (p[:, None] + p[None, :])).sum(1)
            new /= np.exp(np.log(new).mean())
            if np.max(np.abs(np.log(new) - np.log(p))) < tol:
                p = new
                break
            p = new
        theta = np.log(p)
    elif method == "logistic":  # P(i beats j) = sigmoid(theta_i - theta_j), fitted by maximum likelihood
        from scipy.optimize import minimize
        from scipy.special import expit, log_expit

        def nll(theta):
            d = theta[:, None] - theta[None, :]
            grad = (w * expit(-d)).sum(1) - (w.T * expit(-d.T)).sum(1)
            return -(w * log_expit(d)).sum(), -grad

        theta = minimize(nll, np.zeros(k), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 10_000}).x
    else:
        raise UserError(f"unknown Bradley-Terry method '{method}'; use mm or logistic")
    return theta - theta.mean()


def task_scores(judgments: pl.DataFrame, *, method: str = "mm", bootstrap: int = 1000, seed: int = 0,
                confidence: float = 0.95, prior: float = 0.0) -> tuple[pl.DataFrame, dict[str, Any]]:
    """(task, score, score_lo, score_hi, rank, rank_lo, rank_hi, wins, losses per task sorted by
    rank; a summary). Intervals: percentile bootstrap over judgments (resampled with their counts)."""
    if not 0 < confidence < 1:
        raise UserError(f"confidence (--confidence) must lie strictly between 0 and 1; got {confidence}")
    if bootstrap < 0 or not prior >= 0:
        raise UserError(f"bootstrap (--bootstrap) and prior (--prior) must be 0 or more; got {bootstrap} and {prior}")
    if method not in ("mm", "logistic"):
        raise UserError(f"unknown Bradley-Terry method '{method}'; use mm or logistic")
    # One row per ordered pair: resampling judgments = resampling pairs with their summed counts.
    judgments = judgments.group_by("winner", "loser").agg(pl.col("count").sum()).sort("winner", "loser")
    tasks = sorted(set(judgments["winner"]) | set(judgments["loser"]))
    w = win_matrix(judgments, tasks)
    try:
        theta = fit_bradley_terry(w, method, prior)
    except ValueError:
        wins, losses = w.sum(1), w.sum(0)
        stuck = [f"'{t}' never judged less objective" for t, x in zip(tasks, losses) if x == 0]
        stuck += [f"'{t}' never judged more objective" for t, x in zip(tasks, wins) if x == 0]
        raise UserError(
            f"the judgments do not link every task in both directions ({'; '.join(stuck) or 'the tasks fall into groups never judged against each other both ways'}), "
            f"so a Bradley-Terry score would be infinite; add judgments or shrink with --prior 0.5"
        ) from None
    rng = np.random.default_rng(seed)
    counts = judgments["count"].to_numpy()
    draws, total = [], int(round(counts.sum()))
    for _ in range(bootstrap):
        resampled = rng.multinomial(total, counts / counts.sum()).astype(float)
        try:
            draws.append(fit_bradley_terry(win_matrix(judgments, tasks, resampled), method, prior))
        except ValueError:
            continue  # this resample has no finite estimate: counted in the summary
    alpha = (1 - confidence) / 2
    ranks = lambda t: (-t).argsort().argsort() + 1  # noqa: E731
    if draws:
        d = np.array(draws)
        lo, hi = np.quantile(d, [alpha, 1 - alpha], axis=0)
        r = np.array([ranks(x) for x in d])
        rlo, rhi = np.quantile(r, [alpha, 1 - alpha], axis=0, method="nearest")
    else:
        lo = hi = np.full(len(tasks), np.nan)
        rlo = rhi = np.full(len(tasks), -1)
    table = pl.DataFrame({
        "task": tasks, "score": theta, "score_lo": lo, "score_hi": hi, "rank": ranks(theta),
        "rank_lo": np.asarray(rlo, dtype=np.int64), "rank_hi": np.asarray(rhi, dtype=np.int64),
        "wins": w.sum(1), "losses": w.sum(0),
    }).sort("rank")
    if np.all(counts == np.round(counts)):
        table = table.with_columns(pl.col("wins", "losses").cast(pl.Int64))
    summary = {"method": method, "prior": prior, "judgments": float(counts.sum()), "bootstrap": bootstrap,
               "bootstrap_valid": len(draws), "confidence": confidence, "seed": seed}
    return table, summary


def load_gaps(path: str | Path, known: Sequence[str]) -> pl.DataFrame:
    """task, gap (real minus synthetic Macro-F1) from a table with `task` and either `gap` or
    `real_f1` and `synthetic_f1` (also accepted: `real`, `synthetic`)."""
    from localsynth.data.sources import read_table

    given = Path(os.path.expanduser(str(path)))
    df = read_table(given, "--gaps")
    real = next((c for c in ("real_f1", "real") if c in df.columns), None)
    synthetic = next((c for c in ("synthetic_f1", "synthetic") if c in df.columns), None)
    if "task" not in df.columns or not ("gap" in df.columns or (real and synthetic)):
        raise UserError(f"--gaps: {given} needs the columns task and gap (or real_f1 and synthetic_f1); it has {', '.join(map(repr, df.columns))}")
    try:
        gap = df["gap"].cast(pl.Float64) if "gap" in df.columns else df[real].cast(pl.Float64) - df[synthetic].cast(pl.Float64)
    except pl.exceptions.PolarsError:
        raise UserError(f"--gaps: {given} has non-numeric F1 values; use numbers such as 0.91") from None
    out = pl.DataFrame({"task": df["task"].cast(pl.Utf8).str.strip_chars(), "gap": gap}).drop_nulls()
    for name in out["task"]:
        _known(name, known, f"--gaps {given}")
    if out["task"].n_unique() != out.height:
        raise UserError(f"--gaps: {given} lists a task more than once; give one gap per task")
    return out


def gap_correlation(scores: pl.DataFrame, gaps: pl.DataFrame, seed: int = 0) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Spearman rank correlation between the F1 gap and subjectivity (= -score) over the tasks
    that have both; the paper expects it positive (the more subjective, the larger the gap).
    The p-value is a permutation test, exact up to 8 tasks (8! orders), else 20,000 random
    orders: with ~10 tasks scipy's asymptotic p (also given) is far off (it says 0 for rho = 1)."""
    from scipy.stats import permutation_test, rankdata, spearmanr

    both = scores.join(gaps, on="task", how="inner").with_columns((-pl.col("score")).alias("subjectivity"))
    if both.height < 3:
        raise UserError(
            f"only {both.height} task(s) have both a score and a gap; a rank correlation needs at least 3 "
            f"(tasks without judgments: {', '.join(sorted(set(gaps['task']) - set(scores['task']))) or 'none'})"
        )
    gap, subj = both["gap"].to_numpy(), both["subjectivity"].to_numpy()
    result = spearmanr(gap, subj)
    ry = rankdata(subj) - rankdata(subj).mean()

    def pearson_of_ranks(rx, axis=-1):  # Spearman = Pearson of (average) ranks; vectorised over orders
        rx = rx - rx.mean(axis=axis, keepdims=True)
        return (rx * ry).sum(axis) / np.sqrt((rx * rx).sum(axis) * (ry * ry).sum())

    exact = both.height <= 8
    import inspect

    seeded = {("rng" if "rng" in inspect.signature(permutation_test).parameters else "random_state"): seed}  # scipy < 1.15
    perm = permutation_test((rankdata(gap),), pearson_of_ranks, permutation_type="pairings", vectorized=True,
                            n_resamples=np.inf if exact else 20_000, **seeded)
    return both, {"spearman_rho": float(result.statistic), "p_value": float(perm.pvalue),
                  "p_value_method": "exact permutation" if exact else "permutation (20,000 random orders)",
                  "p_value_asymptotic": float(result.pvalue), "tasks": both.height}


def plot_scores(table: pl.DataFrame, confidence: float) -> bytes:
    fig = figure(6.4, 0.45 * table.height + 1.6)
    ax = fig.subplots()
    y = np.arange(table.height)[::-1]
    score, lo, hi = (table[c].to_numpy() for c in ("score", "score_lo", "score_hi"))
    err = np.vstack([np.nan_to_num(score - lo), np.nan_to_num(hi - score)])
    ax.errorbar(score, y, xerr=err, fmt="o", capsize=3)
    ax.set_yticks(y, labels=table["task"].to_list())
    ax.set_xlabel(f"Bradley-Terry score (higher = more objective), {confidence:.0%} bootstrap interval")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def plot_gap(both: pl.DataFrame, stats: dict[str, Any] | None) -> bytes:
    """Gap against subjectivity, one point per task; `stats` None: too few tasks to correlate."""
    fig = figure()
    ax = fig.subplots()
    ax.scatter(both["subjectivity"], both["gap"])
    for task, x, y in both.select("task", "subjectivity", "gap").iter_rows():
        ax.annotate(task, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("task subjectivity (-Bradley-Terry score)")
    ax.set_ylabel("Macro-F1 gap (real - synthetic)")
    title = (f"Spearman rho {stats['spearman_rho']:.3f} (p = {stats['p_value']:.3g}, {stats['tasks']} tasks)" if stats
             else f"{both.height} task(s): too few for a rank correlation (needs 3)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return png(fig)
