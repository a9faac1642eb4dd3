"""The run directory contract.

    run_dir/config.yaml                   resolved config, written before any work
    run_dir/environment/<shard>.json      versions, git sha, host, SLURM ids of each attempt
    run_dir/shards/<shard>.parquet        the rows, written atomically
    run_dir/shards/<shard>.stats.json     requests, kept, dropped by reason, tokens, seconds
    run_dir/shards/<shard>.done           completion marker, written last
    run_dir/shards/<shard>.log/           write-ahead log of finished requests while in progress
    run_dir/shards/<shard>.lock (.holder) one process per shard: the lock, and who holds it

The `.done` marker alone says a shard is finished: a `.log/` left beside it (a kill between the
marker and the log's removal) is a leftover that the next run of the shard removes.

A shard is `index/count`: a laptop runs 0/1, a SLURM array task `$SLURM_ARRAY_TASK_ID/N`.
Only this module knows the layout: training, the analyses, the audit and the study report read
a finished run through `read_kept` and `shard_stats`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from localsynth.errors import UserError
from localsynth.io import (
    os_error_message,
    write_json_atomic,
    write_text_atomic,
)
from localsynth.progress import log
from localsynth.runinfo import environment
from localsynth.secrets import redact_data

# Settings that change how a run reports or how fast it goes, not what it produces: free to
# differ on resume (dotted keys cover everything under them). Not hf.batch_size: the hf backend
# seeds each batch from its members' seeds and samples the batch together, so on the CPU the
# batch size decides the text of every request not yet logged (a resume with the same size
# replays the same batches). vllm.max_model_len only moves the prompt_too_long limit: requests
# refused under the old limit that fit the new one are asked again (see `replay_error`).
VOLATILE_KEYS = (
    "progress", "log_every_s", "flush_every_s", "run_dir",
    "generator.pricing",
    "generator.vllm.gpu_memory_utilization", "generator.vllm.cpu_kv_cache_gib", "generator.vllm.max_model_len",
    "generator.vllm.max_num_seqs", "generator.vllm.submit_chunk",
    "generator.openai.max_concurrency", "generator.openai.requests_per_minute", "generator.openai.tokens_per_minute",
    "generator.openai.timeout_s", "generator.openai.max_retries",
)


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
        self.lock = base.with_suffix(".lock")
        self.holder = base.with_suffix(".lock.holder")
        self.shard = shard
        self.environment = run_dir / "environment" / f"{shard.name}.json"
        self.config = run_dir / "config.yaml"


def is_volatile(key: str) -> bool:
    return any(key == v or key.startswith(f"{v}.") for v in VOLATILE_KEYS)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened settings that decide the rows (dotted keys)."""
    return {k: v for k, v in _flatten(config).items() if not is_volatile(k)}


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
    return any(any(shards.glob(pattern)) for pattern in ("*.done", "*.parquet", "*.log/part-*"))


def check_config(paths: ShardPaths, config: dict[str, Any]) -> None:
    """Refuse to mix configurations in one run directory once it holds output: resumed
    requests would be attached to different prompts. config.yaml holds the config with its
    secrets masked, so the new one is compared masked too."""
    if not paths.config.is_file() or not has_output(paths.run_dir):
        return
    existing = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
    old, new = comparable(existing), comparable(redact_data(config))
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
        # config.yaml keeps the first attempt's settings; what this attempt changed is here
        volatile = {k: v for k, v in _flatten(redact_data(config)).items() if is_volatile(k)}
        write_json_atomic(paths.environment, {**environment(), "settings": volatile})
    except OSError as exc:
        message = os_error_message(exc, "run_dir (--run-dir)")
        if message is None:
            raise
        raise UserError(message) from None


