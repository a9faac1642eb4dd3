"""The paper's findings as checks on a study's own numbers: holds / does not hold / not enough data.

Each verdict comes with the figures it was decided on, so a reader can disagree with the rule
but not with the arithmetic. The rules:

(i)   real > few-shot > zero-shot in mean Macro-F1, per task and on the average over tasks
      (the overall verdict is the average's; the per-task count is reported beside it).
(ii)  the real-minus-synthetic gap grows with task subjectivity: Spearman's rho between the gap
      and the subjectivity rank, with a 95% bootstrap interval over seeds (each task's seeds are
      resampled with replacement, per condition). Holds when the interval lies above 0, does not
      hold when rho <= 0, otherwise not enough data (positive but not distinguishable from 0).
(iii) diversity real > few-shot > zero-shot (Remote-Clique, cosine), per task and on average.
(iv)  accuracy rises with annotator agreement: accuracy on the most-agreed test instances above
      accuracy on all of them, for every condition (tasks with agreement data only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "not enough data"
ORDER = ("real", "few-shot", "zero-shot")


@dataclass
class Verdict:
    finding: str
    verdict: str
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"finding": self.finding, "verdict": self.verdict, "evidence": self.evidence}


def _ordered(values: dict[str, float]) -> bool:
    return all(values[a] > values[b] for a, b in zip(ORDER, ORDER[1:]))


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {values[name]:.3f}" for name in ORDER)


def _first_size(cells: pl.DataFrame) -> pl.DataFrame:
    return cells.filter(pl.col("size") == cells["size"][0])


def f1_order(cells: pl.DataFrame) -> Verdict:
    """(i) from the per-seed cells (task, condition, model, size, seed, macro_f1)."""
    finding = "(i) real > few-shot > zero-shot in Macro-F1"
    part = _first_size(cells).filter(pl.col("condition").is_in(ORDER))
    if set(part["condition"].unique()) != set(ORDER):
        return Verdict(finding, UNKNOWN, [f"needs the conditions {', '.join(ORDER)}"])
    means = part.group_by("task", "condition", maintain_order=True).agg(pl.col("macro_f1").mean())
    tasks = list(dict.fromkeys(means["task"]))
    per_task = {t: dict(means.filter(pl.col("task") == t).select("condition", "macro_f1").iter_rows()) for t in tasks}
    complete = {t: v for t, v in per_task.items() if set(v) == set(ORDER)}
    evidence = [f"{t}: {_fmt(v)} -> {HOLDS if _ordered(v) else FAILS}" for t, v in complete.items()]
    average = {c: float(np.mean([v[c] for v in complete.values()])) for c in ORDER}
    held = sum(_ordered(v) for v in complete.values())
    evidence.insert(0, f"average over {len(complete)} tasks: {_fmt(average)}; the order holds on {held} of {len(complete)} tasks")
    return Verdict(finding, HOLDS if _ordered(average) else FAILS, evidence)


def gap_vs_subjectivity(
    cells: pl.DataFrame, ranks: dict[str, int], synthetic: str, resamples: int = 2000, seed: int = 0
) -> Verdict:
    """(ii): rank 1 is the most objective task, so a positive rho is the paper's finding."""
    from scipy.stats import spearmanr

    finding = f"(ii) the real - {synthetic} Macro-F1 gap grows with task subjectivity"
    part = _first_size(cells).filter(pl.col("condition").is_in(["real", synthetic]))
    per = {
        (t, c): np.array(g["macro_f1"].to_list())
        for (t, c), g in part.group_by("task", "condition", maintain_order=True)
    }
    tasks = sorted({t for t, _ in per if (t, "real") in per and (t, synthetic) in per and t in ranks}, key=ranks.get)
    if len(tasks) < 3:
        return Verdict(finding, UNKNOWN, [f"{len(tasks)} task(s) have both conditions; a rank correlation needs 3"])
    subjectivity = np.array([ranks[t] for t in tasks], dtype=float)

    def rho(gaps: np.ndarray) -> float:
        value = spearmanr(gaps, subjectivity).statistic
        return float(value) if np.isfinite(value) else 0.0

    gaps = np.array([per[(t, "real")].mean() - per[(t, synthetic)].mean() for t in tasks])
    observed = rho(gaps)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        boot = [rng.choice(per[(t, "real")], per[(t, "real")].size).mean()
                - rng.choice(per[(t, synthetic)], per[(t, synthetic)].size).mean() for t in tasks]
        draws[i] = rho(np.array(boot))
    low, high = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
    evidence = [f"Spearman rho {observed:.3f}, 95% bootstrap interval over seeds [{low:.3f}, {high:.3f}] ({len(tasks)} tasks)"]
    evidence += [f"{t} (subjectivity rank {ranks[t]}): gap {g:+.3f}" for t, g in zip(tasks, gaps)]
    verdict = HOLDS if low > 0 else FAILS if observed <= 0 else UNKNOWN
    return Verdict(finding, verdict, evidence)


