"""The stateless checks of a wave, as columns: clean, cut, parse errors, filters, copied
examples and prompt echoes. What is left (eligible rows) goes to the stateful checks in
accept.py, with the words and hashes computed here.

The checks are those of filters.py, in the same order (a row's first failing check is its
reason); the per-row Python ones run only on the few rows that can fail them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import polars as pl

from localsynth.generation import filters as F
from localsynth.generation.completions import error_fix
from localsynth.generation.config import GenerateConfig
from localsynth.generation.plan import Wave
from localsynth.generation.rows import FAILED, INVALID
from localsynth.generation.words import text_words

# Odd multipliers that fold ECHO_WORDS word hashes into one: equal word runs give equal
# folds, so a fold match finds every echo; the exact check then rules out hash collisions.
_FOLD = (np.arange(1, F.ECHO_WORDS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)


@dataclass
class Screened:
    text: pl.Series
    cut_at_sentence: pl.Series
    parse_error: pl.Series
    reason: list[str | None]  # the stateless, copy and echo reasons (None: none yet)
    eligible: np.ndarray  # rows that go on to dedup and quotas, in order
    normalized: pl.Series  # of the eligible rows
    word_hashes: np.ndarray  # FNV-1a of their words, flat
    word_counts: np.ndarray  # words per eligible row
    keys: np.ndarray | None = None  # their LSH band keys (near duplicates on)
    examples: pl.Series | None = None  # the wave's examples and messages columns
    messages: pl.Series | None = None


def _parse_errors(cleaned: pl.Series, error: pl.Series) -> pl.Series:
    """A failed request's error, prefixed by whether asking again may work."""
    prefixed = {e: f"{FAILED if error_fix(e) is None else INVALID}: {e}" for e in error.drop_nulls().unique().to_list()}
    if not prefixed:
        return cleaned
    return pl.select(pl.coalesce(error.replace_strict(prefixed, default=None, return_dtype=pl.Utf8), cleaned))[:, 0]


