"""Training rows: real data and the kept rows of generation runs, mixed by weight; then
tokenised and batched by length."""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.errors import UserError
from localsynth.generation.rundir import read_kept
from localsynth.progress import log
from localsynth.tasks import DataSource
from localsynth.training.config import TrainConfig, TrainSource


def read_real(source: TrainSource, key: str) -> pl.DataFrame:
    from localsynth.data.sources import load_source

    path = Path(os.path.expanduser(source.path))
    if path.is_dir():
        candidate = path / "train.parquet"
        if not candidate.is_file():
            raise UserError(f"{key}.path: {path} is a folder without train.parquet; run 'localsynth data import' into it first")
        path = candidate
    data = DataSource(
        path=str(path), text_column=source.text_column, label_column=source.label_column, label_map=source.label_map
    )
    return load_source(data, key).select("text", "label")



# Set by `localsynth train --allow-partial` (a context variable, so it holds for one call).
allow_partial_runs: ContextVar[bool] = ContextVar("allow_partial_runs", default=False)


def read_synthetic(source: TrainSource, key: str, allow_partial: bool | None = None) -> pl.DataFrame:
    """Kept rows of every shard of a finished generation run (of its finished shards only with
    `allow_partial`: the argument, the source's `allow_partial`, or `--allow-partial`)."""
    if allow_partial is None:
        allow_partial = bool(getattr(source, "allow_partial", False)) or allow_partial_runs.get()
    run_dir = Path(os.path.expanduser(source.run_dir))
    from localsynth.audit.study import train_warning

    if warning := train_warning(run_dir):  # an audit found rows of the real test set among them
        log(warning)
    rows = read_kept(run_dir, ["text", "label"], key, allow_partial)
    if source.label_map:
        rows = rows.with_columns(pl.col("label").replace(source.label_map))
    return rows


def mix(frames: list[pl.DataFrame], weights: list[float | None], seed: int) -> list[pl.DataFrame]:
    """Sample each weighted source so the shares follow the weights, using as many rows as
    possible; a source without a weight keeps all its rows."""
    weighted = [(f, w) for f, w in zip(frames, weights, strict=True) if w is not None]
    if len(weighted) < 2:
        return frames
    scale = min(f.height / w for f, w in weighted)
    return [f if w is None or round(scale * w) >= f.height else f.sample(n=round(scale * w), seed=seed, shuffle=True)
            for f, w in zip(frames, weights, strict=True)]


def per_label(df: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    """At most `limit` rows of each label, sampled with `seed` (labels in sorted order, so the
    sample does not depend on row order across runs)."""
    parts = [g if g.height <= limit else g.sample(n=limit, seed=seed)
             for _, g in sorted(df.group_by("label"), key=lambda kv: str(kv[0][0]))]
    return pl.concat(parts) if parts else df


def load_training_rows(cfg: TrainConfig, labels: list[str] | None) -> tuple[pl.DataFrame, list[str], list[dict[str, Any]]]:
    """(rows with text, label, source; the label set; a report per source)."""
    frames, report = [], []
    for i, source in enumerate(cfg.train):
        key = f"train[{i}]"
        df = read_synthetic(source, key) if source.run_dir else read_real(source, key)
        df = df.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != "") & pl.col("label").is_not_null())
        if df.height == 0:
            raise UserError(f"{key}: no usable rows (texts with labels) in {source.path or source.run_dir}; check the source")
        available = df.height
        if source.max_rows_per_label:
            df = per_label(df, source.max_rows_per_label, cfg.training.seed)
        if source.max_rows and df.height > source.max_rows:
            df = df.sample(n=source.max_rows, seed=cfg.training.seed)
        frames.append(df.with_columns(pl.lit(source.display_name).alias("source")))
        report.append({"name": source.display_name, "path": source.path, "run_dir": source.run_dir, "weight": source.weight, "rows_available": available})
    frames = mix(frames, [s.weight for s in cfg.train], cfg.training.seed)
    for entry, frame in zip(report, frames, strict=True):
        entry["rows_used"] = frame.height
    rows = pl.concat(frames)
    if cfg.max_train_rows and rows.height > cfg.max_train_rows:
        rows = rows.sample(n=cfg.max_train_rows, seed=cfg.training.seed)

    present = sorted(rows["label"].unique().to_list())
    if labels is None:
        labels = present
    unknown = sorted(set(present) - set(labels))
    if unknown:
        raise UserError(
            f"training labels {unknown[:10]} are not in the label set ({', '.join(labels)}); "
            f"rename them with train[i].label_map or fix 'labels' / 'task'"
        )
    if len(present) < 2:
        raise UserError(
            f"the training set has a single class ({present[0] if present else 'none'}): a classifier needs at least two; "
            f"add rows of the other labels ({', '.join(label for label in labels if label not in present)})"
        )
    return rows, labels, report


# ----------------------------------------------------------------------------- batches

IGNORE = -100  # the label of a padding row: cross-entropy skips it


class Rows:
    """Tokenised training rows by index, each with its row id. Index `len + i` is row i again
    as a padding row: label IGNORE, so it fills a batch without counting in the loss."""

    def __init__(self, encoded: dict[str, list[list[int]]], targets: list[int]):
        self.encoded, self.targets = encoded, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = index % len(self.targets)
        item = {k: v[row] for k, v in self.encoded.items()}
        return {**item, "label": self.targets[row] if index == row else IGNORE, "id": row}


class LengthGroupedBatches:
    """Index batches for one epoch: shuffled, then sorted by length within windows of 50
    batches so each batch pads little, then the batch order shuffled again. Seeded by
    (seed, epoch), so a resumed run replays the same order.

    With `pad_short` the one short batch is filled up to `batch_size` with padding rows (see
    `Rows`): accelerate's `BatchSamplerShard` (split_batches) yields only full batches in its
    loop and handles a short one only when it comes last (padded with rows of the first batch,
    which would then count twice, or, with even_batches=False, leaving some processes a batch
    short, which hangs the collectives). Full batches give every process the same number of
    batches and every row exactly once per epoch, whatever the process count."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, pad_short: bool = False):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.pad_short = pad_short
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.group:
            window = self.batch_size * 50
            order = [
                i
                for start in range(0, len(order), window)
                for i in sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        n = len(self.lengths)
        for batch in batches:
            if self.pad_short and len(batch) < self.batch_size:  # copies of its own rows: the same lengths
                batch = batch + [n + batch[i % len(batch)] for i in range(self.batch_size - len(batch))]
            yield batch


def make_collate(pad_id: int):
    import torch

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(item["input_ids"]) for item in items)
        batch = {"input_ids": [], "attention_mask": []}
        has_types = "token_type_ids" in items[0]
        if has_types:
            batch["token_type_ids"] = []
        for item in items:
            pad = width - len(item["input_ids"])
            batch["input_ids"].append(item["input_ids"] + [pad_id] * pad)
            batch["attention_mask"].append([1] * len(item["input_ids"]) + [0] * pad)
            if has_types:
                batch["token_type_ids"].append(item["token_type_ids"] + [0] * pad)
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        out["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.long)
        out["ids"] = torch.tensor([item["id"] for item in items], dtype=torch.long)
        return out

    return collate


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    keep = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return {k: enc[k] for k in keep}
