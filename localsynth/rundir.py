"""The run directory contract.

    run_dir/config.yaml                   resolved config, written before any work
    run_dir/environment/<shard>.json      versions, git sha, host, SLURM ids of each attempt
    run_dir/shards/<shard>.parquet        the rows, written atomically
    run_dir/shards/<shard>.stats.json     requests, kept, dropped by reason, tokens, seconds
    run_dir/shards/<shard>.done           completion marker, written last
    run_dir/shards/<shard>.log/           write-ahead log of finished requests while in progress

A shard is `index/count`: a laptop runs 0/1, a SLURM array task `$SLURM_ARRAY_TASK_ID/N`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from localsynth.backends.base import Completion
from localsynth.errors import UserError
from localsynth.io import (
    os_error_message,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from localsynth.runinfo import environment
from localsynth.schema import COMPLETION_SCHEMA
from localsynth.secrets import redact_data

# Settings that change how a run reports, not what it produces: free to differ on resume.
VOLATILE_KEYS = ("progress", "log_every_s", "flush_every_s", "run_dir")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
            raise UserError(f"--shard must be INDEX/COUNT with 0 <= INDEX < COUNT (for example 0/4); got '{text}'")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def share(self, total: int) -> int:
        """This shard's part of `total`; the parts of all shards add up to `total`."""
        return total // self.count + (1 if self.index < total % self.count else 0)


class ShardPaths:
    def __init__(self, run_dir: Path, shard: Shard):
        self.run_dir = run_dir
        base = run_dir / "shards" / shard.name
        self.rows = base.with_suffix(".parquet")
        self.stats = base.with_suffix(".stats.json")
        self.done = base.with_suffix(".done")
        self.log_dir = base.with_suffix(".log")
        self.environment = run_dir / "environment" / f"{shard.name}.json"
        self.config = run_dir / "config.yaml"


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in VOLATILE_KEYS}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def has_output(run_dir: Path) -> bool:
    """Whether any shard has produced anything (rows, a marker or logged requests)."""
    shards = run_dir / "shards"
    if not shards.is_dir():
        return False
    return any(any(shards.glob(pattern)) for pattern in ("*.done", "*.parquet", "*.log/part-*.parquet"))


def check_config(paths: ShardPaths, config: dict[str, Any]) -> None:
    """Refuse to mix configurations in one run directory once it holds output: resumed
    requests would be attached to different prompts. config.yaml holds the config with its
    secrets masked, so the new one is compared masked too."""
    if not paths.config.is_file() or not has_output(paths.run_dir):
        return
    existing = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
    old, new = _flatten(comparable(existing)), _flatten(comparable(redact_data(config)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        raise UserError(
            f"{paths.run_dir} holds a run made with a different configuration (changed: "
            f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}); use a new --run-dir, "
            f"or restore those settings to resume it"
        )


def prepare(paths: ShardPaths, config: dict[str, Any]) -> None:
    """Write the resolved config (checked by `check_config` first) and this attempt's
    environment, before any work. A directory with no output yet takes the new config, so a
    first attempt that failed on bad input does not lock it."""
    check_config(paths, config)
    try:
        if not paths.config.is_file() or not has_output(paths.run_dir):
            write_text_atomic(paths.config, yaml.safe_dump(redact_data(config), sort_keys=False, allow_unicode=True))
        write_json_atomic(paths.environment, environment())
    except OSError as exc:
        message = os_error_message(exc, "run_dir (--run-dir)")
        if message is None:
            raise
        raise UserError(message) from None


class CompletionLog:
    """Finished requests on disk, so a killed shard resumes without asking again.

    Parts are written atomically, so a kill leaves whole parts only; anything not yet flushed
    is simply asked for again."""

    def __init__(self, log_dir: Path, flush_every_s: float):
        self.dir = log_dir
        self.flush_every_s = flush_every_s
        self.cached: dict[str, Completion] = {}
        self.pending: list[tuple[str, Completion]] = []
        self.last_flush = time.monotonic()
        parts = sorted(log_dir.glob("part-*.parquet")) if log_dir.is_dir() else []
        self.next_part = len(parts)
        for part in parts:
            for row in pl.read_parquet(part).iter_rows(named=True):
                if row["error"] is not None:
                    continue  # a failed request is asked again on resume, not replayed as failed
                self.cached[row["id"]] = Completion(
                    row["raw_output"], row["finish_reason"], row["prompt_tokens"], row["completion_tokens"], row["error"]
                )

    def add(self, entries: list[tuple[str, Completion]]) -> None:
        self.pending.extend(entries)
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        columns = {name: [] for name in COMPLETION_SCHEMA}
        for request_id, c in self.pending:
            columns["id"].append(request_id)
            columns["raw_output"].append(c.text)
            columns["finish_reason"].append(c.finish_reason)
            columns["prompt_tokens"].append(c.prompt_tokens)
            columns["completion_tokens"].append(c.completion_tokens)
            columns["error"].append(c.error)
        part = self.dir / f"part-{self.next_part:06d}.parquet"
        write_parquet_atomic(pl.DataFrame(columns, schema=COMPLETION_SCHEMA), part)
        self.next_part += 1
        self.pending.clear()

    def remove(self) -> None:
        if not self.dir.is_dir():
            return
        for part in self.dir.glob("*"):
            part.unlink()
        self.dir.rmdir()