def diversity_order(diversity: pl.DataFrame | None, metric: str = "remote_clique_cosine") -> Verdict:
    """(iii) from the report's diversity table (task, set, remote_clique_cosine, ...)."""
    finding = f"(iii) diversity real > few-shot > zero-shot ({metric.replace('_', ' ')})"
    if diversity is None or metric not in diversity.columns:
        return Verdict(finding, UNKNOWN, ["no diversity table (analysis.diversity is off)"])
    per_task = {}
    for (task,), g in diversity.group_by("task", maintain_order=True):
        values = dict(g.select("set", metric).iter_rows())
        if set(ORDER) <= set(values):
            per_task[task] = {k: float(values[k]) for k in ORDER}
    if not per_task:
        return Verdict(finding, UNKNOWN, [f"no task has all of {', '.join(ORDER)}"])
    average = {c: float(np.mean([v[c] for v in per_task.values()])) for c in ORDER}
    held = sum(_ordered(v) for v in per_task.values())
    evidence = [f"average over {len(per_task)} tasks: {_fmt(average)}; the order holds on {held} of {len(per_task)} tasks"]
    evidence += [f"{t}: {_fmt(v)} -> {HOLDS if _ordered(v) else FAILS}" for t, v in per_task.items()]
    return Verdict(finding, HOLDS if _ordered(average) else FAILS, evidence)


def agreement_rise(curves: dict[str, pl.DataFrame]) -> Verdict:
    """(iv) from the accuracy-against-agreement tables (condition, gamma, n, accuracy) by task."""
    finding = "(iv) accuracy rises with annotator agreement"
    if not curves:
        return Verdict(finding, UNKNOWN, ["no task of the study has instance agreement data"])
    evidence, rises = [], []
    for task, table in curves.items():
        for (condition,), g in table.drop_nulls("accuracy").sort("gamma").group_by("condition", maintain_order=True):
            if g.height < 2:
                continue
            low, high = g.row(0, named=True), g.row(-1, named=True)
            rise = high["accuracy"] - low["accuracy"]
            rises.append(rise > 0)
            evidence.append(f"{task} · {condition}: accuracy {low['accuracy']:.3f} on all {low['n']} instances "
                            f"(agreement >= {low['gamma']:g}) -> {high['accuracy']:.3f} on the {high['n']} with "
                            f"agreement >= {high['gamma']:g} ({rise:+.3f})")
    if not rises:
        return Verdict(finding, UNKNOWN, ["fewer than two agreement levels"])
    return Verdict(finding, HOLDS if all(rises) else FAILS, evidence)


def markdown(verdicts: list[Verdict]) -> str:
    lines = ["| finding | verdict |", "|---|---|"]
    lines += [f"| {v.finding} | **{v.verdict}** |" for v in verdicts]
    details = []
    for v in verdicts:
        details.append(f"**{v.finding}: {v.verdict}.**\n")
        details += [f"- {line}" for line in v.evidence]
        details.append("")
    return "\n".join(lines) + "\n\n" + "\n".join(details)
