"""Pipeline overhead: plan, render prompts, clean, filter, dedup and write 100,000 requests
with an instant backend (no model), so every second measured is localsynth's own.

Baselines in the same run, on the same rows: (a) the naive way to store them, Python objects
handed to Polars and written to Parquet, with no planning or filtering at all; (b) the bare
Parquet write of the finished frame, the floor no pipeline avoids.

`--sizes 10000,100000,1000000` measures how the cost grows instead, each size in fresh
processes: overhead seconds (and against the bare write of the same rows), peak memory, the
completion log's size, and the time to resume a shard killed (os._exit, as kill -9) once 90%
of its requests were logged; the resumed shard's rows are checked against the uninterrupted
run's. `--keep 0.1` makes ~90% of the answers exact repeats of earlier ones: memory then
shows what a shard holds besides the kept rows' duplicate index.

    python bench/bench_pipeline.py [--requests 100000] [--sizes 10000,100000,1000000 [--keep 0.1]]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import polars as pl
from machine import cpu_name

from localsynth.backends.base import Completion
from localsynth.generation.config import load_generate_config
from localsynth.generation.run import generate_shard
from localsynth.generation.rundir import Shard, ShardPaths


class InstantBackend:
    """Answers every request at once with a pre-made, varied text (random words), in the order
    asked: a resumed run that starts at the first request not logged gets the same texts.
    `die_after`: exit like a kill -9 once that many answers were yielded (and so logged)."""

    name, model_name = "instant", "instant"

    def __init__(self, texts: list[str], start: int = 0, chunk: int | None = None, die_after: int | None = None):
        # the answers are made here, before the clock starts: what is timed is localsynth's work
        self.answers = [Completion(text, "stop", 60, 20) for text in texts]
        self.next, self.chunk, self.die_after = start, chunk, die_after

    def load(self):
        pass

    def generate(self, requests, sampling):
        size = self.chunk or len(requests)
        for first in range(0, len(requests), size):
            if self.die_after is not None and self.next >= self.die_after:
                os._exit(137)  # the chunks before were logged: a kill -9 right after them
            start, count = self.next, min(size, len(requests) - first)
            self.next += count
            yield list(zip(range(first, first + count), self.answers[start : start + count], strict=True))

    def close(self):
        pass


def make_texts(n: int, seed: int = 0, keep: float = 1.0) -> list[str]:
    """n answers; with keep < 1, each is a new text with probability `keep` and otherwise an
    exact repeat of an earlier one (dropped as a duplicate), so about that share is kept."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    texts: list[str] = []
    for _ in range(n):
        fresh = keep >= 1.0 or len(texts) < 2 or rng.random() < keep
        texts.append(" ".join(rng.choices(vocab, k=rng.randint(8, 30))) if fresh else texts[rng.randrange(len(texts))])
    return texts


def config(n: int, run_dir: Path, keep: float = 1.0):
    # with repeats, the quota is not met: no top-up rounds, so a shard is exactly n requests
    return load_generate_config(None, [
        "task=sms_spam",
        f"quota.per_label={n // 2}",
        "quota.overgenerate=1.0",
        *(["quota.max_topup_rounds=0"] if keep < 1.0 else []),
        "progress=off",
        "flush_every_s=1000",
        "task.conversation.turns=1",
        f"run_dir={run_dir}",
    ])


def header() -> None:
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    versions = ", ".join(f"{m} {metadata.version(m)}" for m in ("polars", "pyarrow", "numpy"))
    print(f"versions: python {platform.python_version()}, {versions}; load average at start {os.getloadavg()[0]:.2f}")


