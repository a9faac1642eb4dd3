"""A trained classifier, loaded and run: its folder and label names (read without loading the
weights), the device, and batched prediction sorted by length (dynamic padding: short texts do
not pay for long ones). `localsynth evaluate` and the audit both predict through here."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from localsynth import devices
from localsynth.errors import UserError
from localsynth.progress import CountProgress

DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")  # what transformers fills in when no names were given


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


def resolve_device(device: str, torch) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got '{device}'")
    return devices.resolve_device(device, torch, f"--device {device}", "use --device cpu")


def length_limit(model, tokenizer, max_length: int) -> int:
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
    bar = CountProgress(len(texts), "evaluate (texts)", progress)
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


def load_classifier(model_dir: Path, device: str):
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
