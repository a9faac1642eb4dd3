"""What a shard writes: its rows streamed to Parquet, its stats, and the summary of requests
that failed for good."""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from localsynth.generation.completions import error_fix
from localsynth.generation.config import GenerateConfig
from localsynth.io import commit_file, temp_path

if TYPE_CHECKING:
    from localsynth.generation.run import ShardGenerator

FAILED, INVALID = "request_failed", "request_invalid"  # parse_error prefixes: asking again may work / cannot

class Tally:
    """What the shard's stats need from its rows, added up a wave at a time (the rows
    themselves are on their way to the Parquet file)."""

    def __init__(self):
        self.requests = self.from_log = self.prompt_tokens = self.completion_tokens = self.failed = 0
        self.dropped: Counter = Counter()
        self.invalid: list[str] = []  # parse errors of requests that can never succeed (few)

    def add(self, rows: pl.DataFrame, from_log: int) -> None:
        self.requests += rows.height
        self.from_log += from_log
        errors = rows["parse_error"].drop_nulls()
        self.dropped.update(dict(errors.str.split(":").list.first().value_counts().iter_rows()))
        self.dropped.update(dict(rows["filter_reason"].drop_nulls().value_counts().iter_rows()))
        self.prompt_tokens += int(rows["prompt_tokens"].sum() or 0)
        self.completion_tokens += int(rows["completion_tokens"].sum() or 0)
        self.failed += int(errors.str.starts_with(f"{FAILED}:").sum())
        self.invalid += errors.filter(errors.str.starts_with(f"{INVALID}:")).to_list()


def summarize(tally: Tally, gen: ShardGenerator, seconds: float, cfg: GenerateConfig) -> dict[str, Any]:
    dropped, prompt, completion = tally.dropped, tally.prompt_tokens, tally.completion_tokens
    kept = {label: gen.kept[label] for label in cfg.labels}
    shortfall = {label: gen.targets[label] - kept[label] for label in cfg.labels if kept[label] < gen.targets[label]}
    stats = {
        "shard": str(gen.shard),
        "task": cfg.task.name,
        "mode": cfg.mode,
        "backend": cfg.generator.backend,
        "requests": tally.requests,
        "requests_from_log": tally.from_log,
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
        "samples_per_s": round((tally.requests - tally.from_log) / seconds, 2) if seconds > 0 else None,
    }
    price = cfg.generator.pricing
    priced = price.input_per_million is not None or price.output_per_million is not None
    if priced and cfg.generator.backend == "openai":  # local engines cost compute time, not token prices
        stats["cost_usd"] = round(
            prompt / 1e6 * (price.input_per_million or 0) + completion / 1e6 * (price.output_per_million or 0), 6
        )
    return stats


def invalid_summary(errors: list[str]) -> str | None:
    """What made requests fail for good and what to change, grouped by cause (None: none did);
    `errors` are their parse errors."""
    errors = [e.removeprefix(f"{INVALID}: ") for e in errors]
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


# ----------------------------------------------------------------------------- shard rows

ROW_GROUP = 65_536  # rows per Parquet row group: memory per group, not per shard


class ShardWriter:
    """The shard's rows streamed to a temporary file as they are decided, one wave at a time,
    and renamed into place (fsynced) by `commit`: memory holds a wave, not the shard, and a
    reader still sees the whole shard or none of it. A temporary file left by a killed attempt
    is removed by the next one (which holds the shard lock).

    A wave is encoded and compressed on a background thread (pyarrow releases the GIL) while
    the next one is screened; at most one write is in flight, so waves reach the file in order."""

    def __init__(self, path: Path):
        self.path = path
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        self.tmp = temp_path(path)
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # a failed write raises here

    def write(self, rows: pl.DataFrame) -> None:
        self._wait()
        self._pending = self._pool.submit(self._write, rows)  # a frame is immutable: safe to hand over

    def _write(self, rows: pl.DataFrame) -> None:
        table = rows.to_arrow()  # (the conversion too runs beside the next wave)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=ROW_GROUP)

    def commit(self, empty: pl.DataFrame) -> None:
        """Close and rename into place; `empty` gives the schema of a shard without rows."""
        self._wait()  # (the writer opens with the first write, on the writing thread)
        if self._writer is None:
            self.write(empty)
            self._wait()
        self._writer.close()
        self._writer = None
        commit_file(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._wait()
        except Exception:  # noqa: BLE001 (the error that stopped the run is the one to report)
            pass
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._pool.shutdown()
        self.tmp.unlink(missing_ok=True)
