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
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa

from localsynth.generation.config import Filters

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
# A word as Python's str.split() sees one: Rust's \s is Unicode White_Space, and Python's
# isspace() adds the information separators \x1c-\x1f.
PY_WORD = r"[^\s\x1c-\x1f]+"
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
    if arr.type != pa.large_string():  # (Polars gives large strings: no pyarrow.compute import)
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


# Every run of characters other than letters and digits becomes one space (NORMALIZE_RUN); the
# pattern used skips the runs that are one space already (most gaps between words): the same
# strings with a fraction of the matches (4x faster on prose).
NORMALIZE_RUN = r"[^\p{L}\p{N}]+"
_NORMALIZE = r" ?[^\p{L}\p{N} ][^\p{L}\p{N}]*| {2,}[^\p{L}\p{N}]*"


def normalize_expr(col: pl.Expr) -> pl.Expr:
    """Lower-case, punctuation to spaces, collapsed whitespace: the key for duplicates."""
    return col.str.to_lowercase().str.replace_all(_NORMALIZE, " ").str.strip_chars()


def clean(raw: pl.Series) -> pl.DataFrame:
    """Columns text (cleaned output, null when empty) and parse_error (null, or why)."""
    text = pl.DataFrame({"raw": raw}).select(pl.col("raw").str.replace(_PREAMBLE, "").str.replace(_HEADER_LINES, ""))[:, 0]
    # A trailing note follows a blank line: only texts with a line break can hold one, and
    # searching the others for it is half the cleaning's time (most outputs are one line).
    broken = text.str.contains("\n", literal=True).fill_null(False).arg_true()
    if broken.len():
        text = text.scatter(broken, text.gather(broken).str.replace(_TRAILING_NOTE, ""))
    stripped = (
        pl.col("text").str.replace(_FIELD_PREFIX, "").str.strip_chars().str.strip_chars(_QUOTES).str.strip_chars()
    )
    df = pl.DataFrame({"text": text}).select(stripped)
    empty = pl.col("text").is_null() | (pl.col("text").str.len_chars() == 0)
    return df.select(
        pl.when(empty).then(None).otherwise(pl.col("text")).alias("text"),
        pl.when(empty).then(pl.lit("empty_output")).otherwise(None).alias("parse_error"),
    )


def stateless_reasons(df: pl.DataFrame, filters: Filters, max_words: int) -> pl.Series:
    """Why each row fails a check that needs no memory of earlier rows (null: passes).
    Expects columns text, finish_reason."""
    return df.select(stateless_reason(filters, max_words, repeated_shares_of(df["text"], filters)))[:, 0]


def repeated_shares_of(text: pl.Series, filters: Filters) -> pl.Series:
    """The repeated share of each text where the filter is on (zeros where it is off)."""
    return pl.Series("repeated", repeated_shares(text) if filters.max_repeated_share < 1.0 else np.zeros(text.len()))


def stateless_reason(filters: Filters, max_words: int, repeated: pl.Series, words: pl.Series | None = None) -> pl.Expr:
    """`stateless_reasons` as an expression over columns text and finish_reason, to run
    beside other expressions of the same select (Polars runs them in parallel). `words`: each
    text's count of \\S+ words where already known."""
    words = pl.col("text").str.count_matches(r"\S+") if words is None else pl.lit(words)
    return (
        pl.when(pl.col("text").is_null())
        .then(None)
        .when(pl.lit(filters.drop_truncated) & (pl.col("finish_reason") == "length"))
        .then(pl.lit("truncated"))
        .when(pl.lit(filters.drop_refusals) & pl.col("text").str.contains(_REFUSAL))
        .then(pl.lit("refusal"))
        .when(pl.lit(filters.max_repeated_share < 1.0) & (pl.lit(repeated) > filters.max_repeated_share))
        .then(pl.lit("repetitive"))
        .when(pl.col("text").str.contains(_PLACEHOLDER))
        .then(pl.lit("placeholder"))
        .when(words < filters.min_words)
        .then(pl.lit("too_short"))
        .when(words > max_words)
        .then(pl.lit("too_long"))
        .otherwise(None)
        .alias("reason")
    )


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


