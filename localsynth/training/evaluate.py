"""Evaluate a trained classifier on real test data: Macro-F1, accuracy, per-class scores and a
confusion matrix, with every prediction kept.

`evaluate_model` takes a model folder (a training output folder with `model/` and
`training.json`, or any folder saved with `save_pretrained`) and a frame with `text` and
`label`; it checks everything it can before loading weights, predicts in batches sorted by
length (dynamic padding: short texts do not pay for long ones), and writes `metrics.json`,
`predictions.parquet` and `confusion.png` at the end, then the `eval.done` marker last.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.data.sources import load_source
from localsynth.errors import UserError
from localsynth.io import (
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from localsynth.progress import log
from localsynth.tasks import DataSource
from localsynth.training.config import EVAL_DEFAULTS
from localsynth.training.predict import (
    autocast_dtype,
    length_limit,
    load_classifier,
    model_labels,
    predict,
    resolve_device,
    resolve_model,
)

METRICS, PREDICTIONS, CONFUSION, DONE = "metrics.json", "predictions.parquet", "confusion.png", "eval.done"


# ----------------------------------------------------------------------------- inputs


def load_test(path: str | Path, text_column: str = "text", label_column: str = "label",
              label_map: dict[str, str] | None = None) -> pl.DataFrame:
    """A local test file as `text`, `label` (+ its other columns); messages name the
    command's options (`load_source` phrases its fixes as config keys)."""
    source = DataSource(path=str(path), text_column=text_column, label_column=label_column, label_map=label_map or {})
    try:
        df = load_source(source, "--test")
    except UserError as exc:
        message = (
            str(exc)
            .replace("--test.path", "--test")
            .replace("--test.text_column=COLUMN", "--text-column COLUMN")
            .replace("--test.label_column=COLUMN", "--label-column COLUMN")
        )
        raise UserError(message) from None
    return df


