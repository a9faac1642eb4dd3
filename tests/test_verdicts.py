"""The paper's findings as verdicts: each rule against hand-made numbers, both outcomes."""

from __future__ import annotations

import polars as pl

from localsynth.study import verdicts as V


def cells(f1: dict[tuple[str, str], list[float]]) -> pl.DataFrame:
    rows = [{"task": t, "condition": c, "model": "m", "size": "n100", "seed": s, "macro_f1": v}
            for (t, c), values in f1.items() for s, v in enumerate(values)]
    return pl.DataFrame(rows)


def test_f1_order_per_task_and_on_average():
    good = cells({("a", "real"): [0.9, 0.8], ("a", "few-shot"): [0.7, 0.7], ("a", "zero-shot"): [0.5, 0.6],
                  ("b", "real"): [0.8], ("b", "few-shot"): [0.5], ("b", "zero-shot"): [0.6]})
    v = V.f1_order(good)
    assert v.verdict == V.HOLDS  # average: real 0.825, few 0.6, zero 0.575
    assert "holds on 1 of 2 tasks" in v.evidence[0]
    assert any(line.startswith("b:") and line.endswith(V.FAILS) for line in v.evidence)
    bad = cells({("a", "real"): [0.5], ("a", "few-shot"): [0.7], ("a", "zero-shot"): [0.6]})
    assert V.f1_order(bad).verdict == V.FAILS
    missing = cells({("a", "real"): [0.5], ("a", "few-shot"): [0.7]})
    assert V.f1_order(missing).verdict == V.UNKNOWN


def test_gap_grows_with_subjectivity_with_a_bootstrap_interval():
    ranks = {"news": 1, "spam": 3, "irony": 7, "sarcasm": 9}
    gaps = {"news": 0.05, "spam": 0.10, "irony": 0.30, "sarcasm": 0.40}
    f1 = {}
    for task, gap in gaps.items():
        f1[(task, "real")] = [0.90, 0.91, 0.89]
        f1[(task, "zero-shot")] = [0.90 - gap + d for d in (0.0, 0.01, -0.01)]
    v = V.gap_vs_subjectivity(cells(f1), ranks, "zero-shot", resamples=300)
    assert v.verdict == V.HOLDS and "Spearman rho 1.000" in v.evidence[0]
    reversed_ranks = {t: 10 - r for t, r in ranks.items()}
    assert V.gap_vs_subjectivity(cells(f1), reversed_ranks, "zero-shot", resamples=300).verdict == V.FAILS
    # noise larger than the differences: positive but not distinguishable from zero
    noisy = {k: ([0.2, 0.95, 0.6] if k[1] == "real" else v) for k, v in f1.items()}
    noisy[("spam", "real")] = [0.9, 0.1, 0.5]
    assert V.gap_vs_subjectivity(cells(noisy), ranks, "zero-shot", resamples=300).verdict in (V.UNKNOWN, V.FAILS)
    two = {k: v for k, v in f1.items() if k[0] in ("news", "spam")}
    assert V.gap_vs_subjectivity(cells(two), ranks, "zero-shot").verdict == V.UNKNOWN


def test_diversity_order_and_agreement_rise():
    div = pl.DataFrame({"task": ["a"] * 3 + ["b"] * 3, "set": ["real", "zero-shot", "few-shot"] * 2,
                        "remote_clique_cosine": [0.9, 0.5, 0.7, 0.8, 0.6, 0.5]})
    v = V.diversity_order(div)
    assert v.verdict == V.HOLDS and "holds on 1 of 2 tasks" in v.evidence[0]
    assert V.diversity_order(None).verdict == V.UNKNOWN
    curves = {"fpb": pl.DataFrame({"condition": ["real"] * 2 + ["zero-shot"] * 2, "gamma": [0.5, 1.0] * 2,
                                   "n": [100, 40] * 2, "accuracy": [0.7, 0.9, 0.5, 0.45]})}
    rise = V.agreement_rise(curves)
    assert rise.verdict == V.FAILS and "(-0.050)" in rise.evidence[1]
    curves["fpb"] = curves["fpb"].with_columns(pl.Series("accuracy", [0.7, 0.9, 0.5, 0.8]))
    assert V.agreement_rise(curves).verdict == V.HOLDS
    assert V.agreement_rise({}).verdict == V.UNKNOWN
    assert "| (iv)" in V.markdown([rise])
