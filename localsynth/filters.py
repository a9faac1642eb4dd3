"""Turn raw model outputs into clean texts, and decide which ones to keep.

Stateless checks (cleaning, empty, truncated, refusal, length, copying a few-shot example) run
vectorised in Polars over a whole round. Stateful ones (exact and near duplicates, quotas) run
in request order against what the shard has kept so far, so the decisions are the same whether
a shard ran in one go or was resumed.

Near duplicates: word-set Jaccard similarity with any kept text at or above a threshold. MinHash
signatures (computed for a whole round at once in NumPy) and LSH bands find candidates; the exact
Jaccard decides, so there are no false positives. The band layout follows the threshold (see
`lsh_layout`), and every hash is a fixed function of the words' UTF-8 bytes (FNV-1a, then
multiply-add permutations from a fixed SplitMix64 stream), so the same texts give the same keys
on any machine and with any library version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa

from localsynth.config import Filters

# Preambles that chat models put before the text they were asked for.
_PREAMBLE = r"(?is)^\s*(?:(?:sure|certainly|okay|ok)[,!.]?\s*)?(?:here(?:'s| is| are)\b[^\n]*?:\s*)"
_FIELD_PREFIX = r"(?i)^\s*(?:text|message|sms|review|headline|tweet|sentence|article|comment|output)\s*\d*\s*:\s*"
# Header lines a small model copies from the prompt's attributes ("Sender: a bank", "Tone: ...").
_HEADER_LINES = r"(?i)^(?:\s*(?:sender|from|to|subject|tone|date|topic|re|writer|section|about)\s*:[^\n]*\n)+"
# Commentary after the text, in its own paragraph ("This message is designed to ...").
_TRAILING_NOTE = (
    r"(?is)\n\s*\n\s*(?:\(?note\b|explanation\b|this (?:message|text|sms|tweet|headline|sentence|article|review)\b|"
    r"i hope this\b|feel free\b|let me know\b|\*\*).*$"
)
# Template slots left unfilled: "[Your Name]", "[insert product]", "{name}".
_PLACEHOLDER = r"\[[^\]\n]{2,40}\]|\{[A-Za-z_ ]{2,30}\}"
_QUOTES = "\"'“”‘’`"
# A sentence ends at . ! ? or … (closing quotes or brackets may follow) before a space or the end.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")
ECHO_WORDS = 6  # an output sharing this many consecutive words with its prompt repeats the prompt
_REFUSAL = (
    r"(?i)^\s*(?:i'm sorry|i am sorry|sorry, (?:but )?i|i cannot|i can't|i can not|i won't|i will not|"
    r"as an ai\b|i'm unable|i am unable|i'm not able|i am not able)"
)

# LSH layout: a pair at the threshold must become a candidate with this probability at least;
# a pair at half the threshold at most with the second (each candidate costs one exact Jaccard),
# with at most MAX_BANDS bands (each kept text holds one bucket entry per band).
LSH_RECALL, LSH_HALF_THRESHOLD_CANDIDATES, MAX_BANDS = 0.99, 0.25, 128


def lsh_layout(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) for a near-duplicate threshold: the fewest rows r (then the
    fewest bands b) whose candidate probability 1 - (1 - s^r)^b is at least LSH_RECALL at
    s = threshold and at most LSH_HALF_THRESHOLD_CANDIDATES at s = threshold / 2.
    0.5 -> 72 x 4, 0.6 -> 34 x 4, 0.7 -> 17 x 4, 0.8 -> 9 x 4, 0.9 -> 5 x 4, 1.0 -> 1 x 2.
    Below about 0.45 that takes more than MAX_BANDS bands: then the most rows that fit in
    MAX_BANDS (recall kept, more candidates: 0.3 -> 49 x 2, 0.1 -> 44 x 1, all but exhaustive)."""
    best = None
    for rows in range(1, 64):
        p = threshold**rows
        bands = 1 if p >= 1 else math.ceil(math.log(1 - LSH_RECALL) / math.log1p(-p))
        if bands > MAX_BANDS and best is not None:  # (below Jaccard 0.035 even one row needs more)
            break
        best = bands, rows
        if 1 - (1 - (threshold / 2) ** rows) ** bands <= LSH_HALF_THRESHOLD_CANDIDATES:
            break
    return best


_M64 = (1 << 64) - 1


def _splitmix64(seed: int, n: int) -> np.ndarray:
    """n 64-bit values of SplitMix64 from `seed`: a fixed stream (NumPy does not promise its
    random streams across versions)."""
    out, state = [], seed
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


