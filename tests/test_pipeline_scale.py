"""The vectorised generation pipeline gives the same rows as the per-request one it replaced.

FINGERPRINTS were produced by the per-request pipeline (the code before issue 13: a Python loop
per request and per row, commit 7c36ac3 plus the package reorganisation) by running each case
of tests/pipeline_cases.py and hashing its rows with `pipeline_cases.fingerprint` (sha256 of
canonical JSON lines sorted by id). The cases cover multi-turn zero-shot with top-up rounds,
a sharded run with permanent failures, near duplicates at 0.5 without exact dedup, exact dedup
without near duplicates, and few-shot with same-label and mixed-label examples.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from pipeline_cases import ScriptedBackend, cases, fingerprint, run_case

from localsynth.generation import filters as F
from localsynth.generation import run as run_module
from localsynth.generation.accept import KeptIndex, decide
from localsynth.generation.config import load_generate_config
from localsynth.generation.run import generate_shard
from localsynth.generation.rundir import ShardPaths

FINGERPRINTS = {
    "zero_multiturn": "119416bda37bd9fbe2205e11a44d0522cbe7e1205aef8a6ef6013f65664fed20",
    "zero_sharded": "8835d571baaccf7a9599d9d5b0bb4d492492adb9ce1742f0ce87840d05cdb41b",
    "zero_near05_nodedup": "d66570b7c877eec9b7c1b8b56e643a2eff4553106a01446b1c729373fe1940dd",
    "zero_no_near": "9dac180a08d3be2ae737018c2a1255cd1978a42d87df2260ab555395000e41eb",
    "few_same": "fe8302de67c4c194cfcab369b92a3dbf8a84f5eaa795c743f47f5aa648c8a1c2",
    "few_mixed_turns": "771885167a8e6146a6a0bccaadc1e83c8e7d0c20747b9a64c048c4eb29fcb36d",
}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_rows_are_those_of_the_per_request_pipeline(tmp_path, name):
    assert fingerprint(run_case(tmp_path, name)) == FINGERPRINTS[name]


@pytest.mark.parametrize("name", ["zero_multiturn", "few_same"])
def test_small_waves_give_the_same_rows(tmp_path, monkeypatch, name):
    """A round larger than a wave is planned at once and sent in waves: same rows."""
    monkeypatch.setattr(run_module, "WAVE", 37)
    assert fingerprint(run_case(tmp_path, name)) == FINGERPRINTS[name]


def test_the_fingerprint_sees_a_changed_seed(tmp_path):
    overrides, shard, options = cases(tmp_path)["zero_no_near"]
    cfg = load_generate_config(None, overrides + ["seed=1", "progress=off", f"run_dir={tmp_path / 'r'}"])
    generate_shard(cfg, shard, tmp_path / "r", backend=ScriptedBackend(**options))
    assert fingerprint(pl.read_parquet(ShardPaths(tmp_path / "r", shard).rows)) != FINGERPRINTS["zero_no_near"]


_CHILD = """
import os, sys
sys.path.insert(0, {tests!r})
from pipeline_cases import ScriptedBackend, cases
from localsynth.generation.config import load_generate_config
from localsynth.generation.run import generate_shard
from pathlib import Path

class Dying(ScriptedBackend):
    sent = 0

    def generate(self, requests, sampling):
        for chunk in super().generate(requests, sampling):
            if Dying.sent >= {kill_after}:
                os._exit(137)  # kill -9 after the chunks before were logged
            Dying.sent += len(chunk)
            yield chunk

