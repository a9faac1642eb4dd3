"""The evaluation stage: metrics by hand, a tiny BERT evaluated end to end through the real CLI,
and every kind of bad input (exit 2, one message with the fix, nothing marked complete)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from helpers import assert_user_error, run_cli
from tiny_encoders import WORDS, build_tiny_bert, build_tiny_roberta

from localsynth.errors import UserError
from localsynth.training.evaluate import compute_metrics, evaluate_model

LABELS = ["ham", "spam", "other"]
TRAINING = {
    "hyperparameters": {"learning_rate": 3e-5, "batch_size": 32, "epochs": 3, "max_length": 128},
    "data_sources": {"train": {"kind": "synthetic", "path": "runs/sms_spam-zero-shot"}},
    "labels": LABELS,
    "model": "tiny-bert",
}


# ----------------------------------------------------------------------------- metrics by hand


def test_compute_metrics_by_hand_with_a_class_never_predicted():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "b", "a"]
    m = compute_metrics(y_true, y_pred, ["a", "b", "c"])
    # a: TP 2, FP 1 (the c), FN 1 -> P 2/3, R 2/3, F1 2/3
    # b: TP 2, FP 1, FN 0         -> P 2/3, R 1,   F1 0.8
    # c: TP 0, FP 0, FN 1         -> P 0 (never predicted), R 0, F1 0
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.8 + 0) / 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["n"] == 6 and m["labels"] == ["a", "b", "c"] and m["absent_labels"] == []
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows true, columns predicted


def test_compute_metrics_label_order_and_a_label_absent_from_test_and_predictions():
    y_true = ["b", "a", "b", "b"]
    y_pred = ["b", "b", "b", "a"]
    m = compute_metrics(y_true, y_pred, ["b", "z", "a"])
    # b: TP 2, FP 1, FN 1 -> F1 2/3; a: TP 0, FP 1, FN 1 -> F1 0; z has no defined F1: not averaged in
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["absent_labels"] == ["z"]
    assert m["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert list(m["per_class"]) == ["b", "z", "a"]
    assert m["confusion_matrix"] == [[2, 0, 1], [0, 0, 0], [1, 0, 0]]
    assert compute_metrics(["a", "b"], ["a", "b"], ["a", "b"])["macro_f1"] == 1.0
    with pytest.raises(ValueError):
        compute_metrics(["a", "q"], ["a", "a"], ["a", "b"])


# ----------------------------------------------------------------------------- fixtures


def texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory) -> Path:
    """A training output folder: a random tiny BERT classifier in model/ and training.json."""
    root = tmp_path_factory.mktemp("train") / "sms-bert"
    build_tiny_bert(root / "model", LABELS, init_range=0.5)  # varied predictions, not one class
    (root / "training.json").write_text(json.dumps(TRAINING), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def test_file(tmp_path_factory) -> Path:
    rng = random.Random(2)
    rows = [{"id": i, "text": t, "label": rng.choice(LABELS)} for i, t in enumerate(texts(120))]
    rows[5]["text"] = "free " * 300  # longer than the model holds: truncated
    path = tmp_path_factory.mktemp("data") / "test.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


# ----------------------------------------------------------------------------- end to end


def test_evaluate_cli_end_to_end(tmp_path, cli_env, train_dir, test_file):
    from matplotlib.image import imread
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    out = tmp_path / "eval"
    result = run_cli("evaluate", str(train_dir), "--test", str(test_file), "--out", str(out), "--batch-size", "16",
                     "--device", "cpu", env=cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "macro-F1" in result.stdout and "accuracy" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "eval.done", "metrics.json", "predictions.parquet"]

    metrics = json.loads((out / "metrics.json").read_text())
    preds = pl.read_parquet(out / "predictions.parquet")
    source = pl.read_parquet(test_file)
    assert preds.columns == ["text", "label", "predicted", "score", "correct", "id"]
    assert preds["text"].to_list() == source["text"].to_list()  # file order, extra columns kept
    assert preds["id"].to_list() == source["id"].to_list()
    assert preds["correct"].to_list() == (preds["label"] == preds["predicted"]).to_list()
    assert preds["score"].min() >= 1 / len(LABELS) - 1e-6 and preds["score"].max() <= 1.0
    assert preds["predicted"].n_unique() > 1  # the fixture's random classifier is not constant

    y_true, y_pred = preds["label"].to_list(), preds["predicted"].to_list()
    assert metrics["n"] == preds.height == 120
    assert metrics["labels"] == LABELS
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=LABELS).tolist()
    for label in LABELS:
        assert metrics["per_class"][label]["support"] == y_true.count(label)
        f1 = f1_score(y_true, y_pred, labels=[label], average="macro", zero_division=0)
        assert metrics["per_class"][label]["f1"] == pytest.approx(f1)
    assert metrics["training"] == TRAINING
    assert metrics["model"] == str(train_dir.resolve()) and metrics["model_dir"] == str((train_dir / "model").resolve())
    assert metrics["test"]["path"] == str(test_file.resolve()) and len(metrics["test"]["sha256"]) == 64
    run = metrics["evaluation"]
    assert run["batch_size"] == 16 and run["max_length"] == 256 and run["max_length_used"] == 128
    assert run["texts_at_max_length"] >= 1 and run["device"] == "cpu" and run["autocast"] is None
    assert "torch" in metrics["environment"]["packages"]

    png = (out / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = imread(out / "confusion.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert json.loads((out / "eval.done").read_text())["macro_f1"] == metrics["macro_f1"]
    assert not list(out.glob(".*tmp*"))


def test_evaluate_csv_with_other_columns_and_a_label_map(tmp_path, cli_env, train_dir):
    """Numeric labels in a CSV with its own column names, renamed to the model's; the bare
    model folder inside a training folder still finds its training record."""
    numbers = {name: str(i) for i, name in enumerate(LABELS)}
    rng = random.Random(3)
    df = pl.DataFrame({"body": texts(40, seed=3), "y": [numbers[rng.choice(LABELS)] for _ in range(40)]})
    df.write_csv(tmp_path / "test.csv")
    out = tmp_path / "eval"
    result = run_cli(
        "evaluate", str(train_dir / "model"), "--test", str(tmp_path / "test.csv"), "--out", str(out),
        "--text-column", "body", "--label-column", "y", "--label-map", "0=ham", "--label-map", "1=spam",
        "--label-map", "2=other", env=cli_env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pl.read_parquet(out / "predictions.parquet")
    assert set(preds["label"]) <= set(LABELS) and preds["text"].to_list() == df["body"].to_list()
    assert metrics["test"]["label_map"] == {"0": "ham", "1": "spam", "2": "other"}
    assert metrics["test"]["text_column"] == "body" and metrics["training"] == TRAINING
    assert (out / "eval.done").is_file()


def test_evaluate_model_from_python(tmp_path):
    """A bare model folder (no training record), RoBERTa positions, results written twice."""
    model = build_tiny_roberta(tmp_path / "roberta", ["neg", "pos"], max_positions=40, init_range=0.5)
    df = pl.DataFrame({"text": [*texts(9), "win " * 100], "label": ["neg", "pos"] * 5})
    metrics = evaluate_model(model, df, batch_size=4, max_length=256, device="cpu", progress="off")
    assert metrics["training"] is None and metrics["n"] == 10
    assert metrics["evaluation"]["max_length_used"] == 38  # 40 positions less RoBERTa's offset of 2
    out = tmp_path / "out"
    again = evaluate_model(model, df, out, batch_size=3, device="cpu", progress="off")
    assert again["confusion_matrix"] == metrics["confusion_matrix"]  # batching does not change results
    assert pl.read_parquet(out / "predictions.parquet")["label"].to_list() == df["label"].to_list()
    assert (out / "eval.done").is_file()


def test_base_encoder_without_a_trained_head_is_refused(tmp_path):
    model = build_tiny_bert(tmp_path / "base", None)
    config = json.loads((model / "config.json").read_text())
    config.update(id2label={"0": "neg", "1": "pos"}, label2id={"neg": 0, "pos": 1})
    (model / "config.json").write_text(json.dumps(config))
    df = pl.DataFrame({"text": ["good film", "bad film"], "label": ["pos", "neg"]})
    with pytest.raises(UserError, match="lacks trained weights for classifier"):
        evaluate_model(model, df, tmp_path / "out", device="cpu", progress="off")
    assert not (tmp_path / "out" / "eval.done").exists()


# ----------------------------------------------------------------------------- bad input


def assert_refused(result: subprocess.CompletedProcess, out: Path, *fragments: str) -> str:
    """A bad-input exit that left no evaluation behind."""
    message = assert_user_error(result, *fragments)
    assert not (out / "eval.done").exists() and not (out / "metrics.json").exists()
    return message


def evaluate(model: Path, test: Path, out: Path, *extra: str, env) -> subprocess.CompletedProcess:
    return run_cli("evaluate", str(model), "--test", str(test), "--out", str(out), *extra, env=env)


def test_missing_model_folder(tmp_path, cli_env, test_file):
    result = evaluate(tmp_path / "nowhere", test_file, tmp_path / "out", env=cli_env)
    assert_refused(result, tmp_path / "out", "model folder not found", "nowhere", "save_pretrained")


def test_folder_without_config_json(tmp_path, cli_env, test_file):
    (tmp_path / "empty" / "model").mkdir(parents=True)
    result = evaluate(tmp_path / "empty", test_file, tmp_path / "out", env=cli_env)
    assert_refused(result, tmp_path / "out", "has no config.json", "training output folder")


@pytest.mark.parametrize("id2label", [None, {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}])
def test_model_without_label_names(tmp_path, cli_env, train_dir, test_file, id2label):
    model = tmp_path / "model"
    shutil.copytree(train_dir / "model", model)
    config = json.loads((model / "config.json").read_text())
    config.pop("label2id")
    if id2label is None:
        config.pop("id2label")
    else:
        config["id2label"] = id2label
    (model / "config.json").write_text(json.dumps(config))
    result = evaluate(model, test_file, tmp_path / "out", env=cli_env)
    assert_refused(result, tmp_path / "out", "has no label names", "id2label=")


def test_test_label_the_model_never_saw(tmp_path, cli_env, train_dir):
    pl.DataFrame({"text": ["a b", "c d", "e f"], "label": ["ham", "maybe", "2"]}).write_parquet(tmp_path / "t.parquet")
    result = evaluate(train_dir, tmp_path / "t.parquet", tmp_path / "out", env=cli_env)
    assert_refused(
        result, tmp_path / "out", "'2', 'maybe'", "never saw", "'ham', 'spam', 'other'", "--label-map 2=other"
    )


@pytest.mark.parametrize("content", ["", "text,label\n"], ids=["zero-bytes", "header-only"])
def test_empty_test_file(tmp_path, cli_env, train_dir, content):
    (tmp_path / "t.csv").write_text(content, encoding="utf-8")
    result = evaluate(train_dir, tmp_path / "t.csv", tmp_path / "out", env=cli_env)
    assert_refused(result, tmp_path / "out", "--test", "t.csv", "a file with")


def test_wrong_column_names(tmp_path, cli_env, train_dir):
    (tmp_path / "t.csv").write_text("sentence,category\nhello there,ham\n", encoding="utf-8")
    result = evaluate(train_dir, tmp_path / "t.csv", tmp_path / "out", env=cli_env)
    message = assert_refused(
        result, tmp_path / "out", "'text', 'label'", "'sentence', 'category'", "--text-column", "--label-column"
    )
    assert "--test." not in message  # no config-key phrasing on the command line


def test_non_utf8_test_file(tmp_path, cli_env, train_dir):
    (tmp_path / "t.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me,ham\n".encode("latin-1"))
    result = evaluate(train_dir, tmp_path / "t.csv", tmp_path / "out", env=cli_env)
    assert_refused(result, tmp_path / "out", "not UTF-8", "iconv")


def test_bad_label_map(tmp_path, cli_env, train_dir, test_file):
    result = evaluate(train_dir, test_file, tmp_path / "out", "--label-map", "spam", env=cli_env)
    assert_refused(result, tmp_path / "out", "--label-map expects TEST_LABEL=MODEL_LABEL", "'spam'")


def test_cuda_without_a_gpu(tmp_path, cli_env, train_dir, test_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = evaluate(train_dir, test_file, tmp_path / "out", "--device", "cuda", env=cli_env)
    assert_refused(result, tmp_path / "out", "--device cuda", "0 visible CUDA GPU", "--device cpu")