@lru_cache(maxsize=16)
def _permutations(bands: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = bands * rows
    a = _splitmix64(20231007, n) | np.uint64(1)  # odd multipliers: bijections of the 64-bit words
    b = _splitmix64(7, n)
    mix = _splitmix64(42, rows) | np.uint64(1)
    return a, b, mix


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def fnv1a_64(words: pl.Series) -> np.ndarray:
    """64-bit FNV-1a of each string's UTF-8 bytes, vectorised over the strings (one pass per
    byte position, over the strings that long: total work ~ total bytes)."""
    arr = words.fill_null("").to_arrow()
    arr = pa.concat_arrays(arr.chunks) if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: position j touches a prefix
    starts, lengths = starts[order], lengths[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    active = n
    for j in range(int(lengths[0]) if n else 0):
        while active and lengths[active - 1] <= j:
            active -= 1
        h[:active] ^= data[starts[:active] + j].astype(np.uint64)
        h[:active] *= _FNV_PRIME  # uint64 arithmetic wraps: FNV's multiplication mod 2^64
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def normalize_expr(col: pl.Expr) -> pl.Expr:
    """Lower-case, punctuation to spaces, collapsed whitespace: the key for duplicates."""
    return col.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


def clean(raw: pl.Series) -> pl.DataFrame:
    """Columns text (cleaned output, null when empty) and parse_error (null, or why)."""
    text = (
        pl.col("raw")
        .str.replace(_PREAMBLE, "")
        .str.replace(_HEADER_LINES, "")
        .str.replace(_TRAILING_NOTE, "")
        .str.replace(_FIELD_PREFIX, "")
        .str.strip_chars()
        .str.strip_chars(_QUOTES)
        .str.strip_chars()
    )
    df = pl.DataFrame({"raw": raw}).select(text.alias("text"))
    empty = pl.col("text").is_null() | (pl.col("text").str.len_chars() == 0)
    return df.select(
        pl.when(empty).then(None).otherwise(pl.col("text")).alias("text"),
        pl.when(empty).then(pl.lit("empty_output")).otherwise(None).alias("parse_error"),
    )


def stateless_reasons(df: pl.DataFrame, filters: Filters, max_words: int) -> pl.Series:
    """Why each row fails a check that needs no memory of earlier rows (null: passes).
    Expects columns text, finish_reason."""
    words = pl.col("text").str.count_matches(r"\S+")
    reason = (
        pl.when(pl.col("text").is_null())
        .then(None)
        .when(pl.lit(filters.drop_truncated) & (pl.col("finish_reason") == "length"))
        .then(pl.lit("truncated"))
        .when(pl.lit(filters.drop_refusals) & pl.col("text").str.contains(_REFUSAL))
        .then(pl.lit("refusal"))
        .when(pl.lit(filters.max_repeated_share < 1.0) & (repeated_share(pl.col("text")) > filters.max_repeated_share))
        .then(pl.lit("repetitive"))
        .when(pl.col("text").str.contains(_PLACEHOLDER))
        .then(pl.lit("placeholder"))
        .when(words < filters.min_words)
        .then(pl.lit("too_short"))
        .when(words > max_words)
        .then(pl.lit("too_long"))
        .otherwise(None)
    )
    return df.select(reason.alias("reason"))["reason"]


def cut_at_sentence(text: str, min_words: int, max_words: int) -> str | None:
    """The longest prefix of `text` that ends a sentence and has min..max words (None: no
    such prefix). Saves outputs that ran past max_tokens or the word limit after a good start:
    a small model writes a fine first sentence or two, then rambles."""
    best = None
    for match in _SENTENCE_END.finditer(text):
        prefix = text[: match.end()]
        words = len(prefix.split())
        if words > max_words:
            break
        if words >= min_words:
            best = prefix
    return best


def cut_long_outputs(df: pl.DataFrame, filters: Filters, max_words: int) -> pl.DataFrame:
    """Columns text and cut_at_sentence: outputs cut off by max_tokens, or longer than the word
    limit, shortened to their last complete sentence inside the word bounds where one exists
    (`filters.cut_at_sentence`). Expects columns text, finish_reason."""
    texts = df["text"].to_list()
    cut = [False] * len(texts)
    if filters.cut_at_sentence:
        finish = df["finish_reason"].to_list()
        for i, text in enumerate(texts):
            if text is None or (finish[i] != "length" and len(text.split()) <= max_words):
                continue
            shorter = cut_at_sentence(text, max(filters.min_words, 1), max_words)
            if shorter is not None and shorter != text:
                texts[i], cut[i] = shorter, True
    return pl.DataFrame({"text": pl.Series(texts, dtype=pl.Utf8), "cut_at_sentence": pl.Series(cut, dtype=pl.Boolean)})


def shingles(normalized: str, n: int = ECHO_WORDS) -> set[tuple[str, ...]]:
    words = normalized.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def echoes_prompt(normalized: str, prompt_shingles: set[tuple[str, ...]], n: int = ECHO_WORDS) -> bool:
    """An output that repeats ECHO_WORDS consecutive words of its own prompt: an echoed
    instruction or label description ("an unsolicited SMS message such as an advertisement"),
    not a text of the kind asked for."""
    words = normalized.split()
    return any(tuple(words[i : i + n]) in prompt_shingles for i in range(len(words) - n + 1))


def repeated_share(col: pl.Expr) -> pl.Expr:
    """Share of a text's words that repeat an earlier word-pair of it: 0 for ordinary prose,
    high for a model caught in a loop ("I promise, I promise, I promise") or a row of emoji."""
    words = col.str.to_lowercase().str.extract_all(r"\S+")
    bigrams = words.list.eval(pl.element() + pl.lit(" ") + pl.element().shift(-1)).list.drop_nulls()
    total = bigrams.list.len()
    return pl.when(total > 0).then(1.0 - bigrams.list.n_unique() / total).otherwise(0.0)


def word_set(normalized: str) -> frozenset[str]:
    return frozenset(normalized.split())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def copies_example(normalized: str, examples_normalized: Sequence[str], threshold: float) -> bool:
    """An output that contains an example whole, or shares most of its words with one."""
    words = word_set(normalized)
    for example in examples_normalized:
        if example and (example in normalized or jaccard(words, word_set(example)) >= threshold):
            return True
    return False


def band_keys(normalized: pl.Series, threshold: float = 0.8) -> np.ndarray:
    """LSH band keys (texts x bands, uint64) from MinHash signatures over word sets, laid out
    for `threshold` (see `lsh_layout`)."""
    bands, rows = lsh_layout(threshold)
    if normalized.len() == 0:
        return np.zeros((0, bands), dtype=np.uint64)
    a, b, mix = _permutations(bands, rows)
    words = normalized.fill_null("").str.split(" ")
    lengths = words.list.len().to_numpy().astype(np.int64)
    hashed = fnv1a_64(words.explode())
    starts = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(lengths)[:-1]))
    keys = np.zeros((len(lengths), bands), dtype=np.uint64)
    permuted = np.empty_like(hashed)
    # one permutation at a time: a (tokens x permutations) temporary is 12x slower (memory, not
    # math), and a band's key is summed as it goes, so no (texts x permutations) signature either
    for band in range(bands):
        for r in range(rows):
            j = band * rows + r
            np.multiply(hashed, a[j], out=permuted)  # uint64 arithmetic wraps: a universal hash
            permuted += b[j]
            keys[:, band] += np.minimum.reduceat(permuted, starts) * mix[r]
    return keys + np.arange(bands, dtype=np.uint64)[None, :]  # distinct key spaces per band


