"""Evaluate a trained classifier on real test data: Macro-F1, accuracy, per-class scores and a
confusion matrix, with every prediction kept.

`evaluate_model` takes a model folder (a training output folder with `model/` and
`training.json`, or any folder saved with `save_pretrained`) and a frame with `text` and
`label`; it checks everything it can before loading weights, predicts in batches sorted by
length (dynamic padding: short texts do not pay for long ones), and writes `metrics.json`,
`predictions.parquet` and `confusion.png` at the end, then the `eval.done` marker last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from localsynth import devices
from localsynth.config import DataSource
from localsynth.data import load_source
from localsynth.errors import UserError
from localsynth.io import (
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from localsynth.progress import console, log

METRICS, PREDICTIONS, CONFUSION, DONE = "metrics.json", "predictions.parquet", "confusion.png", "eval.done"
DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")  # what transformers fills in when no names were given


# ----------------------------------------------------------------------------- inputs


def resolve_model(path: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """(the folder holding config.json, the training record or None). A training output folder
    has the model in `model/` and its record in `training.json`; a bare model folder named
    `model` inside such a folder gets its parent's record too."""
    given = Path(os.path.expanduser(str(path)))
    if not given.exists():
        raise UserError(
            f"model folder not found: {given}; give a training output folder (with model/ and "
            f"training.json) or a folder saved with save_pretrained"
        )
    if not given.is_dir():
        raise UserError(f"model {given} is a file; give the folder that holds config.json (or a training output folder)")
    if (given / "model" / "config.json").is_file():
        model_dir, record = given / "model", given / "training.json"
    elif (given / "config.json").is_file():
        model_dir, record = given, given.parent / "training.json"
        if given.name != "model":
            record = given / "training.json"
    else:
        hint = ""
        if (given / "adapter_config.json").is_file() or (given / "model" / "adapter_config.json").is_file():
            hint = "; it holds a LoRA adapter: merge it into its base model (peft merge_and_unload) and save that"
        raise UserError(
            f"{given} has no config.json (nor model/config.json), so it is not a saved Hugging Face model{hint}; "
            f"point MODEL at a training output folder or a folder saved with save_pretrained"
        )
    train_dir = record.parent
    if (train_dir / "config.yaml").is_file() and (train_dir / "checkpoints").is_dir() and not (train_dir / "train.done").is_file():
        raise UserError(
            f"{train_dir} holds a training run that has not finished (no train.done); rerun the same "
            f"'localsynth train' command to complete it, then evaluate"
        )
    if not record.is_file():
        return model_dir, None
    try:
        training = json.loads(record.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{record} is not valid JSON ({exc}); re-run the training or remove the file") from None
    if not isinstance(training, dict):
        raise UserError(f"{record} must hold a JSON object, got a {type(training).__name__}; re-run the training")
    return model_dir, training


def model_labels(model_dir: Path) -> list[str]:
    """Label names in class-id order, read from config.json without loading the model."""
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); save the model again with save_pretrained") from None
    fix = (
        "save it with the class names, e.g. AutoModelForSequenceClassification.from_pretrained(base, "
        "num_labels=2, id2label={0: 'ham', 1: 'spam'}, label2id={'ham': 0, 'spam': 1})"
    )
    raw = config.get("id2label") if isinstance(config, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"the model in {model_dir} has no label names (config.json has no id2label); {fix}")
    try:
        id2label = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise UserError(f"{path}: id2label keys must be class ids 0..n-1, got {sorted(raw)}; {fix}") from None
    if sorted(id2label) != list(range(len(id2label))):
        raise UserError(f"{path}: id2label keys must be class ids 0..n-1, got {sorted(id2label)}; {fix}")
    labels = [id2label[i] for i in range(len(id2label))]
    if all(DEFAULT_LABEL.match(name) for name in labels):
        raise UserError(
            f"the model in {model_dir} has no label names (id2label holds the defaults "
            f"{', '.join(labels[:4])}{' ...' if len(labels) > 4 else ''}); {fix}"
        )
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: id2label repeats label name(s) {', '.join(dupes)}; each class needs its own name")
    return labels


