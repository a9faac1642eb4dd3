"""Pipeline overhead: plan, render prompts, clean, filter, dedup and write 100,000 requests
with an instant backend (no model), so every second measured is localsynth's own.

Baselines in the same run, on the same rows: (a) the naive way to store them, Python objects
handed to Polars and written to Parquet, with no planning or filtering at all; (b) the bare
Parquet write of the finished frame, the floor no pipeline avoids.

    python bench/bench_pipeline.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from importlib import metadata
from pathlib import Path

import polars as pl
from machine import cpu_name

from localsynth.backends.base import Completion
from localsynth.config import load_generate_config
from localsynth.generate import run_generate
from localsynth.rundir import Shard, ShardPaths


class InstantBackend:
    """Answers every request at once with a pre-made, varied text (random words)."""

    name, model_name = "instant", "instant"

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.next = 0

    def load(self):
        pass

    def generate(self, requests, sampling):
        start = self.next
        self.next += len(requests)
        yield [(i, Completion(self.texts[start + i], "stop", 60, 20)) for i in range(len(requests))]

    def close(self):
        pass


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    return [" ".join(rng.choices(vocab, k=rng.randint(8, 30))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    n = args.requests
    texts = make_texts(int(n * 1.1) + 1000)
    per_label = n // 2
    overrides = [
        "task=sms_spam",
        f"quota.per_label={per_label}",
        "quota.overgenerate=1.0",
        "progress=off",
        "flush_every_s=1000",
        "task.conversation.turns=1",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_generate_config(None, overrides + [f"run_dir={tmp}/run"])
        start = time.perf_counter()
        stats = run_generate(cfg, Shard(0, 1), Path(tmp) / "run", backend=InstantBackend(texts))
        pipeline_s = time.perf_counter() - start
        rows = pl.read_parquet(ShardPaths(Path(tmp) / "run", Shard(0, 1)).rows)

        python_rows = rows.to_dict(as_series=False)
        start = time.perf_counter()  # (a) naive: Python objects -> Polars -> Parquet
        pl.DataFrame(python_rows, schema=rows.schema).write_parquet(Path(tmp) / "naive.parquet", compression="zstd")
        naive_s = time.perf_counter() - start
        start = time.perf_counter()  # (b) the floor: the finished frame written
        rows.write_parquet(Path(tmp) / "floor.parquet", compression="zstd")
        floor_s = time.perf_counter() - start

    print(f"machine: {cpu_name()}, {__import__('os').cpu_count()} cores, {platform.system()} {platform.release()}")
    print(f"versions: python {platform.python_version()}, polars {metadata.version('polars')}, numpy {metadata.version('numpy')}")
    print(f"requests: {stats['requests']}, kept: {stats['kept']}, dropped: {stats['dropped']}")
    print(f"pipeline (plan + render + clean + filter + dedup + write): {pipeline_s:.2f} s = {stats['requests'] / pipeline_s:,.0f} samples/s")
    print(f"(a) naive store of the same rows (Python objects -> Polars -> Parquet): {naive_s:.2f} s = {stats['requests'] / naive_s:,.0f} samples/s")
    print(f"(b) Parquet write of the finished frame: {floor_s:.2f} s = {stats['requests'] / floor_s:,.0f} samples/s")
    print(f"pipeline speed / naive store speed: {naive_s / pipeline_s:.2f}x; pipeline time / bare write: {pipeline_s / floor_s:.1f}x")


if __name__ == "__main__":
    main()
