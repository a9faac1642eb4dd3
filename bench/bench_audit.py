"""The audit of 100,000 synthetic rows with cached embeddings, against a naive all-pairs
contamination check, in one run.

Inputs are synthetic and seeded, and say so: texts of 15 words drawn from a 5,000-word
vocabulary, 4 labels; "cached embeddings" are random 384-dimensional float32 vectors (all-
MiniLM-L6-v2's width) with a per-label offset, so the logistic regression behind confident
learning has something to learn, and 10% of the labels flipped. A 5,000-row test set, of which
100 rows are planted in the synthetic set (34 exact copies with other case and punctuation,
33 with one word changed, 33 paraphrases that only the embedding shows). No LLM judge here: its
cost is the judge model's (see the audit README for a measured run on the study's sets).

Ours: `localsynth.audit` as `localsynth audit` runs it: exact keys, generation's MinHash LSH
index (`DedupIndex`) and blocked nearest-neighbour cosine (contamination); 5-fold logistic
regression into cleanlab (noise); within-label earlier-row cosine (semantic duplicates).

Naive: every (synthetic, test) pair compared in Python (normalised equality, word-set Jaccard)
and every pair's cosine (one synthetic row against all test rows per step; the full 100,000 x
5,000 float32 matrix would be 1.9 GiB more). It is timed on a sample of synthetic rows and
scaled linearly to 100,000 (its cost is exactly linear in the synthetic rows); its hits on the
sample are checked against ours.

    python bench/bench_audit.py [--rows 100000] [--test-rows 5000] [--naive-sample 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from importlib import metadata

import numpy as np
import polars as pl
from machine import cpu_name

DIM, VOCAB, WORDS, LABELS = 384, 5000, 15, ["a", "b", "c", "d"]
NEAR, COSINE, PLANTED = 0.8, 0.95, 100


def texts(rng: np.random.Generator, n: int) -> list[str]:
    ids = rng.integers(0, VOCAB, size=(n, WORDS))
    return [" ".join(f"w{i}" for i in row) for row in ids]


def make_inputs(rows: int, test_rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    label_ids = rng.integers(0, len(LABELS), rows)
    offsets = rng.standard_normal((len(LABELS), DIM), dtype=np.float32) * 0.15
    emb = rng.standard_normal((rows, DIM), dtype=np.float32) + offsets[label_ids] * np.sqrt(DIM) / 4
    flipped = rng.choice(rows, rows // 10, replace=False)
    label_ids[flipped] = (label_ids[flipped] + rng.integers(1, len(LABELS), flipped.size)) % len(LABELS)
    syn = texts(rng, rows)
    test = texts(rng, test_rows)
    test_emb = rng.standard_normal((test_rows, DIM), dtype=np.float32)
    planted = rng.choice(rows, PLANTED, replace=False)
    for k, pos in enumerate(planted):
        source = int(rng.integers(test_rows))
        words = test[source].split()
        if k % 3 == 0:
            syn[pos] = test[source].upper().replace(" ", ", ") + "!"
        elif k % 3 == 1:
            syn[pos] = " ".join(words[:-1] + ["changed"])
        emb[pos] = test_emb[source] + rng.standard_normal(DIM, dtype=np.float32) * 0.01
    rows_df = pl.DataFrame({"id": [f"s{i}" for i in range(rows)], "text": syn,
                            "label": [LABELS[i] for i in label_ids]})
    test_df = pl.DataFrame({"id": [f"t{i}" for i in range(test_rows)], "text": test})
    return rows_df, emb, test_df, test_emb, set(planted.tolist())


def naive_contamination(syn: list[str], emb: np.ndarray, test: list[str], test_emb: np.ndarray) -> list[bool]:
    from localsynth.audit.contamination import normalized

    norm_syn, norm_test = normalized(pl.Series(syn)).to_list(), normalized(pl.Series(test)).to_list()
    test_sets = [frozenset(t.split()) for t in norm_test]
    unit_test = test_emb / np.linalg.norm(test_emb, axis=1, keepdims=True)
    hits = []
    for i, key in enumerate(norm_syn):
        words = frozenset(key.split())
        hit = False
        for t, t_words in zip(norm_test, test_sets):
            if key == t or len(words & t_words) / len(words | t_words) >= NEAR:
                hit = True
        v = emb[i] / np.linalg.norm(emb[i])
        hit = hit or bool(((unit_test @ v) >= COSINE).any())
        hits.append(hit)
    return hits


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--test-rows", type=int, default=5_000)
    parser.add_argument("--naive-sample", type=int, default=300)
    parser.add_argument("--block-size", type=int, default=4096)
    args = parser.parse_args()
    from localsynth.audit import contamination, noise, semdup

    versions = {p: metadata.version(p) for p in ("numpy", "polars", "scikit-learn", "cleanlab")}
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows, emb, test, test_emb, planted = make_inputs(args.rows, args.test_rows)
    print(f"inputs: {rows.height:,} synthetic rows, {test.height:,} test rows, {PLANTED} planted, "
          f"random 384-d embeddings (synthetic, seeded), peak {peak_mib():.0f} MiB")

    timings = {}
    start = time.perf_counter()
    signals = contamination.check(rows["text"], emb, test, test_emb, "test", near_threshold=NEAR,
                                  cosine_threshold=COSINE, block=args.block_size)
    timings["contamination"] = time.perf_counter() - start
    found = set(np.flatnonzero(signals["test_contaminated"].to_numpy()).tolist())
    start = time.perf_counter()
    issues = noise.label_issues(emb, rows["label"].to_list(), LABELS, folds=5)
    timings["noise (5-fold LR + cleanlab)"] = time.perf_counter() - start
    start = time.perf_counter()
    dups = semdup.semantic_duplicates(emb, rows["label"].to_list(), COSINE, args.block_size)
    timings["semantic duplicates"] = time.perf_counter() - start
    total = sum(timings.values())
    for name, seconds in timings.items():
        print(f"ours  {name:32s} {seconds:8.2f} s")
    print(f"ours  {'audit total (no judge)':32s} {total:8.2f} s, peak {peak_mib():.0f} MiB")
    print(f"      planted found {len(found & planted)}/{PLANTED}, other rows flagged {len(found - planted)}; "
          f"label issues flagged {int(issues['noise_issue'].sum()):,}; semantic duplicates {int(dups['semdup'].sum()):,}")

    sample = np.sort(np.concatenate([np.array(sorted(planted))[:20],
                                     np.random.default_rng(1).choice(args.rows, args.naive_sample - 20, replace=False)]))
    start = time.perf_counter()
    naive = naive_contamination([rows["text"][int(i)] for i in sample], emb[sample], test["text"].to_list(), test_emb)
    seconds = time.perf_counter() - start
    scaled = seconds / len(sample) * args.rows
    agree = sum(n == (int(i) in found) for n, i in zip(naive, sample))
    print(f"naive all-pairs contamination: {seconds:.2f} s for {len(sample)} rows -> {scaled:,.0f} s "
          f"({scaled / 3600:.2f} h) for {args.rows:,} rows (linear); agrees with ours on {agree}/{len(sample)} sampled rows")
    print(f"ratio naive / ours (contamination): {scaled / timings['contamination']:.0f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
