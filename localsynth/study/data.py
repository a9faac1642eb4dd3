"""The real data of a study: found once per task, checked, written to the study folder.

Every cell of a task reads the same two Parquet files, so the real baseline, the few-shot
examples and every evaluation see exactly the same rows, whatever happens to the source later.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from localsynth.errors import UserError
from localsynth.io import write_json_atomic, write_parquet_atomic
from localsynth.study.config import StudyConfig
from localsynth.tasks import DataSource, TaskConfig

SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".csv.gz", ".jsonl.gz")


def _in_data_dir(data_dir: str, task: str, split: str) -> DataSource | None:
    folder = Path(os.path.expanduser(data_dir)) / task
    for suffix in SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return DataSource(path=str((folder / f"{split}{suffix}").resolve()))
    return None


def find_source(cfg: StudyConfig, ref: str, task: TaskConfig, split: str) -> tuple[DataSource, str]:
    """(the source, the config key it came from): data.<task>.<split>, then data_dir, then the
    task config's real_data."""
    name = task.name
    override = cfg.data.get(name) or cfg.data.get(ref)
    if override is not None and getattr(override, split) is not None:
        return getattr(override, split), f"data.{name}.{split}"
    if cfg.data_dir:
        found = _in_data_dir(cfg.data_dir, name, split)
        if found is not None:
            return found, "data_dir"
    configured: DataSource = getattr(task.real_data, split)
    if configured.configured:
        return configured, f"task {name}: real_data.{split}"
    folder = Path(os.path.expanduser(cfg.data_dir)) / name if cfg.data_dir else None
    where = f"{folder} has no {split}.csv or {split}.parquet" if folder else "no data_dir is set"
    raise UserError(
        f"task {name}: no real {split} data ({where}); "
        f"set data_dir=FOLDER holding {name}/train.csv and {name}/test.csv, or data.{name}.{split}.path=FILE, "
        f"or import it with: localsynth data import SOURCE --out FOLDER/{name}"
    )


def agreement_source(cfg: StudyConfig, task: str) -> str | None:
    """Instance agreement of the task's test texts: analysis.agreement.<task>, else agreement
    subsets (sentences_*agree files, Financial PhraseBank's layout) beside the data in data_dir."""
    if task in cfg.analysis.agreement:
        return str(Path(os.path.expanduser(cfg.analysis.agreement[task])).resolve())
    if cfg.data_dir:
        from localsynth.analysis.agreement import SUBSET_FILE

        folder = Path(os.path.expanduser(cfg.data_dir)) / task
        if folder.is_dir() and any(SUBSET_FILE.search(p.name) for p in folder.iterdir()):
            return str(folder.resolve())
    return None


def _load(source: DataSource, key: str, labels: list[str], keep_extra: bool) -> pl.DataFrame:
    from localsynth.data.sources import load_source

    path = Path(os.path.expanduser(source.path)) if source.path else None
    if path is not None and not path.exists():
        raise UserError(f"{key}: {path} not found; fix the path")
    df = load_source(source, key, labels)
    df = df.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != "") & pl.col("label").is_not_null())
    if df.height == 0:
        raise UserError(f"{key}: {source.path or source.hf_dataset} has no labelled texts; point it at real data")
    return df if keep_extra else df.select("text", "label")


def _stratified_sample(df: pl.DataFrame, rows: int, seed: int) -> pl.DataFrame:
    if rows >= df.height:
        return df
    from localsynth.data.importer import stratified_split

    _, sample = stratified_split(df, rows / df.height, seed, "evaluation.max_test_rows")
    return sample


def prepare_task_data(cfg: StudyConfig, ref: str, task: TaskConfig, folder: Path) -> dict[str, str]:
    """{'train': path, 'test': path} of the task's real data in the study folder; written once
    (data.json records the sources), then reused, and an error if the sources changed."""
    labels = task.label_names
    sources = {split: find_source(cfg, ref, task, split) for split in ("train", "test")}
    spec = {
        split: {"from": key, **source.model_dump(mode="json", exclude_defaults=True)}
        for split, (source, key) in sources.items()
    }
    spec["max_test_rows"] = cfg.evaluation.max_test_rows
    paths = {split: str(folder / f"{split}.parquet") for split in ("train", "test")}
    agreement = agreement_source(cfg, task.name)
    if agreement:
        paths["agreement"] = agreement
    record = folder / "data.json"
    if record.is_file():
        import json

        old = json.loads(record.read_text(encoding="utf-8"))
        if old.get("spec") != spec:
            raise UserError(
                f"task {task.name}: the study's real data was prepared from other sources ({record}); "
                f"use a new out_dir, or delete {folder} and every cell of this task to start it again"
            )
        return paths
    frames = {}
    for split, (source, key) in sources.items():
        frames[split] = _load(source, key, labels, keep_extra=split == "test")
    if cfg.evaluation.max_test_rows:
        frames["test"] = _stratified_sample(frames["test"], cfg.evaluation.max_test_rows, 0)
    for split, df in frames.items():
        present = set(df["label"].unique().to_list())
        if len(present) < 2:
            raise UserError(
                f"task {task.name}: the real {split} data ({spec[split].get('path') or spec[split].get('hf_dataset')}) "
                f"has a single label {sorted(present)}; it needs several of {labels}"
            )
    folder.mkdir(parents=True, exist_ok=True)
    for split, df in frames.items():
        write_parquet_atomic(df, Path(paths[split]))
    counts = {split: dict(sorted(df.group_by("label").len().iter_rows())) for split, df in frames.items()}
    write_json_atomic(record, {"spec": spec, "rows": {s: df.height for s, df in frames.items()}, "label_counts": counts})
    return paths