def _runs(counts: np.ndarray, inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row, first word) of every run of ECHO_WORDS consecutive words inside one text whose
    words are all `inside` (all words when None). Only the positions of such runs are
    materialised: with `inside` sparse, a few percent of the words, not one entry per word."""
    n, total = F.ECHO_WORDS, int(counts.sum())
    if total < n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if inside is None:
        first = np.arange(total - n + 1)
    else:
        seen = np.concatenate(([0], np.cumsum(inside, dtype=np.int64)))
        first = np.flatnonzero(seen[n:] - seen[:-n] == n)
    ends = np.cumsum(counts)
    row = np.searchsorted(ends, first, "right")  # the text of each run's first word
    keep = first + n <= ends[row]  # and its last word in the same text
    return row[keep], first[keep]


def _folds(hashes: np.ndarray, first: np.ndarray) -> np.ndarray:
    fold = np.zeros(len(first), dtype=np.uint64)
    for k in range(F.ECHO_WORDS):
        fold += hashes[first + k] * _FOLD[k]  # uint64 arithmetic wraps
    return fold


def _in_table(values: np.ndarray, table: list[np.ndarray]) -> np.ndarray:
    return pl.Series(values).is_in(pl.Series(np.concatenate(table)).implode()).to_numpy()


class EchoCheck:
    """`filters.echoes_prompt` for a wave: fold hashes of the outputs' word runs looked up among
    those of their own prompt, then the exact check on the rows found (collisions aside, those
    are the echoes). Only runs whose six words all occur in the prompt are folded (an echo's do):
    a few percent of an ordinary output's runs."""

    def __init__(self):
        self.lock = threading.Lock()  # waves are screened on more than one thread
        self.shingles: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        self.folds: dict[tuple[str, str], np.ndarray] = {}
        self.vocab: dict[tuple[str, str], np.ndarray] = {}

    def _prompts(self, keys: list[tuple[str, str]]) -> None:
        """Shingles, word hashes and folds of the prompts not seen yet, hashed together."""
        new = [k for k in dict.fromkeys(keys) if k not in self.shingles]
        if not new:
            return
        normalized = pl.select(F.normalize_expr(pl.Series([f"{s}\n{u}" for s, u in new], dtype=pl.Utf8)))[:, 0]
        words, counts = F.split_normalized(normalized)
        hashes = F.word_hashes(words)
        ends = np.cumsum(counts)
        for key, text, stop, count in zip(new, normalized.to_list(), ends.tolist(), counts.tolist(), strict=True):
            mine = hashes[stop - count : stop]
            self.shingles[key] = F.shingles(text)
            self.vocab[key] = np.unique(mine)
            self.folds[key] = np.unique(_folds(mine, _runs(np.array([count]))[1]))

    def rows(self, wave: Wave, rows: np.ndarray, normalized: pl.Series, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Which of `rows` (with their normalized texts and flat word hashes) echo their prompt."""
        keys = wave.prompt_key[rows]
        used = np.unique(keys)
        prompts = [wave.prompt_texts[k] for k in used.tolist()]
        with self.lock:
            self._prompts(prompts)
        # (prompt, hash) pairs as one set: a prompt's hashes xored with its own key's multiple
        shift = np.zeros(int(used.max()) + 1 if len(used) else 0, np.uint64)
        shift[used] = used.astype(np.uint64) * _FOLD[0]  # arrays wrap silently (scalars warn)
        token_shift = shift[np.repeat(keys, counts)]
        in_prompt = _in_table(hashes ^ token_shift, [self.vocab[p] ^ shift[k] for k, p in zip(used, prompts, strict=True)])
        row, first = _runs(counts, in_prompt)
        folded = _folds(hashes, first) ^ token_shift[first]
        hit = _in_table(folded, [self.folds[p] ^ shift[k] for k, p in zip(used, prompts, strict=True)])
        found = np.unique(row[hit])
        texts = normalized.gather(found).to_list()
        exact = [F.echoes_prompt(t, self.shingles[wave.prompt_texts[keys[i]]]) for i, t in zip(found.tolist(), texts, strict=True)]
        return found[np.array(exact, dtype=bool)] if len(found) else found


def screen(cfg: GenerateConfig, wave: Wave, completions: pl.DataFrame, echo: EchoCheck) -> Screened:
    filters = cfg.filters
    cleaned = F.clean(completions["raw_output"])
    finish = completions["finish_reason"]
    # words, repeated pairs and normalized texts of the cleaned outputs, in one pass (words.py);
    # the few texts that the cut below shortens are done again
    repeated = filters.max_repeated_share < 1.0
    found = text_words(cleaned["text"], repeated)
    cut = F.cut_long_outputs(cleaned.with_columns(finish), filters, cfg.max_words, found.py_words)
    shortened = np.flatnonzero(cut["cut_at_sentence"].to_numpy())
    text = cut["text"]
    found.patch(shortened, text_words(text.gather(shortened), repeated))
    # a text cut at a sentence end is complete: the truncated check applies to the rest
    effective = pl.select(pl.when(cut["cut_at_sentence"]).then(pl.lit("stop")).otherwise(finish))[:, 0]
    parse_error = _parse_errors(cleaned["parse_error"], completions["error"])
    pending = pl.select(parse_error.is_null())[:, 0].to_numpy()
    candidates = np.flatnonzero(pending)
    normalized = found.normalized.gather(candidates)
    words, counts = F.split_normalized(normalized)
    hashes = F.word_hashes(words)
    checks = pl.DataFrame({"text": text, "finish_reason": effective}).select(
        F.stateless_reason(filters, cfg.max_words, pl.Series("repeated", found.repeated), pl.Series("words", found.words))
    )
    reasons = checks["reason"]
    reason = reasons.to_list()
    keep = reasons.gather(candidates).is_null().to_numpy()
    rows, normalized = candidates[keep], normalized.filter(pl.Series(keep))
    hashes, counts = hashes[np.repeat(keep, counts)], counts[keep]

    if wave.examples is not None:  # few-shot: a copied example (few rows: a Python check)
        examples = pl.Series([[e.text for e in wave.examples[i]] for i in rows.tolist()], dtype=pl.List(pl.Utf8))
        example_norms = examples.list.eval(F.normalize_expr(pl.element())).to_list()
        copied = [F.copies_example(t, ex, filters.copy_jaccard) for t, ex in zip(normalized.to_list(), example_norms, strict=True)]
        for i in rows[np.array(copied, dtype=bool)].tolist():
            reason[i] = "copies_example"
        keep = ~np.array(copied, dtype=bool)
        rows, normalized = rows[keep], normalized.filter(pl.Series(keep))
        hashes, counts = hashes[np.repeat(keep, counts)], counts[keep]

    if filters.drop_prompt_echoes and len(rows):
        echoed = echo.rows(wave, rows, normalized, hashes, counts)
        if len(echoed):
            for i in rows[echoed].tolist():
                reason[i] = "echoes_prompt"
            keep = np.ones(len(rows), dtype=bool)
            keep[echoed] = False
            hashes = hashes[np.repeat(keep, counts)]
            rows, normalized, counts = rows[keep], normalized.filter(pl.Series(keep)), counts[keep]
    return Screened(text, cut["cut_at_sentence"], parse_error, reason, rows, normalized, hashes, counts)
