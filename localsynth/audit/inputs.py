"""What an audit reads: the labelled rows (the kept rows of a generation run, or any labelled
CSV / TSV / JSONL / Parquet file), the label set with its descriptions (from the run's task
when there is one), and the reference sets (the real test set, the few-shot pool).

A run directory brings its own defaults: the task's labels and descriptions for the judge's
prompt, its generator as the default judge, its few-shot pool and (when the task names one) its
test set. A file brings only its rows: labels are the ones that occur, unless given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.errors import UserError
from localsynth.generation.rundir import is_run_dir, read_kept


@dataclass
class AuditInput:
    rows: pl.DataFrame  # id, text, label: one row per audited text, in input order
    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    title: str | None = None
    text_kind: str = "text"
    source: str = ""
    is_run: bool = False
    generator: dict[str, Any] | None = None  # the run's generator settings (the default judge)
    few_shot_pool: str | None = None
    test: str | None = None


def _run_rows(path: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    import yaml

    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"RUN_DIR {path}: no config.yaml; give a generation run directory or a labelled file")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    rows = read_kept(path, ["id", "text", "label"], "audit")
    return rows, config


def _file_rows(path: Path, text_column: str, label_column: str) -> pl.DataFrame:
    from localsynth.data.sources import read_table

    df = read_table(path, "INPUT")
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise UserError(
            f"INPUT {path}: no column(s) {', '.join(repr(c) for c in missing)}; it has "
            f"{', '.join(repr(c) for c in df.columns)}; name them with --set text_column=... / --set label_column=..."
        )
    ids = df["id"].cast(pl.Utf8) if "id" in df.columns and text_column != "id" else None
    if ids is None or ids.null_count() or ids.n_unique() != df.height:
        ids = pl.Series("id", [f"row-{i}" for i in range(df.height)])
    return pl.DataFrame({"id": ids, "text": df[text_column].cast(pl.Utf8), "label": df[label_column].cast(pl.Utf8)})


def load_input(path: str | Path, text_column: str = "text", label_column: str = "label",
               labels: list[str] | None = None) -> AuditInput:
    """The rows to audit and what the run (if it is one) says about them."""
    given = Path(os.path.expanduser(str(path)))
    if not given.exists():
        raise UserError(f"INPUT {given} not found; give a generation run directory or a labelled CSV / JSONL / Parquet file")
    info = AuditInput(rows=pl.DataFrame(), labels=[], source=str(given))
    if is_run_dir(given):
        rows, config = _run_rows(given)
        task = config.get("task") or {}
        info.is_run = True
        info.descriptions = {lab["name"]: lab.get("description") or "" for lab in task.get("labels") or []}
        info.title, info.text_kind = task.get("title"), task.get("text_kind") or "text"
        info.generator = config.get("generator")
        info.few_shot_pool = (((task.get("few_shot") or {}).get("source") or {}).get("path")
                              if config.get("mode") == "few-shot" else None)
        info.test = ((task.get("real_data") or {}).get("test") or {}).get("path")
        known = list(info.descriptions)
    elif given.is_dir():
        raise UserError(f"INPUT {given} is a folder but not a generation run directory (no shards/); give a run "
                        f"directory or a labelled file")
    else:
        rows, known = _file_rows(given, text_column, label_column), None
    rows = rows.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != "")
                       & pl.col("label").is_not_null())
    if rows.height == 0:
        raise UserError(f"INPUT {given}: no labelled texts to audit (kept rows with text and label); check the input")
    present = sorted(rows["label"].unique().to_list())
    info.labels = list(labels or known or present)
    if len(info.labels) < 2:
        raise UserError(f"labels: {info.labels} is one label; a judge needs at least two to choose from; list them "
                        f"with --set 'labels=[a,b]'")
    outside = [lab for lab in present if lab not in info.labels]
    if outside:
        raise UserError(
            f"labels: the rows carry label(s) {outside[:10]} that are not in the judge's answer space "
            f"({', '.join(info.labels)}); add them with --set 'labels=[...]' or fix the label column"
        )
    info.rows = rows
    return info


def load_reference(path: str | Path, key: str, text_column: str = "text", split: str = "test") -> pl.DataFrame:
    """Columns id, text of a reference set: a file, or a data folder's `<split>.parquet`."""
    from localsynth.data.sources import read_table

    given = Path(os.path.expanduser(str(path)))
    if given.is_dir():
        candidate = given / f"{split}.parquet"
        if not candidate.is_file():
            raise UserError(f"{key} {given} is a folder without {split}.parquet; give the {split} file itself")
        given = candidate
    df = read_table(given, key)
    if text_column not in df.columns:
        raise UserError(f"{key} {given}: no column '{text_column}'; it has {', '.join(repr(c) for c in df.columns)}; "
                        f"name it with --set reference_text_column=...")
    texts = df[text_column].cast(pl.Utf8)
    ids = df["id"].cast(pl.Utf8) if "id" in df.columns and text_column != "id" else None
    if ids is None or ids.null_count() or ids.n_unique() != df.height:
        ids = pl.Series("id", [f"{split}-{i}" for i in range(df.height)])
    out = pl.DataFrame({"id": ids, "text": texts}).filter(pl.col("text").is_not_null())
    if out.height == 0:
        raise UserError(f"{key} {given} has no texts; point it at a file with a '{text_column}' column")
    return out
