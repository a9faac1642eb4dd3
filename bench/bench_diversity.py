"""Diversity measures at scale: localsynth's blocked / closed-form computations against the
naive full pairwise matrix (scikit-learn `pairwise_distances`) where that fits in memory, and
against scikit-learn's own memory-bounded `pairwise_distances_chunked` where it does not.

Random 384-dimensional float32 embeddings (all-MiniLM-L6-v2's width), seeded. Every line runs
in a fresh process so that its peak memory (ru_maxrss) is its own; "extra MiB" is that peak
minus the process's resident size just before the measured call (the input array included in
the latter), so it is what the computation itself added.

    python bench/bench_diversity.py [--sizes 10000,100000] [--rc-cosine-sizes 10000,100000,1000000]
                                    [--block-size 4096] [--device cpu] [--no-chunked]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from machine import cpu_name

DIM = 384
RAM_FRACTION = 0.6  # run the naive full matrix only when it needs at most this share of RAM


def total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Written slab by slab straight into float32: no float64 copy to inflate the baseline."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 65536):
        x[start : start + 65536] = rng.standard_normal((min(65536, n - start), DIM), dtype=np.float32)
    return x


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- one measurement


def naive(measure: str, x: np.ndarray) -> float:
    from sklearn.metrics import pairwise_distances

    metric = measure.split("-")[1]
    d = pairwise_distances(x, metric=metric)
    n = len(x)
    if measure.startswith("rc"):
        return float(d.sum(dtype=np.float64)) / (n * (n - 1))
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean(dtype=np.float64))


def chunked(measure: str, x: np.ndarray) -> float:
    """scikit-learn's memory-bounded way: rows of the distance matrix in chunks (working_memory
    1 GiB, its default), each reduced at once; no symmetry used."""
    from sklearn.metrics import pairwise_distances_chunked

    metric = measure.split("-")[1]
    n = len(x)

    def reduce(d, start):  # one value per row of the chunk
        if measure.startswith("rc"):
            return d.sum(axis=1, dtype=np.float64)
        d[np.arange(len(d)), start + np.arange(len(d))] = np.inf
        return d.min(axis=1).astype(np.float64)

    total = sum(float(part.sum()) for part in pairwise_distances_chunked(x, metric=metric, reduce_func=reduce))
    return total / (n * (n - 1)) if measure.startswith("rc") else total / n


def ours(measure: str, x: np.ndarray, block_size: int, device: str) -> float:
    from localsynth.analysis import diversity as dv
    kind, metric = measure.split("-")
    fn = dv.remote_clique if kind == "rc" else dv.chamfer
    return fn(x, metric, block_size=block_size, device=device)


def one(measure: str, impl: str, n: int, block_size: int, device: str) -> dict:
    # Libraries imported before the baseline: their code is not the measure's memory.
    import sklearn.metrics  # noqa: F401
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x = embeddings(n)
    if impl == "localsynth":  # a warm-up on a small slice: first-call set-up is not the measure
        ours(measure, x[:256], block_size, device)
    before = rss_bytes()
    started = time.perf_counter()
    if impl == "naive":
        value = naive(measure, x)
    elif impl == "chunked":
        value = chunked(measure, x)
    else:
        value = ours(measure, x, block_size, device)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "extra_mib": max(peak - before, 0) / 2**20, "value": value}


# ----------------------------------------------------------------------------- the table


def run_one(measure: str, impl: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--one", measure, impl, str(n), "--block-size", str(args.block_size), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000", help="N for Remote-Clique (Euclidean) and Chamfer")
    parser.add_argument("--rc-cosine-sizes", default="10000,100000,1000000", help="N for Remote-Clique (cosine)")
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--measures", default="rc-cosine,chamfer-cosine,chamfer-euclidean,rc-euclidean")
    parser.add_argument("--no-chunked", action="store_true", help="skip sklearn's chunked baseline")
    parser.add_argument("--one", nargs=3, metavar=("MEASURE", "IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure, impl, n = args.one
        print(json.dumps(one(measure, impl, int(n), args.block_size, args.device)))
        return

    import torch

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {total_ram() / 2**30:.0f} GiB, {platform.system()} {platform.release()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"scikit-learn {metadata.version('scikit-learn')}, scipy {metadata.version('scipy')}")
    print(f"embeddings: N x {DIM} float32, standard normal, seed 0; block size {args.block_size}; device {args.device}; "
          f"torch threads {os.cpu_count()}")
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f}\n")
    header = f"{'measure':<18} {'N':>9} {'impl':<11} {'seconds':>9} {'extra MiB':>10} {'naive/ours':>11}  value"
    print(header)
    print("-" * len(header))
    for measure in args.measures.split(","):
        sizes = args.rc_cosine_sizes if measure == "rc-cosine" else args.sizes
        for n in (int(s) for s in sizes.split(",")):
            full_bytes = n * n * 4  # pairwise_distances keeps float32 input in float32
            impls = ["localsynth"]
            impls.append("naive" if full_bytes <= RAM_FRACTION * total_ram() else None)
            if not args.no_chunked and n <= 200_000 and (measure != "rc-cosine" or n <= 10_000):
                impls.append("chunked")
            base = None
            for impl in impls:
                if impl is None:
                    print(f"{measure:<18} {n:>9} {'naive':<11} {'-':>9} {'-':>10} {'':>11}  not run: the full matrix "
                          f"needs {full_bytes / 2**30:,.0f} GiB")
                    continue
                r = run_one(measure, impl, n, args)
                if "error" in r:
                    print(f"{measure:<18} {n:>9} {impl:<11} failed: {r['error']}")
                    continue
                if impl == "localsynth":
                    base = r
                ratio = f"{r['seconds'] / base['seconds']:.1f}x" if base and impl != "localsynth" else ""
                print(f"{measure:<18} {n:>9} {impl:<11} {r['seconds']:>9.2f} {r['extra_mib']:>10.0f} {ratio:>11}  "
                      f"{r['value']:.6f}", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
