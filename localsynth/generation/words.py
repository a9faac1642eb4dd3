"""The words of a wave's texts, split once: the word counts and the repeated-pair share that
the stateless filters need, and the normalized texts (split into words by
`filters.split_normalized` for MinHash, duplicates and prompt echoes).

The filters define words with regular expressions (`\\S+`, Python's `str.split()`), which cost
a regex pass per check. In a text whose only whitespace is the plain space (most outputs: a
newline or a tab is the exception), all of them are exactly the non-empty pieces of a split on
" ", which is a plain byte scan; the other texts run the filters' own expressions. So every
value here equals the one filters.py computes, text by text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from localsynth.generation import filters as F
from localsynth.generation.columns import arrow, series

# Whitespace other than the plain space, as either tokenizer sees it (Rust's Unicode \s, and the
# separators \x1c-\x1f that Python's str.split() adds): a text with none splits on " ".
_OTHER_SPACE = r"[^\S ]|[\x1c-\x1f]"


@dataclass
class TextWords:
    normalized: pl.Series  # normalize_expr of each text
    words: np.ndarray  # \S+ words per text (the filters' count; 0 for a null text)
    py_words: np.ndarray  # words as str.split() counts them (cut_long_outputs)
    repeated: np.ndarray  # filters.repeated_share (zeros when not asked)

    def patch(self, rows: np.ndarray, other: TextWords) -> None:
        """Replace the values of `rows` (whose text changed) by `other`'s, in order."""
        if len(rows):
            self.normalized = self.normalized.scatter(rows.tolist(), other.normalized)
            self.words[rows], self.py_words[rows], self.repeated[rows] = other.words, other.py_words, other.repeated


def text_words(text: pl.Series, repeated: bool) -> TextWords:
    """`TextWords` of `text` (one select: Polars runs the split and the normalization side by
    side); `repeated`: whether the repeated-pair share is wanted."""
    n = text.len()
    t = pl.col("t")
    frame = pl.DataFrame({"t": text}, schema={"t": pl.Utf8}).select(
        odd=t.str.contains(_OTHER_SPACE).fill_null(False),
        tokens=t.fill_null("").str.to_lowercase().str.split(" "),
        normalized=F.normalize_expr(t),
    )
    odd = frame["odd"].to_numpy()
    lengths = frame["tokens"].list.len().to_numpy().astype(np.int64)
    flat = frame["tokens"].explode()  # a split never gives an empty list: rows line up
    present = flat.str.len_bytes().to_numpy() > 0
    row = np.repeat(np.arange(n), lengths)[present]
    words = np.bincount(row, minlength=n).astype(np.int64)
    py_words = words.copy()
    share = np.zeros(n)
    if repeated and len(row) > 1:
        hashes = flat.filter(pl.Series(present)).hash(seed=7).to_numpy()
        pair = np.flatnonzero(row[:-1] == row[1:])  # a word and the next one of the same text
        key = (hashes[pair] * np.uint64(0x9E3779B97F4A7C15)) ^ hashes[pair + 1]
        pairs = np.bincount(row[pair], minlength=n)
        # each text's pair hashes as a list: a small hash set per text, not one of 10^6 entries
        offsets = np.concatenate(([0], np.cumsum(pairs)))
        distinct = series(pa.LargeListArray.from_arrays(arrow(offsets, pl.Int64), arrow(key, pl.UInt64))).list.n_unique()
        # a repeated hash pair bounds a repeated word pair (collisions only add): exact for those
        suspect = np.flatnonzero((distinct.to_numpy() < pairs) & ~odd)
        if len(suspect):
            share[suspect] = pl.select(F.repeated_share(pl.lit(text.gather(suspect))))[:, 0].to_numpy()
    other = np.flatnonzero(odd)
    if len(other):  # the filters' own expressions
        odd_text = text.gather(other)
        counts = pl.DataFrame({"t": odd_text}).select(
            w=pl.col("t").str.count_matches(r"\S+").fill_null(0), p=pl.col("t").str.count_matches(F.PY_WORD).fill_null(0)
        )
        words[other], py_words[other] = counts["w"].to_numpy(), counts["p"].to_numpy()
        if repeated:
            share[other] = F.repeated_shares(odd_text)
    return TextWords(frame["normalized"], words, py_words, share)
