"""The write-ahead completion log of a shard in progress, and which failed requests a resume
asks again.

Every chunk of finished requests is appended to an Arrow stream under `<shard>.log/` before
its rows count, so a killed process loses none of them; a resumed shard replays the log
through the same loop and asks the backend only for what is missing."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from localsynth.backends.base import Completion
from localsynth.generation.accept import matches
from localsynth.io import fsync_dir
from localsynth.schema import COMPLETION_SCHEMA

# ----------------------------------------------------------------------------- failed requests

_STATUS = re.compile(r"^\w+ (\d{3}):")
_TOO_LONG = re.compile(r"^prompt_too_long: (\d+) tokens, max_model_len is (\d+)")


def error_fix(error: str) -> str | None:
    """What to change so a failed request can succeed, or None when asking again may work
    (rate limits, timeouts, server errors, a lost engine). A request with a fix is permanent:
    the same request with the same settings fails the same way, so it is kept as a row with its
    reason and not asked again. Reads the errors of backends/vllm.py and backends/openai.py."""
    if m := _TOO_LONG.match(error):
        return (
            f"prompts are longer than max_model_len {m[2]}: set generator.vllm.max_model_len above the prompt length "
            f"plus sampling.max_tokens (it may change when resuming a run directory), or shorten the prompts"
        )
    if error.startswith("rejected:"):
        return "vLLM refused the request's parameters: fix generator.sampling (in a new --run-dir)"
    if error.startswith("missing choice (server ignored n)"):
        return "the server ignores n > 1: set generator.openai.use_n: false (in a new --run-dir)"
    status = _STATUS.match(error)
    if status and 400 <= int(status[1]) < 500 and int(status[1]) not in (408, 409, 429):
        return (
            "the server refused the request as malformed or too long: read the reasons in the rows' parse_error, then "
            "fix generator.sampling / generator.openai.extra_body or the prompts (in a new --run-dir), or serve a "
            "model with a longer context"
        )
    return None


def replay_error(error: str, max_model_len: int | None) -> bool:
    """Whether a logged failure is replayed on resume (a permanent one, still permanent with
    the current settings) rather than asked again."""
    if error_fix(error) is None:
        return False
    too_long = _TOO_LONG.match(error)
    # a raised max_model_len (a volatile setting) gives the prompts it now fits another chance
    return not (too_long and max_model_len is not None and max_model_len > int(too_long[1]))


# ----------------------------------------------------------------------------- completion log

_LOG_SCHEMA = pa.schema([
    ("id", pa.large_string()), ("raw_output", pa.large_string()), ("finish_reason", pa.large_string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("error", pa.large_string()),
])
assert _LOG_SCHEMA.names == list(COMPLETION_SCHEMA)


def _read_log_table(part: Path) -> pa.Table:
    """The whole record batches of one log part. An Arrow stream cut short by a kill (a batch
    half written) yields the batches before the cut; parquet parts come from older versions."""
    if part.suffix == ".parquet":
        return pl.read_parquet(part).to_arrow().cast(_LOG_SCHEMA)
    batches = []
    try:
        with open(part, "rb") as fh:
            reader = pa.ipc.open_stream(fh)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowException, OSError, EOFError):
        pass  # the cut: whatever came before it is whole
    return pa.Table.from_batches(batches, schema=_LOG_SCHEMA)


def read_log_part(part: Path) -> list[dict[str, Any]]:
    """The whole record batches of one log part, as rows (see `_read_log_table`)."""
    return _read_log_table(part).to_pylist()


_FIELDS = {"raw_output": "text", "finish_reason": "finish_reason", "prompt_tokens": "prompt_tokens",
           "completion_tokens": "completion_tokens", "error": "error"}


def completion_frame(ids: list[str] | pl.Series, completions: Sequence[Completion]) -> pl.DataFrame:
    """Finished requests as columns (COMPLETION_SCHEMA), as logged."""
    columns = {name: list(map(attrgetter(field), completions)) for name, field in _FIELDS.items()}
    return pl.DataFrame({"id": ids, **columns}, schema=COMPLETION_SCHEMA)


class CompletionLog:
    """Finished requests on disk, so a killed shard resumes without asking again.

    Each attempt appends to its own Arrow stream (`part-NNNNNN.arrows`), one record batch per
    chunk of completions as it arrives: a killed process loses none it has received. fsync (for
    a power loss or a node crash) follows each chunk with `flush_every_s: 0` (the default), or
    at most every `flush_every_s` seconds. A batch cut by a kill is dropped on reading: whole
    batches only, and anything missing is asked again.

    On reading, failures that asking again may fix are dropped (asked again); permanent ones
    (`replay(error)` true) are replayed as failed, so a rerun does not retry them forever. The
    finished requests stay columns (`table`, ~150 bytes a request), looked up a wave at a time."""

    def __init__(self, log_dir: Path, flush_every_s: float, replay: Callable[[str], bool] | None = None):
        self.dir = log_dir
        self.flush_every_s = flush_every_s
        self.last_sync = time.monotonic()
        self._file = self._writer = None
        self._unsynced = False
        parts = sorted(p for p in log_dir.glob("part-*") if p.suffix in (".arrows", ".parquet")) if log_dir.is_dir() else []
        self.next_part = 1 + max((int(p.stem.split("-")[1]) for p in parts), default=-1)
        logged = pl.from_arrow(pa.concat_tables([_read_log_table(p) for p in parts])) if parts else pl.DataFrame(schema=COMPLETION_SCHEMA)
        # A request's answer is its last success; failing that its first permanent failure
        # (retryable ones are asked again).
        errors = logged["error"].drop_nulls().unique().to_list()
        replayed = [e for e in errors if replay is not None and replay(e)]
        ok = logged.filter(pl.col("error").is_null()).unique("id", keep="last", maintain_order=True)
        failed = logged.filter(pl.col("error").is_in(replayed)).unique("id", keep="first", maintain_order=True)
        self.table = pl.concat([ok, failed.join(ok, on="id", how="anti")]).with_columns(_logged=pl.lit(True))
        self._by_hash: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def cached(self) -> dict[str, Completion]:
        """The finished requests by id (for inspection; the run looks them up with `lookup`)."""
        return {
            row[0]: Completion(*row[1:]) for row in self.table.select(_LOG_SCHEMA.names).iter_rows()
        }

    def lookup(self, ids: pl.Series) -> pl.DataFrame:
        """The logged completions of `ids`, in their order (`_logged` null where none is).
        Found through sorted hashes of the logged ids (built once, equality checked), so a wave
        costs its own size, not a join against the whole log (measured: 10^6 logged requests,
        16 waves)."""
        if self._by_hash is None:
            hashes = self.table["id"].hash(seed=3).to_numpy()
            order = np.argsort(hashes)
            self._by_hash = hashes[order], order
            self._with_none = pl.concat([self.table, pl.DataFrame({"_logged": [None]}, schema={"_logged": pl.Boolean})], how="diagonal")
        pos, row = matches(*self._by_hash, ids.hash(seed=3).to_numpy())
        same = (ids.gather(pos) == self.table["id"].gather(row)).to_numpy()
        at = np.full(ids.len(), self.table.height, dtype=np.int64)  # the all-null last row: not logged
        at[pos[same]] = row[same]
        return self._with_none.gather(at).with_columns(id=ids)

    def add(self, entries: list[tuple[str, Completion]]) -> None:
        """Append a chunk of finished requests (written before this returns)."""
        if entries:
            self.add_frame(completion_frame([e[0] for e in entries], [e[1] for e in entries]))

    def add_frame(self, frame: pl.DataFrame) -> None:
        """Append a chunk of finished requests, one record batch (written before this returns)."""
        if self._writer is None:
            self._open()
        table = frame.to_arrow()
        if table.schema != _LOG_SCHEMA:  # Polars' types are the log's: the cast (and the ~50 ms
            table = table.cast(_LOG_SCHEMA)  # import of pyarrow.compute) is only for other frames
        for batch in table.to_batches():
            self._writer.write_batch(batch)
        self._file.flush()  # in the OS now: a killed process loses nothing
        self._unsynced = True
        if time.monotonic() - self.last_sync >= self.flush_every_s:
            self.flush()

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"part-{self.next_part:06d}.arrows"
        self.next_part += 1
        self._file = open(path, "xb")  # noqa: SIM115 (open for the whole attempt, closed in close())
        self._writer = pa.ipc.new_stream(self._file, _LOG_SCHEMA)
        fsync_dir(self.dir)

    def flush(self) -> None:
        """fsync what has been appended (a node crash or a power loss loses nothing before it)."""
        self.last_sync = time.monotonic()
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # the end-of-stream marker
            self.flush()
            self._file.close()
            self._file = self._writer = None

    def remove(self) -> None:
        self.close()
        if not self.dir.is_dir():
            return
        for part in self.dir.glob("*"):
            part.unlink()
        self.dir.rmdir()

