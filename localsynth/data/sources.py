"""Real labelled data: a local CSV / TSV / JSONL / Parquet file or a Hugging Face dataset, read
into Polars frames with the columns `text` and `label` (label as the class name). The import
command that turns a source into canonical train / test Parquet lives in `dataimport`."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.errors import UserError, require
from localsynth.tasks import DataSource

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")


def file_kind(path: Path, fmt: str | None = None) -> str | None:
    """The reader for a file: `fmt` when given, else from its suffix (`.csv.gz` reads as CSV)."""
    if fmt:
        return fmt
    name = path.name.lower().removesuffix(".gz")
    return READERS.get(os.path.splitext(name)[1])


def _separator(head: bytes, kind: str) -> str:
    """The file's own separator when its first line lacks the expected one (';' CSVs, say)."""
    expected = "\t" if kind == "tsv" else ","
    line = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    if expected in line:
        return expected
    counts = {sep: line.count(sep) for sep in (",", "\t", ";", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else expected


def read_table(path: Path, key: str, fmt: str | None = None, header: bool = True) -> pl.DataFrame:
    kind = file_kind(path, fmt)
    if kind is None:
        raise UserError(f"{key}: unsupported file type '{path.suffix}' ({path}); use CSV, TSV, JSONL or Parquet")
    if not path.is_file():
        if path.exists():  # a folder, FIFO or device: reading it could block or fail oddly
            raise UserError(f"{key}: {path} is not a regular file; give the path of a data file")
        raise UserError(f"{key}: file not found: {path}; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"{key}: {path} is empty; point it at a file with a header and rows")
    try:
        if path.name.lower().endswith(".gz"):
            source: Any = io.BytesIO(gzip.decompress(path.read_bytes()))
            head = source.getvalue()[:65536]
        else:
            source = path
            with open(path, "rb") as fh:
                head = fh.read(65536)
        if kind in ("csv", "tsv"):
            df = pl.read_csv(
                source, separator=_separator(head, kind), has_header=header, infer_schema=False, encoding="utf8"
            )
            return df if header else df.rename(dict(zip(df.columns, [f"column_{i + 1}" for i in range(df.width)])))
        if kind == "jsonl":
            return pl.read_ndjson(source, infer_schema_length=None)
        if kind == "json":
            try:
                return pl.read_json(source)
            except pl.exceptions.PolarsError:  # many ".json" files are JSON lines
                if isinstance(source, io.BytesIO):
                    source.seek(0)
                return pl.read_ndjson(source, infer_schema_length=None)
        return pl.read_parquet(source)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError, EOFError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        bad_line = _bad_json_line(source, path) if kind in ("jsonl", "json") else None
        if bad_line is not None:
            number, problem = bad_line
            raise UserError(
                f"{key}: cannot read {path}: line {number} is not valid JSON ({problem}); fix line {number}"
                + (" (in a JSONL file each line is one JSON object)" if kind == "jsonl" else "")
            ) from None
        if "utf" in detail.lower() or isinstance(exc, UnicodeDecodeError):
            hint = "it is not UTF-8 text; save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        elif "empty" in detail.lower():
            hint = "point it at a file with a header and rows"
        else:
            hint = f"check that it is a valid {kind.upper()} file"
        raise UserError(f"{key}: cannot read {path}: {detail}; {hint}") from None


def _bad_json_line(source: Any, path: Path) -> tuple[int, str] | None:
    """The first line of a JSON-lines file that does not parse, with the parser's reason
    (Polars reports only a character offset within a chunk, often 0)."""
    try:
        data = source.getvalue() if isinstance(source, io.BytesIO) else path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if text.lstrip().startswith("["):  # one JSON document (an array of rows), not JSON lines
        try:
            json.loads(text)
        except ValueError as exc:
            return getattr(exc, "lineno", 1), f"{getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')}"
        return None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            return number, f"{getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')}"
        if not isinstance(value, dict):
            return number, f"a JSON {type(value).__name__}, not an object"
    return None


def parquet_class_names(path: Path) -> dict[str, list[str]]:
    """ClassLabel names that the `datasets` library stores in a Parquet file's metadata."""
    if file_kind(path) != "parquet" or path.name.lower().endswith(".gz"):
        return {}
    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        features = json.loads(meta.get(b"huggingface", b"{}")).get("info", {}).get("features", {})
    except Exception:  # no or foreign metadata: the labels stay as they are
        return {}
    return {
        col: [str(n) for n in f["names"]]
        for col, f in features.items()
        if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)
    }


def apply_class_names(df: pl.DataFrame, class_names: dict[str, list[str]]) -> pl.DataFrame:
    """Integer ClassLabel columns -> their names (-1, HF's 'no label', becomes null)."""
    exprs = [
        pl.col(col).replace_strict(dict(enumerate(names)), default=None, return_dtype=pl.Utf8)
        for col, names in class_names.items()
        if col in df.columns and df.schema[col].is_integer()
    ]
    return df.with_columns(exprs) if exprs else df


def load_hf(source: DataSource, key: str) -> pl.DataFrame:
    datasets = require("datasets")
    try:
        ds = datasets.load_dataset(source.hf_dataset, source.hf_config, split=source.split)
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        raise UserError(
            f"{key}: cannot load the Hugging Face dataset '{source.hf_dataset}' (split {source.split}): "
            f"{type(exc).__name__}; without hub access, download it elsewhere, save it as Parquet or CSV "
            f"and set {key}.path=FILE instead of hf_dataset"
        ) from None
    names = {col: list(f.names) for col, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    return apply_class_names(ds.to_polars(), {c: n for c, n in names.items() if c == source.label_column})


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
