"""The record schemas: one Polars schema for synthetic rows, one for the completion log.

A synthetic row keeps everything needed to audit it: the exact messages sent, the raw output,
why it was dropped (if it was), and where it came from.
"""

from __future__ import annotations

import polars as pl

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})

# What a backend returned for one request. The write-ahead log of a shard in progress holds
# only these: requests are re-planned deterministically on resume, outputs are not re-asked.
COMPLETION_SCHEMA = {
    "id": pl.Utf8,
    "raw_output": pl.Utf8,
    "finish_reason": pl.Utf8,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "error": pl.Utf8,
}

ROW_SCHEMA = {
    "id": pl.Utf8,
    "task": pl.Utf8,
    "label": pl.Utf8,
    "text": pl.Utf8,
    "cut_at_sentence": pl.Boolean,
    "kept": pl.Boolean,
    "parse_error": pl.Utf8,
    "filter_reason": pl.Utf8,
    "mode": pl.Utf8,
    "round": pl.Int32,
    "conversation": pl.Int64,
    "turn": pl.Int32,
    "style": pl.Utf8,
    "examples": pl.List(pl.Utf8),
    "messages": pl.List(MESSAGE),
    "raw_output": pl.Utf8,
    "finish_reason": pl.Utf8,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "model": pl.Utf8,
    "backend": pl.Utf8,
    "seed": pl.Int64,
    "shard": pl.Utf8,
}


def validate_rows(df: pl.DataFrame) -> list[str]:
    """Problems with a synthetic-rows frame (empty list: valid)."""
    problems = []
    for name, dtype in ROW_SCHEMA.items():
        if name not in df.columns:
            problems.append(f"missing column '{name}'")
        elif df.schema[name] != dtype:
            problems.append(f"column '{name}' is {df.schema[name]}, expected {dtype}")
    if not problems:
        if df["id"].n_unique() != df.height:
            problems.append("duplicate ids")
        bad = df.filter(pl.col("kept") & (pl.col("text").is_null() | pl.col("filter_reason").is_not_null()))
        if bad.height:
            problems.append(f"{bad.height} kept rows without text or with a filter reason")
    return problems