def cut_long_outputs(df: pl.DataFrame, filters: Filters, max_words: int, py_words: np.ndarray | None = None) -> pl.DataFrame:
    """Columns text and cut_at_sentence: outputs cut off by max_tokens, or longer than the word
    limit, shortened to their last complete sentence inside the word bounds where one exists
    (`filters.cut_at_sentence`). Expects columns text, finish_reason; `py_words`: each text's
    count of words as str.split() sees them, where already known."""
    text, cut = df["text"], np.zeros(df.height, dtype=bool)
    if filters.cut_at_sentence:
        count = pl.col("text").str.count_matches(PY_WORD) if py_words is None else pl.lit(pl.Series(py_words))
        long = pl.col("text").is_not_null() & ((pl.col("finish_reason") == "length") | (count > max_words))
        rows = df.select(long.fill_null(False).arg_true())[:, 0].to_list()  # few: the Python cut for them only
        shorter = [cut_at_sentence(t, max(filters.min_words, 1), max_words) for t in text.gather(rows).to_list()]
        changed = [(i, s) for i, s, t in zip(rows, shorter, text.gather(rows).to_list(), strict=True) if s is not None and s != t]
        if changed:
            at = [i for i, _ in changed]
            text = text.scatter(at, pl.Series([s for _, s in changed], dtype=pl.Utf8))
            cut[at] = True
    return pl.DataFrame({"text": text.cast(pl.Utf8).rename("text"), "cut_at_sentence": pl.Series(cut, dtype=pl.Boolean)})


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


def repeated_shares(texts: pl.Series) -> np.ndarray:
    """`repeated_share` of every text, without a per-row list evaluation: an upper bound first
    (word pairs compared by 64-bit hash, so a collision can only add repeats), then the exact
    expression on the few texts whose bound is not zero. 0 where no pair repeats."""
    words = texts.str.to_lowercase().str.extract_all(r"\S+").to_arrow()
    words = pa.concat_arrays(words.chunks) if isinstance(words, pa.ChunkedArray) else words
    lengths = np.asarray(words.value_lengths().fill_null(0), dtype=np.int64)
    share = np.zeros(len(lengths))
    hashes = pl.Series(words.flatten()).hash(seed=7).to_numpy()
    if len(hashes) < 2:
        return share
    row = np.repeat(np.arange(len(lengths)), lengths)
    pair = np.flatnonzero(row[:-1] == row[1:])  # a word and the next one of the same text
    key = (hashes[pair] * np.uint64(0x9E3779B97F4A7C15)) ^ hashes[pair + 1] ^ (row[pair].astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
    repeats = np.bincount(row[pair][~pl.Series(key).is_first_distinct().to_numpy()], minlength=len(lengths))
    suspect = np.flatnonzero(repeats)
    if len(suspect):
        share[suspect] = pl.select(repeated_share(pl.lit(texts.gather(suspect))))[:, 0].to_numpy()
    return share


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


def split_normalized(normalized: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """The words of normalized texts split on spaces, flat, and how many each text has (a null
    or empty text is one empty word, as `band_keys` has always hashed it)."""
    words = normalized.fill_null("").str.split(" ")
    return words.explode(), words.list.len().to_numpy().astype(np.int64)


def word_hashes(words: pl.Series) -> np.ndarray:
    """FNV-1a of each word, hashed once per distinct word (found by Polars' 64-bit hash) and
    gathered. Exact: every word is compared with its hash's first word (a collision of two
    different words falls back to hashing every word)."""
    if words.len() == 0:
        return np.zeros(0, dtype=np.uint64)
    h = words.hash(seed=5)
    first = h.is_first_distinct().arg_true()
    idx = h.replace_strict(h.gather(first), pl.int_range(0, first.len(), eager=True, dtype=pl.Int64), return_dtype=pl.Int64)
    distinct = words.gather(first)
    if not (words == distinct.gather(idx)).all():
        return fnv1a_64(words)
    return fnv1a_64(distinct)[idx.to_numpy()]


def band_keys(normalized: pl.Series, threshold: float = 0.8) -> np.ndarray:
    """LSH band keys (texts x bands, uint64) from MinHash signatures over word sets, laid out
    for `threshold` (see `lsh_layout`)."""
    words, lengths = split_normalized(normalized)
    return minhash_band_keys(word_hashes(words), lengths, threshold)


def minhash_band_keys(hashed: np.ndarray, lengths: np.ndarray, threshold: float) -> np.ndarray:
    """`band_keys` from the words' FNV-1a hashes, flat, and the word count of each text (>= 1)."""
    bands, rows = lsh_layout(threshold)
    if len(lengths) == 0:
        return np.zeros((0, bands), dtype=np.uint64)
    a, b, mix = _permutations(bands, rows)
    starts = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(lengths)[:-1]))
    keys = np.zeros((len(lengths), bands), dtype=np.uint64)

    # one permutation at a time: a (tokens x permutations) temporary is 12x slower (memory, not
    # math), and a band's key is summed as it goes, so no (texts x permutations) signature either
    def some_bands(first: int) -> None:
        permuted = np.empty_like(hashed)
        for band in range(first, bands, 2):
            for r in range(rows):
                j = band * rows + r
                np.multiply(hashed, a[j], out=permuted)  # uint64 arithmetic wraps: a universal hash
                permuted += b[j]
                keys[:, band] += np.minimum.reduceat(permuted, starts) * mix[r]

    # NumPy releases the GIL in these loops: two threads take the bands in turn
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(some_bands, (0, 1)))
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