tmp = Path({tmp!r})
overrides, shard, options = cases(tmp)[{name!r}]
cfg = load_generate_config(None, overrides + ["progress=off", "run_dir=" + str(tmp / "killed")])
generate_shard(cfg, shard, tmp / "killed", backend=Dying(**options))
"""


@pytest.mark.parametrize("name", ["zero_multiturn", "few_same"])
def test_killed_mid_round_then_resumed_gives_the_same_rows(tmp_path, name):
    """kill -9 in the middle of a round (its completions half logged, the shard Parquet half
    streamed), then a rerun replays the log: the rows of an uninterrupted run, and no temporary
    shard file left behind."""
    child = _CHILD.format(tests=os.path.dirname(__file__), kill_after=150, tmp=str(tmp_path), name=name)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr
    overrides, shard, options = cases(tmp_path)[name]
    paths = ShardPaths(tmp_path / "killed", shard)
    assert not paths.done.exists() and not paths.rows.exists() and paths.log_dir.is_dir()
    cfg = load_generate_config(None, overrides + ["progress=off", f"run_dir={tmp_path / 'killed'}"])
    stats = generate_shard(cfg, shard, tmp_path / "killed", backend=ScriptedBackend(**options))
    assert stats["requests_from_log"] >= 150
    assert fingerprint(pl.read_parquet(paths.rows)) == FINGERPRINTS[name]
    assert sorted(p.name for p in paths.rows.parent.iterdir() if ".tmp-" in p.name) == []


def _sequential(texts, labels, targets, exact, near):
    """The per-row reference: `DedupIndex.check`, then the quota, in order."""
    index, kept, out = F.DedupIndex(near), {}, []
    norms = _normalize(texts)
    keys = F.band_keys(pl.Series(norms), near).tolist() if near else [()] * len(norms)
    for text, key, label in zip(norms, keys, labels, strict=True):
        reason = index.check(text, key, exact) if (exact or near) else None
        if reason is None and kept.get(label, 0) >= targets[label]:
            reason = "quota_met"
        if reason is None:
            index.add(text, key)
            kept[label] = kept.get(label, 0) + 1
        out.append(reason)
    return out


def _normalize(texts):
    return pl.select(F.normalize_expr(pl.Series(texts, dtype=pl.Utf8)))[:, 0].to_list()


@pytest.mark.parametrize("exact,near", [(True, 0.8), (False, 0.5), (True, None), (False, None), (True, 0.3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_decisions_are_those_of_the_row_by_row_check(exact, near, seed):
    """Waves of texts full of exact and near duplicates (a tiny vocabulary), labels in any
    order, quotas that run out mid-wave: the same reason for every row as the sequential loop."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(2, 9))) for _ in range(600)]
    texts += rng.choices(texts, k=200)  # exact repeats, later in the stream
    rng.shuffle(texts)
    labels = [rng.choice("abc") if seed else "abc"[i * 3 // len(texts)] for i in range(len(texts))]
    targets = {"a": 25, "b": 120, "c": 10**6}
    want = _sequential(texts, labels, targets, exact, near)
    index, kept = KeptIndex(near), np.zeros(3, dtype=np.int64)
    target = np.array([targets[x] for x in "abc"])
    got, start = [], 0
    for size in (1, 50, 113, 300, 10**6):  # waves of all sizes, against what earlier ones kept
        norms = pl.Series(_normalize(texts[start : start + size]), dtype=pl.Utf8)
        if norms.len() == 0:
            break
        keys = F.band_keys(norms, near) if near else None
        code = np.array(["abc".index(x) for x in labels[start : start + size]])
        reasons, accepted = decide(index, norms, keys, code, kept, target, exact)
        assert [r is None for r in reasons] == accepted.tolist()
        got += reasons
        start += size
    assert got == want
    assert "quota_met" in want and (("duplicate" if exact else "near_duplicate") in want or not (exact or near))


def test_vectorised_word_checks_match_the_per_row_ones():
    """The repeated share (hash bound, then exact) and the word count of the cut (Python's
    str.split, \\x1c-\\x1f included) give the per-row values, on texts built to trip them."""
    rng = random.Random(3)
    pieces = ["win", "WIN", "win!", "the", "a", "b", "\u00a0", "\x1c", "\u2003", "  ", "\n", "é", "🙂"]
    texts = ["".join(rng.choice(pieces) + rng.choice([" ", "", "\x1d"]) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    texts += [None, "", "x", "a a a a a a a a"]
    series = pl.Series(texts, dtype=pl.Utf8)
    exact = pl.select(F.repeated_share(pl.lit(series)))[:, 0].to_numpy()
    assert F.repeated_shares(series).tolist() == exact.tolist()
    words = pl.select(pl.lit(series).str.count_matches(F.PY_WORD))[:, 0].to_list()
    assert words == [len(t.split()) if t is not None else None for t in texts]


def _tricky_texts(seed: int, n: int) -> list[str | None]:
    """Texts that trip every shortcut: other whitespace (Unicode, \\x1c-\\x1f, newlines), runs
    of spaces, punctuation runs with and without spaces, case folding that adds marks, repeats."""
    rng = random.Random(seed)
    pieces = ["win", "WIN", "win!", "the", "a", "b", ", ", " ,", "...", "\u00a0", "\x1c", "\u2003", "  ", "\n", "\t",
              "é", "İ", "ǅ", "🙂", "-", "'s", "\u3000", "42", "x.y"]
    texts = ["".join(rng.choice(pieces) + rng.choice([" ", "", " ", "\x1d"]) for _ in range(rng.randint(0, 40))) for _ in range(n)]
    return texts + [None, "", " ", "  ", "x", "a a a a a a a a", " a ", "a  b", "a , b", " ,a", "a, ", "win win win! win"]


@pytest.mark.parametrize("seed", [0, 1])
def test_words_in_one_pass_are_the_filters_values(seed):
    """words.text_words (one split on spaces, the filters' regexes only for texts with other
    whitespace) gives each text's \\S+ count, Python split() count, repeated share and
    normalized text exactly as the per-check expressions do; word hashes are FNV-1a's."""
    from localsynth.generation.words import text_words

    texts = _tricky_texts(seed, 4000)
    series = pl.Series(texts, dtype=pl.Utf8)
    got = text_words(series, repeated=True)
    exact = pl.select(F.repeated_share(pl.lit(series)))[:, 0].to_numpy()
    assert got.repeated.tolist() == exact.tolist()
    assert got.words.tolist() == pl.select(pl.lit(series).str.count_matches(r"\S+").fill_null(0))[:, 0].to_list()
    assert got.py_words.tolist() == [len(t.split()) if t is not None else 0 for t in texts]
    plain = pl.select(pl.lit(series).str.to_lowercase().str.replace_all(F.NORMALIZE_RUN, " ").str.strip_chars())[:, 0]
    assert got.normalized.equals(plain, null_equal=True)
    assert not text_words(series, repeated=False).repeated.any()
    words, counts = F.split_normalized(got.normalized)
    assert words.to_list() == [w for t in got.normalized.fill_null("").to_list() for w in t.split(" ")]
    assert counts.tolist() == [len(t.split(" ")) for t in got.normalized.fill_null("").to_list()]
    assert F.word_hashes(words).tolist() == F.fnv1a_64(words).tolist()  # hashed once per distinct word


def test_sorted_runs_find_every_equal_key_whatever_the_merges():
    """The index's runs (merged level by level as they grow, behind a bit filter that grows
    too) answer like one scan of every key added."""
    from localsynth.generation.accept import SortedRuns

    rng = np.random.default_rng(3)
    runs, keys, owners = SortedRuns(), [], []
    pool = rng.integers(0, 2**63, 400, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # spread over 64 bits
    for step in range(80):  # merges on two levels
        size = int(rng.integers(0, 40)) if step % 9 else 2000  # a few large adds grow the filter
        new = rng.choice(pool, size)  # few values: many equal keys within and across runs
        mine = np.arange(len(keys), len(keys) + size)
        runs.add(new, mine)
        keys += new.tolist()
        owners += mine.tolist()
        if step % 7 == 0 or step == 79:
            probe = np.concatenate((rng.choice(pool, 30), rng.integers(0, 2**63, 30, dtype=np.uint64)))
            pos, owner = runs.matches(probe)
            by_key: dict[int, list[int]] = {}
            for o, k in zip(owners, keys):
                by_key.setdefault(k, []).append(o)
            expected = sorted((p, o) for p, k in enumerate(probe.tolist()) for o in by_key.get(k, []))
            assert sorted(zip(pos.tolist(), owner.tolist())) == expected
    assert max(level for level, _, _ in runs.runs) == 2 and len(runs.runs) < 2 * SortedRuns.FANOUT
    assert len(runs) == len(keys)


def test_a_failed_background_merge_is_raised_by_the_next_wave(monkeypatch):
    import localsynth.generation.accept as A

    index, kept, target = KeptIndex(0.8), np.zeros(1, dtype=np.int64), np.array([10])
    norms = pl.Series(["a b c", "d e f"])

    def broken(*args):
        raise MemoryError("merge")

    monkeypatch.setattr(A.SortedRuns, "add", broken)
    decide(index, norms, F.band_keys(norms, 0.8), np.zeros(2, dtype=np.int64), kept, target, True)  # merge starts
    with pytest.raises(MemoryError, match="merge"):
        decide(index, norms, F.band_keys(norms, 0.8), np.zeros(2, dtype=np.int64), kept, target, True)


def test_prompt_echoes_found_for_a_wave_are_those_of_the_per_row_check():
    """EchoCheck (word runs found from the prompts' vocabulary, folded, then checked exactly)
    flags exactly the rows that `filters.echoes_prompt` flags: outputs built from prompt words,
    so most words are in the prompt and runs cross from one text into the next."""
    from types import SimpleNamespace

    from localsynth.generation.screen import EchoCheck
    rng = random.Random(5)
    prompts = [("write one sms message", "it is spam about a prize you won call now"),
               ("write one sms message", "a short note to a friend about dinner tonight")]
    vocab = " ".join(s + " " + u for s, u in prompts).split() + ["other", "words"]
    texts, keys = [], []
    for _ in range(3000):
        key = rng.randrange(len(prompts))
        words = rng.choices(vocab, k=rng.randint(1, 14))
        if rng.random() < 0.2:  # a copied run of the prompt's own words
            own = prompts[key][1].split()
            start = rng.randrange(len(own))
            words[rng.randrange(len(words)):] = own[start : start + rng.randint(4, 8)]
        texts.append(" ".join(words))
        keys.append(key)
    normalized = pl.Series(texts)
    words, counts = F.split_normalized(normalized)
    wave = SimpleNamespace(prompt_key=np.array(keys), prompt_texts=prompts)
    found = EchoCheck().rows(wave, np.arange(len(texts)), normalized, F.word_hashes(words), counts)
    normalized_prompts = [F.shingles(pl.select(F.normalize_expr(pl.lit(f"{s}\n{u}")))[0, 0]) for s, u in prompts]
    expected = [i for i, (t, k) in enumerate(zip(texts, keys)) if F.echoes_prompt(t, normalized_prompts[k])]
    assert 100 < len(expected) < 2900  # both kinds of rows are there
    assert found.tolist() == expected


def test_overlapping_collector_pauses_resume_it_once_the_last_ends():
    import gc
    import threading

    from localsynth.generation.gcpause import gc_paused

    inside, release = threading.Event(), threading.Event()

    def other():
        with gc_paused():
            inside.set()
            release.wait(5)

    assert gc.isenabled()
    worker = threading.Thread(target=other)
    with gc_paused():
        worker.start()
        inside.wait(5)
    assert not gc.isenabled()  # the other thread's pause still runs
    release.set()
    worker.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.enable()


def test_word_hashes_survive_a_hash_collision(monkeypatch):
    """Two different words under one Polars hash: the exact check sees it and falls back."""
    words = pl.Series(["alpha", "beta", "alpha", "gamma", "beta"])
    real = pl.Series.hash
    monkeypatch.setattr(pl.Series, "hash", lambda self, seed=0, *a: real(self, seed, *a) * 0)  # every word collides
    assert F.word_hashes(words).tolist() == F.fnv1a_64(words).tolist()