def overhead(n: int) -> None:
    texts = make_texts(int(n * 1.1) + 1000)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(n, Path(tmp) / "run")
        backend = InstantBackend(texts)  # its answers made before the clock starts
        gc.collect()  # and collected: the clock starts with no collection pending
        start = time.perf_counter()
        stats = generate_shard(cfg, Shard(0, 1), Path(tmp) / "run", backend=backend)
        pipeline_s = time.perf_counter() - start
        rows = pl.read_parquet(ShardPaths(Path(tmp) / "run", Shard(0, 1)).rows)

        python_rows = rows.to_dict(as_series=False)
        start = time.perf_counter()  # (a) naive: Python objects -> Polars -> Parquet
        pl.DataFrame(python_rows, schema=rows.schema).write_parquet(Path(tmp) / "naive.parquet", compression="zstd")
        naive_s = time.perf_counter() - start
        start = time.perf_counter()  # (b) the floor: the finished frame written
        rows.write_parquet(Path(tmp) / "floor.parquet", compression="zstd")
        floor_s = time.perf_counter() - start

    header()
    print(f"requests: {stats['requests']}, kept: {stats['kept']}, dropped: {stats['dropped']}")
    print(f"pipeline (plan + render + clean + filter + dedup + write): {pipeline_s:.2f} s = {stats['requests'] / pipeline_s:,.0f} samples/s")
    print(f"(a) naive store of the same rows (Python objects -> Polars -> Parquet): {naive_s:.2f} s = {stats['requests'] / naive_s:,.0f} samples/s")
    print(f"(b) Parquet write of the finished frame: {floor_s:.2f} s = {stats['requests'] / floor_s:,.0f} samples/s")
    print(f"pipeline speed / naive store speed: {naive_s / pipeline_s:.2f}x; pipeline time / bare write: {pipeline_s / floor_s:.1f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fingerprint(path: Path) -> str:
    """The rows' content, whatever the file's layout (row groups, chunks)."""
    return hashlib.sha256(pl.read_parquet(path).sort("id").hash_rows(seed=0).to_numpy().tobytes()).hexdigest()


def scale_step(step: str, n: int, run_dir: Path, keep: float) -> dict:
    """One measurement in this (fresh) process: 'full', 'kill' (dies at 90%) or 'resume'."""
    texts = make_texts(int(n * 1.1) + 1000, keep=keep)
    from localsynth.generation.completions import CompletionLog

    log_bytes = {}
    remove = CompletionLog.remove

    def measured_remove(self):  # the log's size just before a finished shard removes it
        log_bytes["bytes"] = sum(p.stat().st_size for p in self.dir.glob("*")) if self.dir.is_dir() else 0
        remove(self)

    CompletionLog.remove = measured_remove
    paths = ShardPaths(run_dir, Shard(0, 1))
    logged = CompletionLog(paths.log_dir, 1000).table.height if step == "resume" else 0
    chunk = max(n // 100, 1)
    backend = InstantBackend(texts, start=logged, chunk=chunk, die_after=int(n * 0.9) if step == "kill" else None)
    base = _rss_mib()
    start = time.perf_counter()
    stats = generate_shard(config(n, run_dir, keep), Shard(0, 1), run_dir, backend=backend)
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "peak_mib": _peak_mib(), "base_mib": base, "log_bytes": log_bytes.get("bytes"),
           "from_log": stats["requests_from_log"], "requests": stats["requests"], "kept": stats["kept"],
           "rows": _fingerprint(paths.rows)}
    rows = pl.read_parquet(paths.rows)
    start = time.perf_counter()
    rows.write_parquet(run_dir / "floor.parquet", compression="zstd")
    out["bare_write_s"] = time.perf_counter() - start
    return out


def _child(step: str, n: int, run_dir: Path, keep: float) -> dict | None:
    done = subprocess.run([sys.executable, __file__, "--step", step, "--requests", str(n), "--run-dir", str(run_dir), "--keep", str(keep)],
                          capture_output=True, text=True)
    if step == "kill":
        assert done.returncode == 137, done.stderr[-2000:]
        return None
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaling(sizes: list[int], keep: float) -> None:
    header()
    print(f"answers kept: {'all' if keep >= 1 else f'about {keep:.0%} (the others exact repeats)'}")
    print(f"{'requests':>10} {'kept':>9} {'overhead s':>10} {'samples/s':>10} {'x bare write':>12} {'peak MiB':>9} {'+ over start':>12} "
          f"{'log MiB':>8} {'log B/req':>9} {'resume s':>9} {'resume peak MiB':>15} {'same rows':>9} {'load':>5}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            full = _child("full", n, Path(tmp) / "full", keep)
            _child("kill", n, Path(tmp) / "killed", keep)
            resumed = _child("resume", n, Path(tmp) / "killed", keep)
        print(f"{n:>10,} {full['kept']:>9,} {full['seconds']:>10.2f} {n / full['seconds']:>10,.0f} {full['seconds'] / full['bare_write_s']:>12.1f} "
              f"{full['peak_mib']:>9.0f} {full['peak_mib'] - full['base_mib']:>12.0f} {full['log_bytes'] / 2**20:>8.1f} "
              f"{full['log_bytes'] / n:>9.0f} {resumed['seconds']:>9.2f} {resumed['peak_mib']:>15.0f} "
              f"{'yes' if resumed['rows'] == full['rows'] else 'NO':>9} {os.getloadavg()[0]:>5.2f}", flush=True)
        assert resumed["from_log"] >= int(n * 0.9) - max(n // 100, 1), resumed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--sizes", help="comma-separated request counts: measure how the cost grows")
    parser.add_argument("--keep", type=float, default=1.0, help="with --sizes: the share of answers that are new texts")
    parser.add_argument("--step", choices=["full", "kill", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(scale_step(args.step, args.requests, args.run_dir, args.keep)))
    elif args.sizes:
        scaling([int(x) for x in args.sizes.split(",")], args.keep)
    else:
        overhead(args.requests)


if __name__ == "__main__":
    main()
