"""The stateful checks of a wave: exact and near duplicates of kept texts, then quotas, in
request order, with the decisions of `filters.DedupIndex` row by row.

A row is checked against two groups of kept texts. Those kept by earlier waves sit in
`KeptIndex`: sorted NumPy runs of text hashes and LSH band keys (16 bytes per band per kept
text, against ~100 in a dict of lists), looked up for the whole wave at once with
`searchsorted`; candidates are confirmed exactly (string equality, word-set Jaccard). Within
the wave, a row can only clash with a row that shares a hash or a band key with it; those few
rows run the sequential check against the wave's own kept rows. The order of acceptance,
and so every decision, is that of a row-by-row loop.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import polars as pl

from localsynth.generation import filters as F
from localsynth.generation.columns import series


def _merge_sorted(keys: np.ndarray, owners: np.ndarray, new_keys: np.ndarray, new_owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs as one, in one linear pass (not a sort of the whole)."""
    at = np.searchsorted(keys, new_keys, "right") + np.arange(len(new_keys))  # after equal keys
    is_new = np.zeros(len(keys) + len(new_keys), dtype=bool)
    is_new[at] = True
    merged_keys, merged_owners = np.empty(len(is_new), np.uint64), np.empty(len(is_new), np.int64)
    merged_keys[at], merged_owners[at] = new_keys, new_owners
    merged_keys[~is_new], merged_owners[~is_new] = keys, owners
    return merged_keys, merged_owners