def parse_label_map(items: Sequence[str]) -> dict[str, str]:
    """['0=ham', '1=spam'] -> {'0': 'ham', '1': 'spam'}."""
    mapping = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise UserError(f"--label-map expects TEST_LABEL=MODEL_LABEL (e.g. --label-map 0=ham); got '{item}'")
        mapping[source] = target
    return mapping


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


def resolve_device(device: str, torch) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got '{device}'")
    return devices.resolve_device(device, torch, f"--device {device}", "use --device cpu")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- inference


def _length_limit(model, tokenizer, max_length: int) -> int:
    """max_length, capped by what the model's position embeddings hold."""
    limit = max_length
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limit = min(limit, tokenizer.model_max_length)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models number positions from padding_idx + 1: two fewer usable.
        offset = 2 if "roberta" in model.config.model_type or model.config.model_type == "camembert" else 0
        limit = min(limit, positions - offset)
    return limit


def autocast_dtype(device: str, torch):
    """bf16 autocast on GPUs that have it (fp16 on older ones); none on CPU."""
    if not device.startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def predict(model, tokenizer, texts: list[str], batch_size: int, max_length: int, device: str,
            progress: str = "auto") -> tuple[list[int], list[float], int]:
    """(predicted class ids, probability of each prediction, texts that reached max_length),
    in input order."""
    import torch

    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())  # the tokenizer's model_input_names
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: memory peaks at once
    predicted, scores = [0] * len(texts), [0.0] * len(texts)
    dtype = autocast_dtype(device, torch)
    bar = _Progress(len(texts), progress)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad([{k: encoded[k][i] for k in keys} for i in rows], return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext():
                logits = model(**batch).logits
            best, ids = logits.float().softmax(-1).max(-1)
            for i, p, s in zip(rows, ids.tolist(), best.tolist()):
                predicted[i], scores[i] = p, s
            bar.advance(len(rows))
    bar.close()
    return predicted, scores, sum(n >= max_length for n in lengths)


class _Progress:
    """A rich bar on a terminal; elsewhere a log line every 30 s and one at the end."""

    def __init__(self, total: int, mode: str):
        self.mode = ("bar" if console.is_terminal else "log") if mode == "auto" else mode
        self.total, self.done = total, 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if self.mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=console)
            self.task = self.bar.add_task("evaluate", total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.mode == "log" and time.monotonic() - self.last >= 30:
            self.last = time.monotonic()
            self.line()

    def line(self) -> None:
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        log(f"evaluate: {self.done}/{self.total} texts, {rate:.1f} texts/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.mode == "log":
            self.line()


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
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "auto",
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
    tokenizer, classifier = _load(model_dir, device)
    limit = _length_limit(classifier, tokenizer, max_length)
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


def _load(model_dir: Path, device: str):
    """(tokenizer, model in eval mode on `device`); a folder that does not load is bad input."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as exc:  # transformers raises many types here; all mean "not loadable"
            raise UserError(
                f"cannot load a tokenizer from {model_dir} ({_first_line(exc)}); save the tokenizer beside the "
                f"model with tokenizer.save_pretrained({model_dir})"
            ) from None
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
        except Exception as exc:
            raise UserError(
                f"cannot load a sequence classifier from {model_dir} ({_first_line(exc)}); save it with "
                f"save_pretrained from an AutoModelForSequenceClassification"
            ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(
            f"the model in {model_dir} lacks trained weights for {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''} (they would be random); evaluate a fine-tuned classifier, "
            f"not a base encoder"
        )
    if tokenizer.pad_token is None:  # GPT-style tokenizers: pad with end-of-text (masked anyway)
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer in {model_dir} has no padding token; set one and save it again")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to(device).eval()


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


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