@contextmanager
def shard_lock(paths: ShardPaths) -> Iterator[None]:
    """Hold the shard's lock while working on it: two processes on one shard (a requeued job
    whose old copy still runs, a command started twice) would write the same log parts and
    overwrite each other's completions. The second one fails at once, naming the first.
    An OS lock (flock): released when its process dies, however it dies."""
    from filelock import FileLock, Timeout

    try:
        paths.lock.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(paths.lock))
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = json.loads(paths.holder.read_text(encoding="utf-8"))
            who = f"PID {holder['pid']} on host {holder['host']}, started {holder['started']}"
            stop = f"stop it first (kill {holder['pid']} on {holder['host']})"
        except (OSError, ValueError, KeyError, TypeError):
            who, stop = "a process that has just started", "stop it first"
        raise UserError(
            f"shard {paths.shard} of {paths.run_dir} is being generated by another process ({who}); wait for "
            f"it to finish, or {stop} and rerun: two processes on one shard overwrite each other's completions"
        ) from None
    except OSError as exc:
        message = os_error_message(exc, "run_dir (--run-dir)")
        if message is None:
            raise
        raise UserError(message) from None
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(paths.holder, {"host": socket.gethostname(), "pid": os.getpid(), "started": started})
        yield
    finally:
        paths.holder.unlink(missing_ok=True)  # before the release: never delete the next holder's file
        lock.release()


# ----------------------------------------------------------------------------- reading a finished run


_SHARD_NAME = re.compile(r"^(\d{5})-of-(\d{5})\.")


def finished_shards(run_dir: Path, key: str, allow_partial: bool) -> list[Path]:
    """The row files of a generation run's shards, refusing a run with unfinished shards unless
    `allow_partial`, and always one that mixes shard counts (its rows would count twice). A shard
    is finished when its `.done` marker exists: the marker is written last, and whatever stays
    beside it (a write-ahead log a kill left) is a leftover (GenerationRun.is_done agrees)."""
    shards = run_dir / "shards"
    if not shards.is_dir():
        raise UserError(f"{key}.run_dir: {run_dir} is not a generation run directory (no shards/); check the path")
    names: dict[int, set[int]] = {}
    for entry in shards.iterdir():
        if m := _SHARD_NAME.match(entry.name):
            names.setdefault(int(m[2]), set()).add(int(m[1]))
    if len(names) > 1:
        counts = ", ".join(f"{n} ({len(names[n])} shard(s) present)" for n in sorted(names))
        raise UserError(
            f"{key}.run_dir: {run_dir} holds shards of runs with different shard counts: {counts}; its rows would "
            f"be duplicated. Keep one set: move the other shards/*-of-<N>.* files to another run directory"
        )
    if not names:
        raise UserError(f"{key}.run_dir: {run_dir} has no finished shards; finish the generation run (localsynth generate) first")
    count = next(iter(names))
    paths = [ShardPaths(run_dir, Shard(i, count)) for i in range(count)]
    done = [p.rows for p in paths if p.done.is_file() and p.rows.is_file()]
    missing = [str(p.shard) for p in paths if not (p.done.is_file() and p.rows.is_file())]
    if not done or (missing and not allow_partial):
        listed = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        partial = "" if not done else (
            f"; or train on the {len(done)} finished shard(s) only with --allow-partial "
            f"(allow_partial: true on this synthetic source)"
        )
        raise UserError(
            f"{key}.run_dir: {run_dir} has {len(missing)} of {count} shards unfinished ({listed}); rerun the same "
            f"generate command with --shard INDEX/{count} for each (the run's config is saved in "
            f"{run_dir / 'config.yaml'}; on SLURM, resubmit the array), then train{partial}"
        )
    if missing:
        log(f"warning: {key}: training on {len(done)} of {count} shards of {run_dir} (--allow-partial); missing: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    return done


def read_kept(run_dir: Path, columns: list[str], key: str, allow_partial: bool = False) -> pl.DataFrame:
    """`columns` of the kept rows of a run's finished shards (see `finished_shards`): what
    training, the analyses and the audit read of a generation run."""
    files = finished_shards(run_dir, key, allow_partial)
    return pl.read_parquet(files, columns=[*dict.fromkeys([*columns, "kept"])]).filter("kept").select(columns)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "shards").is_dir()


def shard_stats(run_dir: Path) -> list[dict[str, Any]]:
    """The stats of each shard of a run that wrote them (finished or stopped short)."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((run_dir / "shards").glob("*.stats.json"))]
