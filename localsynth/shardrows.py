"""What a shard writes besides its conversations: row columns built through Arrow, the shard's
stats, and the summary of requests that failed for good."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from localsynth.config import GenerateConfig
from localsynth.rundir import error_fix

if TYPE_CHECKING:
    from localsynth.generate import Planned, ShardGenerator

FAILED, INVALID = "request_failed", "request_invalid"  # parse_error prefixes: asking again may work / cannot

def style_json(planned: list[Planned], attributes: dict[str, list[str]]) -> pl.Series:
    """Each row's style attributes as a JSON object, encoded column-wise by Polars."""
    if not attributes:
        return pl.Series(["{}"] * len(planned), dtype=pl.Utf8)
    columns = pl.DataFrame({name: [p.style[name] for p in planned] for name in attributes}, schema=dict.fromkeys(attributes, pl.Utf8))
    return columns.select(pl.struct(pl.all()).struct.json_encode())[:, 0]


def _offsets(lists: list[list]) -> pa.Array:
    return pa.array(list(itertools.accumulate((len(x) for x in lists), initial=0)), type=pa.int32())


def string_lists(lists: list[list[str]]) -> pl.Series:
    """A List(Utf8) column built through Arrow: polars' per-row conversion of nested Python
    values costs ~100x more (measured in bench/bench_pipeline.py)."""
    flat = pa.array([s for x in lists for s in x], type=pa.large_utf8())
    return pl.Series(pa.LargeListArray.from_arrays(_offsets(lists).cast(pa.int64()), flat))


def message_lists(lists: list[list[dict[str, str]]]) -> pl.Series:
    """A List(Struct{role, content}) column, built through Arrow for the same reason."""
    roles = pa.array([m["role"] for x in lists for m in x], type=pa.large_utf8())
    contents = pa.array([m["content"] for x in lists for m in x], type=pa.large_utf8())
    structs = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return pl.Series(pa.LargeListArray.from_arrays(_offsets(lists).cast(pa.int64()), structs))


def summarize(df: pl.DataFrame, gen: ShardGenerator, seconds: float, from_log: int, cfg: GenerateConfig) -> dict[str, Any]:
    dropped = Counter()
    for reason in df["parse_error"].drop_nulls().to_list():
        dropped[reason.split(":")[0]] += 1
    dropped.update(df["filter_reason"].drop_nulls().to_list())
    prompt = int(df["prompt_tokens"].sum() or 0)
    completion = int(df["completion_tokens"].sum() or 0)
    kept = {label: gen.kept[label] for label in cfg.labels}
    shortfall = {label: gen.targets[label] - kept[label] for label in cfg.labels if kept[label] < gen.targets[label]}
    stats = {
        "shard": str(gen.shard),
        "task": cfg.task.name,
        "mode": cfg.mode,
        "backend": cfg.generator.backend,
        "requests": df.height,
        "requests_from_log": from_log,
        "kept": sum(kept.values()),
        "target_per_label": gen.targets,
        "kept_per_label": kept,
        "shortfall_per_label": shortfall,
        "dropped": dict(sorted(dropped.items())),
        "rounds": gen.rounds,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(completion / seconds, 2) if seconds > 0 else None,
        "samples_per_s": round((df.height - from_log) / seconds, 2) if seconds > 0 else None,
    }
    price = cfg.generator.pricing
    priced = price.input_per_million is not None or price.output_per_million is not None
    if priced and cfg.generator.backend == "openai":  # local engines cost compute time, not token prices
        stats["cost_usd"] = round(
            prompt / 1e6 * (price.input_per_million or 0) + completion / 1e6 * (price.output_per_million or 0), 6
        )
    return stats


def invalid_summary(rows: pl.DataFrame) -> str | None:
    """What made requests fail for good and what to change, grouped by cause (None: none did)."""
    errors = rows["parse_error"].drop_nulls()
    errors = errors.filter(errors.str.starts_with(f"{INVALID}:")).str.strip_prefix(f"{INVALID}: ").to_list()
    if not errors:
        return None
    by_fix: dict[str, list[str]] = {}
    for error in errors:
        by_fix.setdefault(error_fix(error) or "", []).append(error)
    parts = []
    for fix, group in by_fix.items():
        longest = [int(m[1]) for e in group if (m := re.match(r"prompt_too_long: (\d+) tokens", e))]
        example = f"longest prompt {max(longest)} tokens" if longest else group[0][:160]
        parts.append(f"{len(group)} x '{group[0].split(':')[0]}' ({example}): {fix}")
    return (
        f"{len(errors)} requests can never succeed with these settings, so they are kept as rows with parse_error "
        f"'{INVALID}: ...' and not asked again: " + "; ".join(parts)
    )