def matches(keys: np.ndarray, owners: np.ndarray, probe: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probe position, owner) of every equal key. The probes are searched in sorted order
    (`order`, when already known): each search then starts where the last one ended, instead of
    a cache miss per step down a 10^7-key array (measured: 2.3 s -> 0.2 s for 4 x 10^5 texts)."""
    order = np.argsort(probe) if order is None else order
    sorted_probe = probe[order]
    lo, hi = np.empty(len(probe), np.int64), np.empty(len(probe), np.int64)
    lo[order], hi[order] = np.searchsorted(keys, sorted_probe, "left"), np.searchsorted(keys, sorted_probe, "right")
    counts = hi - lo
    pos = np.repeat(np.arange(len(probe)), counts)
    first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return pos, owners[first + np.arange(len(pos))]


class SortedRuns:
    """64-bit keys and the kept row that owns each, as a few sorted runs (a tiered log-structured
    merge): a wave's keys are sorted once into a new run of level 0, and FANOUT runs of one
    level are merged into one run of the next. So a shard of n keys holds at most FANOUT runs
    per level, log_FANOUT(n / wave) levels, and each key is merged once per level, where one
    sorted array would be rewritten whole by every wave (O(n) a wave: measured, most of a
    10^6-request shard's index time).

    A bit per slot of a table with about 8 slots per key (the key's top bits) says which probes
    can match at all: most probes of a wave match nothing, and one gather rules out ~90% of
    them before the binary searches of each run (measured: 27 -> ~5 ms a wave at 9 x 10^5 keys)."""

    FANOUT = 8

    def __init__(self):
        self.runs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (level, keys, owners), oldest first
        self.size = 0
        self.bits = np.zeros(1 << 17, np.uint8)  # 2^20 slots; grows with the keys

    def __len__(self) -> int:
        return self.size

    def add(self, keys: np.ndarray, owners: np.ndarray) -> None:
        order = np.argsort(keys)
        self.runs.append((0, keys[order], owners[order]))
        while len(self.runs) >= self.FANOUT and len({level for level, _, _ in self.runs[-self.FANOUT :]}) == 1:
            level = self.runs[-1][0]
            merging = [(k, o) for _, k, o in self.runs[-self.FANOUT :]]
            del self.runs[-self.FANOUT :]
            while len(merging) > 1:  # pairwise, a balanced tree of linear merges
                merging = [_merge_sorted(*merging[i], *merging[i + 1]) if i + 1 < len(merging) else merging[i]
                           for i in range(0, len(merging), 2)]
            self.runs.append((level + 1, *merging[0]))
        self.size += len(keys)
        slots = len(self.bits) * 8
        if self.size * 8 > slots:  # at least 8 slots a key again: a larger table, every key marked
            self.bits = np.zeros(len(self.bits) << math.ceil(math.log2(self.size * 8 / slots)), np.uint8)
            for _, old, _ in self.runs:
                self._mark(old)
        else:
            self._mark(keys)

    def _slots(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot = keys >> np.uint64(64 - (len(self.bits) * 8).bit_length() + 1)
        return (slot >> np.uint64(3)).astype(np.int64), (np.uint8(1) << (slot & np.uint64(7)).astype(np.uint8))

    def _mark(self, keys: np.ndarray) -> None:
        byte, bit = self._slots(keys)
        np.bitwise_or.at(self.bits, byte, bit)

    def matches(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`matches` over every run."""
        byte, bit = self._slots(probe)
        maybe = np.flatnonzero(self.bits[byte] & bit)
        sub = probe[maybe]
        order = np.argsort(sub)
        found = [matches(keys, owners, sub, order) for _, keys, owners in self.runs]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return maybe[np.concatenate([p for p, _ in found])], np.concatenate([o for _, o in found])


class KeptIndex:
    """What a shard has kept, for duplicate checks: normalized texts, their hashes (exact
    duplicates) and LSH band keys (near duplicates).

    `add` merges a wave's kept rows on a background thread (NumPy sorts release the GIL), while
    the next wave is planned, sent and screened; every method waits for it first (`settle`)."""

    def __init__(self, near_threshold: float | None):
        self.near = near_threshold
        self.texts = pl.Series("normalized", [], dtype=pl.Utf8)
        self.hashes, self.bands = SortedRuns(), SortedRuns()  # of the texts, of their band keys
        self.word_sets: dict[int, frozenset[str]] = {}  # built only for texts that become candidates
        self._adding: threading.Thread | None = None
        self._failed: BaseException | None = None

    def settle(self) -> None:
        """Wait for the last `add` (and raise what it raised)."""
        if self._adding is not None:
            self._adding.join()
            self._adding = None
        if self._failed is not None:
            raise self._failed

    def words(self, owner: int) -> frozenset[str]:
        self.settle()
        found = self.word_sets.get(owner)
        if found is None:
            found = self.word_sets[owner] = F.word_set(self.texts[owner])
        return found

    def exact_hits(self, normalized: pl.Series, hashes: np.ndarray) -> np.ndarray:
        self.settle()
        hit = np.zeros(len(hashes), dtype=bool)
        pos, owner = self.hashes.matches(hashes)
        if len(pos):
            same = (normalized.gather(pos) == self.texts.gather(owner)).to_numpy()
            hit[pos[same]] = True
        return hit

    def near_hits(self, normalized: pl.Series, keys: np.ndarray, skip: np.ndarray) -> np.ndarray:
        """Rows whose word-set Jaccard with a kept text that shares a band key reaches the threshold."""
        self.settle()
        hit = np.zeros(len(keys), dtype=bool)
        if not self.bands.runs:
            return hit
        pos, owner = self.bands.matches(keys.ravel())
        row = pos // keys.shape[1]
        pairs = sorted(set(zip(row.tolist(), owner.tolist(), strict=True)))
        texts = dict(zip((r for r, _ in pairs), normalized.gather([r for r, _ in pairs]).to_list(), strict=False))
        for r, o in pairs:
            if not hit[r] and not skip[r] and F.jaccard(F.word_set(texts[r]), self.words(o)) >= self.near:
                hit[r] = True
        return hit

    def add(self, normalized: pl.Series, hashes: np.ndarray, keys: np.ndarray | None) -> None:
        self.settle()
        self._adding = threading.Thread(target=self._add, args=(normalized, hashes, keys), name="kept-index", daemon=True)
        self._adding.start()

    def _add(self, normalized: pl.Series, hashes: np.ndarray, keys: np.ndarray | None) -> None:
        try:
            self._merge(normalized, hashes, keys)
        except BaseException as e:  # noqa: BLE001 (raised by the next settle, on the caller's thread)
            self._failed = e

    def _merge(self, normalized: pl.Series, hashes: np.ndarray, keys: np.ndarray | None) -> None:
        owners = np.arange(self.texts.len(), self.texts.len() + len(hashes), dtype=np.int64)
        # A copy of just these strings: a gathered string column shares its wave's buffers, so
        # keeping a tenth of each wave would hold every wave's texts (measured: 10x the bytes).
        self.texts.append(series(normalized.to_arrow()).rename(self.texts.name))
        self.hashes.add(hashes, owners)
        if keys is not None:
            self.bands.add(keys.ravel(), np.repeat(owners, keys.shape[1]))


def _repeated(values: np.ndarray) -> np.ndarray:
    """Whether each value occurs more than once: found in a sorted copy, and usually none are
    (a Polars hash table of a wave's 1.5 x 10^5 band keys spent most of its time growing in a
    sampled profile of the pipeline bench)."""
    ordered = np.sort(values)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    return np.isin(values, twice) if len(twice) else np.zeros(len(values), dtype=bool)


def decide(
    index: KeptIndex, normalized: pl.Series, keys: np.ndarray | None, label: np.ndarray,
    kept: np.ndarray, target: np.ndarray, exact: bool,
) -> tuple[list[str | None], np.ndarray]:
    """Reasons ('duplicate', 'near_duplicate', 'quota_met' or None) and the accepted rows, in
    order; `kept` (per label) is advanced and the index takes the accepted texts.

    Only 'special' rows (a duplicate of a kept text, or sharing a hash or band key with another
    row of the wave) need a sequential look; the others ('plain') are accepted while their
    label has room. A row is accepted when fewer than `room` rows of its label passed the
    duplicate checks before it, so the plain rows' fate follows from counts once the special
    rows are decided, in one loop over the special rows alone."""
    m, near = normalized.len(), index.near is not None
    dedup = exact or near
    hashes = normalized.hash(seed=13).to_numpy() if dedup else np.zeros(m, np.uint64)
    exact_hit = index.exact_hits(normalized, hashes) if exact else np.zeros(m, dtype=bool)
    near_hit = index.near_hits(normalized, keys, exact_hit) if near else np.zeros(m, dtype=bool)
    clash = _repeated(hashes) if dedup and m else np.zeros(m, dtype=bool)
    if near and m:
        clash |= _repeated(keys.ravel()).reshape(keys.shape).any(axis=1)
    special = clash | exact_hit | near_hit
    plain = ~special
    room = np.maximum(target - kept, 0)
    # plain rows of the same label before each row
    plain_before = np.zeros(m, dtype=np.int64)
    for code in np.unique(label).tolist():
        mine = label == code
        plain_before[mine] = np.cumsum(plain[mine]) - plain[mine]

    reason: list[str | None] = [None] * m
    accepted = np.zeros(m, dtype=bool)
    passed = _special_rows(
        np.flatnonzero(special).tolist(), normalized, keys if near else None, label, exact, index.near,
        exact_hit, near_hit, clash, plain_before, room, reason, accepted,
    )
    rows = np.flatnonzero(plain)
    rank = plain_before[rows].copy()
    for code, at in passed.items():  # plus the special rows of the label that passed before
        mine = label[rows] == code
        rank[mine] += np.searchsorted(np.array(at), rows[mine])
    fits = rank < room[label[rows]]
    accepted[rows[fits]] = True
    for i in rows[~fits].tolist():
        reason[i] = "quota_met"
    np.add.at(kept, label[accepted], 1)
    if dedup and accepted.any():
        at = np.flatnonzero(accepted)
        index.add(normalized.gather(at), hashes[at], keys[at] if near else None)
    return reason, accepted


def _special_rows(
    rows, normalized, keys, label, exact, near, exact_hit, near_hit, clash, plain_before, room, reason, accepted
) -> dict[int, list[int]]:
    """`DedupIndex.check` then the quota for the special rows, in order, against the kept texts
    of earlier waves (the hits) and the wave's own accepted special rows. Returns the rows that
    passed the duplicate checks, by label."""
    texts = dict(zip(rows, normalized.gather(rows).to_list(), strict=True)) if rows else {}
    key_lists = dict(zip(rows, keys[rows].tolist(), strict=True)) if keys is not None and rows else {}
    wave_exact: set[str] = set()
    buckets: dict[int, list[int]] = {}
    word_sets: dict[int, frozenset[str]] = {}
    passed: dict[int, list[int]] = {}
    for i in rows:
        if exact_hit[i]:
            reason[i] = "duplicate"
            continue
        if clash[i]:
            if exact and texts[i] in wave_exact:
                reason[i] = "duplicate"
                continue
            if near_hit[i] or (near is not None and _near_in_wave(i, texts, key_lists[i], buckets, word_sets, near)):
                reason[i] = "near_duplicate"
                continue
        elif near_hit[i]:
            reason[i] = "near_duplicate"
            continue
        code = int(label[i])
        before = passed.setdefault(code, [])
        if plain_before[i] + len(before) >= room[code]:
            reason[i] = "quota_met"
            before.append(i)
            continue
        before.append(i)
        accepted[i] = True
        if clash[i]:
            wave_exact.add(texts[i])
            for key in key_lists.get(i, ()):
                buckets.setdefault(key, []).append(i)
    return passed


def _near_in_wave(i, texts, keys, buckets, word_sets, threshold) -> bool:
    words = None
    for key in keys:
        for j in buckets.get(key, ()):
            words = words if words is not None else F.word_set(texts[i])
            other = word_sets.get(j)
            if other is None:
                other = word_sets[j] = F.word_set(texts[j])
            if F.jaccard(words, other) >= threshold:
                return True
    return False
