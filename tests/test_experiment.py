"""The study runner end to end: the shipped tiny study on CPU (tiny generator, tiny classifier,
small real-looking data written here), its report, and re-runs that redo nothing."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import REPO, assert_user_error, run_cli
from tiny_encoders import build_tiny_bert

TINY_STUDY = REPO / "configs" / "experiments" / "study-tiny-cpu.yaml"
CUES = {
    "negative": "loss fell weak decline cut warning".split(),
    "neutral": "said held meeting report annual board".split(),
    "positive": "profit rose strong growth record gain".split(),
}
FILLER = "the company its shares in of for quarter year and net sales".split()
REPORT_FILES = [
    "report.md", "table1.md", "table1.csv", "table1.png", "cells.csv", "diversity.md", "diversity.csv", "cost.md", "cost.json", "verdicts.json",
    "subjectivity/financial_phrasebank-instance_agreement.csv", "subjectivity/financial_phrasebank-instance_agreement.md",
    "subjectivity/financial_phrasebank-instance_agreement.png", "subjectivity/task_subjectivity.csv",
    "subjectivity/task_subjectivity.md", "subjectivity/gap_vs_subjectivity.png",
    "quality.csv", "quality.md", "quality_correlation.csv", "quality_correlation.md",
]


def sentences(n: int, seed: int, agreement: bool) -> pl.DataFrame:
    """Financial-news-like sentences whose label shows in three cue words; the test split carries
    an agreement level per sentence, as Financial PhraseBank's subsets give."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(CUES))
        words = rng.choices(FILLER, k=rng.randint(4, 9)) + rng.choices(CUES[label], k=3)
        rng.shuffle(words)
        row = {"text": " ".join(words), "label": label}
        if agreement:
            row["agreement"] = rng.choice([0.5, 0.75, 1.0])
        rows.append(row)
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    data = root / "data" / "financial_phrasebank"
    data.mkdir(parents=True)
    sentences(300, 0, False).write_csv(data / "train.csv")
    sentences(150, 1, True).write_csv(data / "test.csv")
    words = sorted({w for cue in CUES.values() for w in cue} | set(FILLER))
    model = build_tiny_bert(root / "tiny-bert", None, words)
    return {"root": root, "data_dir": root / "data", "model": model}