class DedupIndex:
    """What a shard has kept: exact keys and LSH buckets of word sets."""

    def __init__(self, near_threshold: float | None):
        self.near_threshold = near_threshold
        self.exact: set[str] = set()
        self.buckets: dict[int, list[int]] = {}
        self.kept: list[str] = []
        self.word_sets: dict[int, frozenset[str]] = {}  # built only for texts that become candidates

    def check(self, normalized: str, keys: Sequence[int], exact: bool) -> str | None:
        """'duplicate', 'near_duplicate' or None, without changing the index."""
        if exact and normalized in self.exact:
            return "duplicate"
        if self.near_threshold is None:
            return None
        words = None
        for key in keys:
            for idx in self.buckets.get(key, ()):
                words = words if words is not None else word_set(normalized)
                other = self.word_sets.get(idx)
                if other is None:
                    other = self.word_sets[idx] = word_set(self.kept[idx])
                if jaccard(words, other) >= self.near_threshold:
                    return "near_duplicate"
        return None

    def add(self, normalized: str, keys: Sequence[int]) -> None:
        self.exact.add(normalized)
        if self.near_threshold is None:
            return
        idx = len(self.kept)
        self.kept.append(normalized)
        buckets = self.buckets
        for key in keys:
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = [idx]
            else:
                bucket.append(idx)
