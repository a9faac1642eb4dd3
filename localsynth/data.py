"""Real labelled data: a local CSV / TSV / JSONL / Parquet file or a Hugging Face dataset,
read into a Polars frame with the columns `text` and `label` (label as the class name)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from localsynth.config import DataSource
from localsynth.errors import UserError, require

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


def read_table(path: Path, key: str) -> pl.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{key}: unsupported file type '{path.suffix}' ({path}); use CSV, TSV, JSONL or Parquet")
    if not path.is_file():
        raise UserError(f"{key}: file not found: {path}; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"{key}: {path} is empty; point it at a file with a header and rows")
    try:
        if kind in ("csv", "tsv"):
            return pl.read_csv(path, separator="\t" if kind == "tsv" else ",", infer_schema=False, encoding="utf8")
        if kind == "jsonl":
            return pl.read_ndjson(path)
        if kind == "json":
            return pl.read_json(path)
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if "utf" in detail.lower() or isinstance(exc, UnicodeDecodeError):
            hint = "it is not UTF-8 text; save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        elif "empty" in detail.lower():
            hint = "point it at a file with a header and rows"
        else:
            hint = f"check that it is a valid {kind.upper()} file"
        raise UserError(f"{key}: cannot read {path}: {detail}; {hint}") from None


def load_hf(source: DataSource, key: str) -> pl.DataFrame:
    datasets = require("datasets", "dev")
    try:
        ds = datasets.load_dataset(source.hf_dataset, source.hf_config, split=source.split)
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        raise UserError(
            f"{key}: cannot load the Hugging Face dataset '{source.hf_dataset}' (split {source.split}): "
            f"{type(exc).__name__}; without hub access, download it elsewhere, save it as Parquet or CSV "
            f"and set {key}.path=FILE instead of hf_dataset"
        ) from None
    feature = ds.features.get(source.label_column)
    df = ds.to_polars()
    if feature is not None and hasattr(feature, "int2str") and source.label_column in df.columns:
        names = pl.Series(feature.names)
        df = df.with_columns(pl.col(source.label_column).map_elements(lambda i: names[i], return_dtype=pl.Utf8))
    return df


def load_source(source: DataSource, key: str, labels: list[str] | None = None) -> pl.DataFrame:
    """Rows with `text` and `label` (strings), renamed by `label_map`; other columns kept."""
    if source.path:
        df = read_table(Path(os.path.expanduser(source.path)), f"{key}.path")
    elif source.hf_dataset:
        df = load_hf(source, key)
    else:
        raise UserError(f"{key}: no data source; set {key}.path=FILE or {key}.hf_dataset=ID")
    where = source.path or source.hf_dataset
    missing = [c for c in (source.text_column, source.label_column) if c not in df.columns]
    if missing:
        fix = " and ".join(
            f"{key}.{name}=COLUMN"
            for name, col in (("text_column", source.text_column), ("label_column", source.label_column))
            if col in missing
        )
        raise UserError(
            f"{key}: column(s) {', '.join(repr(c) for c in missing)} not found in {where}; it has: "
            f"{', '.join(repr(c) for c in df.columns)}; set {fix} to the right column names"
        )
    if df.height == 0:
        raise UserError(f"{key}: {where} has a header but no rows; point it at a file with labelled rows")
    df = df.rename({source.text_column: "_text", source.label_column: "_label"})
    df = df.drop([c for c in ("text", "label") if c in df.columns])
    df = df.rename({"_text": "text", "_label": "label"}).with_columns(
        pl.col("text").cast(pl.Utf8), pl.col("label").cast(pl.Utf8)
    )
    if source.label_map:
        df = df.with_columns(pl.col("label").replace(source.label_map))
    if labels is not None:
        unknown = sorted(set(df["label"].drop_nulls().unique().to_list()) - set(labels))
        if unknown:
            raise UserError(
                f"{key}: labels {unknown[:10]} are not task labels ({', '.join(labels)}); "
                f"map them with {key}.label_map"
            )
    return df


def example_pool(df: pl.DataFrame, labels: list[str], key: str) -> dict[str, list[str]]:
    """Few-shot examples per label, in file order (sampling is seeded per request)."""
    df = df.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != ""))
    pool = {label: df.filter(pl.col("label") == label)["text"].to_list() for label in labels}
    empty = [label for label, texts in pool.items() if not texts]
    if empty:
        found = sorted(df["label"].drop_nulls().unique().to_list())
        shown = ", ".join(repr(x) for x in found[:20]) + (" ..." if len(found) > 20 else "")
        raise UserError(
            f"{key}: no real examples for label(s) {', '.join(empty)} (few-shot needs some for every label); "
            f"the data's labels are: {shown or 'none'}; add rows for those labels, or rename the data's "
            f"labels to the task's with {key}.label_map (e.g. --set '{key}.label_map={{\"1\": {empty[0]}}}')"
        )
    return pool