def study_args(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "experiment", str(TINY_STUDY), "--out", str(out),
        "--set", f"data_dir={inputs['data_dir']}",
        "--set", f"models={{tiny: {inputs['model']}}}",
        "--set", "sizes=[null]", "--set", "generation.quota.per_label=20",
        "--set", "training.learning_rate=3e-3", "--set", "training.batch_size=16", "--set", "training.epochs=8", "--set", "training.max_length=32",
        "--set", "evaluation.max_test_rows=null", "--set", "progress=off", *extra,
    ]


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def study(study_inputs, tmp_path_factory) -> dict:
    out = study_inputs["root"] / "out"
    env = {**__import__("os").environ, "LOCALSYNTH_CACHE": str(tmp_path_factory.mktemp("cache"))}
    result = run_cli(*study_args(study_inputs, out), env=env, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"out": out, "env": env, "result": result}


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_tiny_study_writes_every_report_file(study):
    report = study["out"] / "report"
    for name in REPORT_FILES:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    plan = json.loads((study["out"] / "plan.json").read_text())
    assert len(plan["cells"]) == 8 and len(plan["generate"]) == 2  # 4 conditions x 2 seeds; zero- and few-shot
    assert "| task |" in (report / "table1.md").read_text()
    assert (report / "subjectivity" / "financial_phrasebank-instance_agreement.png").read_bytes()[:4] == b"\x89PNG"
    # the report opens with the paper's findings as verdicts, before Table 1
    text = (report / "report.md").read_text()
    assert text.index("## The paper's findings") < text.index("## Table 1")
    found = json.loads((report / "verdicts.json").read_text())
    assert [v["finding"][:4] for v in found] == ["(i) ", "(ii)", "(iii", "(iv)"]
    assert {v["verdict"] for v in found} <= {"holds", "does not hold", "not enough data"}
    assert found[1]["verdict"] == "not enough data"  # one task: no rank correlation
    assert found[3]["evidence"] and "agreement >=" in found[3]["evidence"][0]  # PhraseBank's agreement column


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_table1_is_the_mean_and_spread_of_the_cells(study):
    """Recomputed here from each cell's metrics.json."""
    plan = json.loads((study["out"] / "plan.json").read_text())
    per_condition: dict[str, list[dict]] = {}
    for cell in plan["cells"]:
        metrics = json.loads((Path(cell["eval_dir"]) / "metrics.json").read_text())
        per_condition.setdefault(cell["condition"], []).append(metrics)
    table = pl.read_csv(study["out"] / "report" / "table1.csv")
    assert sorted(table["condition"]) == sorted(per_condition)
    for row in table.iter_rows(named=True):
        f1 = pl.Series([m["macro_f1"] for m in per_condition[row["condition"]]])
        acc = pl.Series([m["accuracy"] for m in per_condition[row["condition"]]])
        assert row["seeds"] == 2
        assert row["macro_f1_mean"] == pytest.approx(f1.mean()) and row["macro_f1_sd"] == pytest.approx(f1.std())
        assert row["accuracy_mean"] == pytest.approx(acc.mean()) and row["accuracy_sd"] == pytest.approx(acc.std())
    real = table.filter(pl.col("condition") == "real").row(0, named=True)
    assert real["macro_f1_mean"] > 0.8, real  # the cue words are learnable; chance is 1/3


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_cells_use_the_rows_they_claim(study):
    plan = json.loads((study["out"] / "plan.json").read_text())
    rows = {}
    for cell in plan["cells"]:
        record = json.loads((Path(cell["train_dir"]) / "training.json").read_text())
        rows[cell["condition"]] = {s["name"]: s["rows_used"] for s in record["data_sources"]}
    assert rows["real"] == {"real": 300}
    assert rows["zero-shot"] == {"zero-shot": 60}  # 20 kept per label x 3 labels
    assert rows["real+zero-shot"] == {"real": 300, "zero-shot": 60}  # all rows of both: no down-sampling
    table1 = (study["out"] / "report" / "table1.md").read_text()
    assert "n=360" in table1 and "n=60" in table1  # the rows each cell really trained on
    test_rows = pl.read_parquet(study["out"] / "data" / "financial_phrasebank" / "test.parquet").height
    assert {json.loads((Path(c["eval_dir"]) / "metrics.json").read_text())["n"] for c in plan["cells"]} == {test_rows}


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_diversity_and_cost_are_reported(study):
    div = pl.read_csv(study["out"] / "report" / "diversity.csv")
    assert div["set"].to_list() == ["real", "zero-shot", "few-shot"]
    assert div["n"].n_unique() == 1  # sampled to one size, so Chamfer compares
    assert div.filter(pl.col("set") == "real")["similarity_to_real"].is_null().all()
    assert div.filter(pl.col("set") != "real")["similarity_to_real"].is_between(-1, 1).all()
    # The measured texts are kept: the numbers recompute with the plain analysis command.
    sampled = study["out"] / "analysis" / "diversity" / "financial_phrasebank"
    again = run_cli("analyze", "diversity", "--texts", str(sampled / "zero-shot.parquet"), "--real",
                    str(sampled / "real.parquet"), "--out", str(study["out"] / "again.json"), env=study["env"])
    assert again.returncode == 0, again.stderr
    rows = json.loads((study["out"] / "again.json").read_text())["rows"]
    zero = div.filter(pl.col("set") == "zero-shot").row(0, named=True)
    assert rows[1]["chamfer_cosine"] == pytest.approx(zero["chamfer_cosine"], abs=1e-6)
    assert rows[1]["similarity_to_real"] == pytest.approx(zero["similarity_to_real"], abs=1e-6)
    (study["out"] / "again.json").unlink()
    cost = json.loads((study["out"] / "report" / "cost.json").read_text())
    stats = [json.loads(p.read_text()) for p in (study["out"] / "generate").glob("*/shards/*.stats.json")]
    assert cost["total"]["completion_tokens"] == sum(s["completion_tokens"] for s in stats) > 0
    assert cost["total"]["api_usd"] is None  # the hf backend has no price
    assert cost["total"]["gpu_hours"] == 0 and cost["total"]["hours"] > 0


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_second_run_redoes_nothing(study, study_inputs):
    before = snapshot(study["out"])
    result = run_cli(*study_args(study_inputs, study["out"]), env=study["env"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("done, skipped") == 8, result.stderr
    assert snapshot(study["out"]) == before  # not one file written, not even the report


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_a_lost_evaluation_is_redone_alone(study, study_inputs):
    plan = json.loads((study["out"] / "plan.json").read_text())
    cell = plan["cells"][3]
    metrics = json.loads((Path(cell["eval_dir"]) / "metrics.json").read_text())
    shutil.rmtree(cell["eval_dir"])
    report_fail = run_cli(*study_args(study_inputs, study["out"], "--stage", "report"), env=study["env"])
    assert_user_error(report_fail, "cannot report", "1 of 8 cells are not finished", cell["id"])
    before = snapshot(study["out"])
    result = run_cli(*study_args(study_inputs, study["out"], "--stage", "train", "--cell", str(cell["index"])),
                     env=study["env"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already holds a finished training run" in result.stderr  # the model is reused, not retrained
    after = snapshot(study["out"])
    changed = {k for k in after if after[k] != before.get(k)}
    prefix = str(Path(cell["eval_dir"]).relative_to(study["out"]))
    assert changed and all(k.startswith(prefix) for k in changed), changed
    again = json.loads((Path(cell["eval_dir"]) / "metrics.json").read_text())
    assert again["macro_f1"] == pytest.approx(metrics["macro_f1"])


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_changed_settings_on_a_finished_study_are_refused(study, study_inputs):
    result = run_cli(*study_args(study_inputs, study["out"], "--set", "training.epochs=7"), env=study["env"])
    assert_user_error(result, "already ran with other settings", "training", "new out_dir")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["conditions=[real, half-shot]"], ["conditions.1", "half-shot"]),
        (["sizes=[500]"], ["sizes asks for 500 rows per label", "generation.quota.per_label"]),
        (["seeds=[0, 0]"], ["seeds lists a value twice"]),
        (["models={}"], ["models"]),
        (["data_dir=null"], ["no real train data", "data_dir=FOLDER"]),
        (["analysis.gammas=[0.5, 1.5]"], ["analysis.gammas", "[0, 1]"]),
        (["tasks=[no_such_task]"], ["unknown task 'no_such_task'"]),
        (["generation.generator.backend=gpu"], ["generation.generator.backend"]),
    ],
)
def test_bad_study_configs(study_inputs, tmp_path, cli_env, overrides, fragments):
    extra = [a for o in overrides for a in ("--set", o)]
    result = run_cli(*study_args(study_inputs, tmp_path / "out", *extra), env=cli_env)
    assert_user_error(result, *fragments)
    assert not list((tmp_path / "out").rglob("*.done"))


def test_bad_stage_and_cell(study_inputs, tmp_path, cli_env):
    result = run_cli(*study_args(study_inputs, tmp_path / "o", "--stage", "everything"), env=cli_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Invalid value for '--stage'" in result.stderr and "'everything' is not one of 'all', 'plan'" in result.stderr
    assert_user_error(run_cli(*study_args(study_inputs, tmp_path / "o", "--cell", "3"), env=cli_env),
                      "--cell goes with --stage train")
    assert_user_error(run_cli(*study_args(study_inputs, tmp_path / "o", "--stage", "train", "--cell", "99"), env=cli_env),
                      "--cell 99: no such cell")


def test_plan_writes_stage_configs_the_plain_cli_accepts(study_inputs, tmp_path, cli_env):
    out = tmp_path / "planned"
    result = run_cli(*study_args(study_inputs, out, "--stage", "plan"), env=cli_env)
    assert result.returncode == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert not list(out.rglob("*.done"))  # planning runs nothing
    for run in plan["generate"]:
        dry = run_cli("generate", run["config"], "--dry-run", env=cli_env)
        assert dry.returncode == 0, dry.stderr
    few = yaml.safe_load((out / "stages" / "generate" / "financial_phrasebank-few-shot.yaml").read_text())
    assert few["task"]["few_shot"]["source"]["path"] == str(out / "data" / "financial_phrasebank" / "train.parquet")


def test_shipped_study_configs_validate():
    from localsynth.study.config import load_study_config

    files = sorted((REPO / "configs" / "experiments").glob("study-*.yaml"))
    assert [p.stem for p in files] == ["study-paper-grid", "study-smol-cpu", "study-tiny-cpu"]
    paper = load_study_config(files[0])
    assert len(paper.tasks) == 10 and len(paper.models) == 2 and len(paper.seeds) == 3
    assert paper.generation.quota.per_label == 3000 and paper.synthetic_sets == ["zero-shot", "few-shot"]
    tiny = load_study_config(files[1])
    assert tiny.models == {"minilm": "all-MiniLM-L6-v2"}


def test_one_training_task_reads_the_plan_instead_of_planning_again(study_inputs, tmp_path, monkeypatch):
    """`--stage train --cell N` (one SLURM array task) reads plan.json when it was written from
    the same config; another config plans again."""
    from localsynth.study import plan as study_plan
    from localsynth.study.config import load_study_config

    overrides = study_args(study_inputs, tmp_path / "out")[5::2]  # the --set values
    cfg = load_study_config(TINY_STUDY, overrides, tmp_path / "out")
    written = study_plan.make_plan(cfg, str(TINY_STUDY))

    def no_planning(*args, **kwargs):
        raise AssertionError("planned the whole grid again")

    monkeypatch.setattr(study_plan, "make_plan", no_planning)
    read = study_plan.current_plan(cfg, str(TINY_STUDY))
    assert read.cells == written.cells and [r.to_json() for r in read.generate] == [r.to_json() for r in written.generate]
    assert read.data == written.data
    with pytest.raises(AssertionError, match="planned the whole grid again"):
        study_plan.current_plan(cfg.model_copy(update={"seeds": [7]}), str(TINY_STUDY))


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_every_synthetic_set_is_audited_and_its_signals_reported(study):
    """Each generation run has a complete audit before the report; the quality table holds its
    numbers; cells.csv says how contaminated the synthetic rows of each cell were."""
    report = study["out"] / "report"
    plan = json.loads((study["out"] / "plan.json").read_text())
    quality = pl.read_csv(report / "quality.csv")
    for run in plan["generate"]:
        audit = json.loads((Path(run["run_dir"]) / "audit" / "report.json").read_text())
        assert audit["complete"] is True
        row = quality.filter((pl.col("task") == run["task"]) & (pl.col("set") == run["mode"])).row(0, named=True)
        assert row["rows"] == audit["rows"] > 0
        assert row["flagged_share"] == pytest.approx(audit["noise"]["share"])
        assert row["contaminated_share"] == pytest.approx(audit["contamination"]["test"]["contaminated"]["share"])
    correlation = pl.read_csv(report / "quality_correlation.csv")
    assert set(correlation["signal"]) >= {"fidelity", "flagged_share", "contaminated_share"}
    assert correlation["rho"].is_null().all()  # two synthetic sets of one task: too few to rank
    cells = pl.read_csv(report / "cells.csv")
    assert cells.filter(pl.col("condition") == "real")["contaminated_share"].to_list() == [0.0] * 2


def test_the_audited_condition_is_its_own_judged_few_shot_run(study_inputs, tmp_path):
    """few-shot+audited: a few-shot run of its own with filters.judge: drop, the same quota, and
    cells that train on it alone."""
    from localsynth.study.config import load_study_config
    from localsynth.study.plan import make_plan

    overrides = [*study_args(study_inputs, tmp_path / "out")[5::2], "conditions=[real,few-shot,few-shot+audited]"]
    plan = make_plan(load_study_config(TINY_STUDY, overrides, tmp_path / "out"), str(TINY_STUDY))
    runs = {run.set_name: run for run in plan.generate}
    assert sorted(runs) == ["few-shot", "few-shot+audited"]
    audited, plain = (yaml.safe_load(runs[s].config.read_text()) for s in ("few-shot+audited", "few-shot"))
    assert audited["mode"] == "few-shot" and audited["filters"]["judge"] == "drop" and "judge" not in plain["filters"]
    assert audited["quota"] == plain["quota"] and audited["task"] == plain["task"]
    assert runs["few-shot+audited"].slug == "financial_phrasebank-few-shot-audited"
    cells = [c for c in plan.cells if c.condition == "few-shot+audited"]
    assert cells and all(c.needs == ["financial_phrasebank/few-shot+audited"] for c in cells)
    train = yaml.safe_load(Path(cells[0].train_config).read_text())
    assert [s["run_dir"] for s in train["train"]] == [str(runs["few-shot+audited"].run_dir)]