def check_labels(test_labels: Sequence[str], labels: list[str], model_dir: Path) -> None:
    unknown = sorted(set(test_labels) - set(labels))
    if not unknown:
        return
    shown = ", ".join(repr(x) for x in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
    example = " ".join(f"--label-map {u}={labels[int(u)]}" for u in unknown if u.isdigit() and int(u) < len(labels))
    if not example:
        example = f"--label-map {unknown[0]}={labels[0]}"
    raise UserError(
        f"the test set has label(s) {shown} that the model in {model_dir} never saw; its labels are "
        f"{', '.join(repr(x) for x in labels)}; rename the test labels with --label-map TEST_LABEL=MODEL_LABEL "
        f"(repeatable, e.g. {example})"
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- metrics


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, Macro-F1 (and macro precision / recall, weighted F1), per-class precision /
    recall / F1 / support and the confusion matrix (rows: true label, columns: predicted, in
    `labels` order). Macro averages are over the labels that occur in y_true or y_pred
    (scikit-learn's default): a model label absent from both has no defined F1 and is listed in
    `absent_labels`, not averaged in as a zero. Undefined precision (never predicted) counts 0."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    y_true, y_pred = list(y_true), list(y_pred)
    stray = sorted((set(y_true) | set(y_pred)) - set(labels))
    if stray:
        raise ValueError(f"labels {stray} are not in the label list {labels}")
    if not y_true or len(y_true) != len(y_pred):
        raise ValueError(f"need equally long, non-empty label lists; got {len(y_true)} and {len(y_pred)}")
    seen = set(y_true) | set(y_pred)
    present = [label for label in labels if label in seen]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    wf = precision_recall_fscore_support(y_true, y_pred, labels=present, average="weighted", zero_division=0)[2]
    return {
        "macro_f1": float(mf),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "weighted_f1": float(wf),
        "n": len(y_true),
        "labels": labels,
        "absent_labels": [label for label in labels if label not in seen],
        "per_class": {
            label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """PNG bytes: counts in the cells, colour by share of the true label's row. Drawn on an Agg
    canvas of its own: no pyplot state, no display needed, the caller's backend untouched."""
    import numpy as np

    from localsynth.plots import figure, png

    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    fig = figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label")
    slanted = len(labels) > 3 or max(map(len, labels)) > 8
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=10)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if shares[i, j] > 0.5 else "black")
    return png(fig)


# ----------------------------------------------------------------------------- the stage


def evaluate_model(
    model: str | Path,
    test_df: pl.DataFrame,
    out_dir: str | Path | None = None,
    *,
    batch_size: int = EVAL_DEFAULTS.batch_size,
    max_length: int = EVAL_DEFAULTS.max_length,
    device: str = EVAL_DEFAULTS.device,
    test_source: dict[str, Any] | None = None,
    progress: str = "auto",
) -> dict[str, Any]:
    """Evaluate `model` (a training output folder or a saved model folder) on `test_df` (`text`,
    `label` and any other columns, which the predictions keep). With `out_dir`, write the
    outputs and `eval.done` last. Every input is checked before the weights are loaded.
    Returns the metrics record (what metrics.json holds)."""
    out = Path(out_dir) if out_dir is not None else None
    _check_inputs(test_df, out, batch_size, max_length)
    model_dir, training = resolve_model(model)
    labels = model_labels(model_dir)
    check_labels(test_df["label"].unique().to_list(), labels, model_dir)

    import torch

    device = resolve_device(device, torch)
    if out is not None:
        try:  # now, not after inference: a folder that cannot be written fails at once
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output folder {out} ({exc.strerror}); choose another --out") from None
    tokenizer, classifier = load_classifier(model_dir, device)
    limit = length_limit(classifier, tokenizer, max_length)
    if limit < max_length:
        log(f"max length {max_length} is more than this model holds; using {limit}")
    if test_df["text"].null_count():
        log(f"{test_df['text'].null_count()} test row(s) have no text; they are evaluated as empty texts")
    texts = test_df["text"].fill_null("").to_list()
    started = time.monotonic()
    ids, scores, at_limit = predict(classifier, tokenizer, texts, batch_size, limit, device, progress)
    seconds = time.monotonic() - started
    predicted = [labels[i] for i in ids]
    amp = autocast_dtype(device, torch)

    from localsynth.runinfo import environment

    metrics = compute_metrics(test_df["label"].to_list(), predicted, labels)
    metrics.update(
        model=str(Path(model).resolve()),
        model_dir=str(model_dir.resolve()),
        test=test_source or {},
        evaluation={
            "batch_size": batch_size,
            "max_length": max_length,
            "max_length_used": limit,
            "texts_at_max_length": at_limit,
            "device": device,
            "autocast": str(amp).removeprefix("torch.") if amp is not None else None,
            "seconds": round(seconds, 3),
            "texts_per_s": round(len(texts) / max(seconds, 1e-9), 1),
        },
        training=training,
        environment=environment(),
    )
    if out is not None:
        predictions = pl.DataFrame(
            {"text": texts, "label": test_df["label"], "predicted": predicted, "score": pl.Series(scores, dtype=pl.Float32)}
        ).with_columns(correct=pl.col("label") == pl.col("predicted"))
        extra = test_df.drop([c for c in test_df.columns if c in predictions.columns])
        if extra.width:
            predictions = pl.concat([predictions, extra], how="horizontal")
        name = model_dir.parent.name if model_dir.name == "model" else model_dir.name
        write_outputs(out, metrics, predictions, name)
    return metrics


def _check_inputs(test_df: pl.DataFrame, out: Path | None, batch_size: int, max_length: int) -> None:
    if batch_size < 1 or max_length < 1:
        raise UserError(f"batch size and max length must be at least 1; got {batch_size} and {max_length}")
    if "text" not in test_df.columns or "label" not in test_df.columns:
        raise UserError(f"the test frame needs the columns 'text' and 'label'; it has {test_df.columns}")
    if test_df.height == 0:
        raise UserError("the test set has no rows; point it at a file with labelled rows")
    unlabelled = test_df["label"].is_null()
    if unlabelled.any():
        raise UserError(
            f"{unlabelled.sum()} test row(s) have no label (the first is data row {unlabelled.arg_true()[0] + 1}); "
            f"remove or label them, or point --label-column at the right column"
        )
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the evaluation outputs")


def write_outputs(out: Path, metrics: dict[str, Any], predictions: pl.DataFrame, name: str) -> None:
    """metrics.json, predictions.parquet, confusion.png, each atomically; eval.done last."""
    title = f"{name}: macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f} (n={metrics['n']})"
    png = plot_confusion(metrics["confusion_matrix"], metrics["labels"], title)
    (out / DONE).unlink(missing_ok=True)  # from here the folder is not complete until the marker
    write_json_atomic(out / METRICS, metrics)
    write_parquet_atomic(predictions, out / PREDICTIONS)
    write_bytes_atomic(out / CONFUSION, png)
    write_text_atomic(out / DONE, json.dumps({"metrics": METRICS, "macro_f1": metrics["macro_f1"]}) + "\n")


def summary(metrics: dict[str, Any], out_dir: Path | None = None) -> str:
    """A few lines for the terminal: the headline numbers, then one line per class."""
    width = max(len(label) for label in metrics["labels"])
    lines = [f"macro-F1 {metrics['macro_f1']:.4f}  accuracy {metrics['accuracy']:.4f}  "
             f"(n={metrics['n']}, {len(metrics['labels'])} labels)"]
    for label, row in metrics["per_class"].items():
        lines.append(f"  {label:<{width}}  precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                     f"F1 {row['f1']:.3f}  support {row['support']}")
    if out_dir is not None:
        lines.append(f"wrote {out_dir / METRICS}, {PREDICTIONS}, {CONFUSION}")
    return "\n".join(lines)
