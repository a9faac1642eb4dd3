import itertools

import polars as pl
import pytest

from localsynth.generation import filters as F
from localsynth.generation.config import Filters


def test_clean_strips_preambles_prefixes_and_quotes():
    raw = pl.Series(["Sure! Here is a message:\n\"Win a prize now\"", "Text: hello there friend", "   ", None, "plain"])
    out = F.clean(raw)
    assert out["text"].to_list() == ["Win a prize now", "hello there friend", None, None, "plain"]
    assert out["parse_error"].to_list() == [None, None, "empty_output", "empty_output", None]


def test_stateless_reasons():
    df = pl.DataFrame(
        {
            "text": ["one two three four", "cut off text here now", "I'm sorry, I can't help", "two words", " ".join(f"w{i}" for i in range(50)), None],
            "finish_reason": ["stop", "length", "stop", "stop", "stop", "stop"],
        }
    )
    reasons = F.stateless_reasons(df, Filters(min_words=3), max_words=40).to_list()
    assert reasons == [None, "truncated", "refusal", "too_short", "too_long", None]
    keep_truncated = F.stateless_reasons(df, Filters(min_words=3, drop_truncated=False), max_words=40).to_list()
    assert keep_truncated[1] is None


def test_clean_strips_header_lines_and_trailing_notes():
    raw = pl.Series([
        "Sender: a bank\nTone: urgent\nYour account is locked, call 0800 123 now",
        "Meet you at 6 by the station?\n\nThis message is casual and friendly, as asked.",
        "Win a car today!\n\nNote: this is a fictional spam message.",
    ])
    assert F.clean(raw)["text"].to_list() == [
        "Your account is locked, call 0800 123 now", "Meet you at 6 by the station?", "Win a car today!",
    ]


def test_placeholders_and_loops_are_dropped():
    df = pl.DataFrame({
        "text": ["Hi [Your Name], your parcel is waiting", "I promise, I promise, I promise, I promise you",
                 "Dinner at 8 at the usual place, bring the wine please"],
        "finish_reason": ["stop"] * 3,
    })
    assert F.stateless_reasons(df, Filters(), max_words=40).to_list() == ["placeholder", "repetitive", None]
    assert F.stateless_reasons(df, Filters(max_repeated_share=1.0), max_words=40).to_list()[1] is None


def test_cut_at_sentence_keeps_the_last_complete_sentence_inside_the_bounds():
    text = "Running late. Be there at 7! Save me a seat, and tell Sam that the"
    assert F.cut_at_sentence(text, min_words=3, max_words=40) == "Running late. Be there at 7!"
    assert F.cut_at_sentence(text, min_words=1, max_words=3) == "Running late."
    assert F.cut_at_sentence(text, min_words=8, max_words=40) is None  # no sentence end that late
    assert F.cut_at_sentence('He said "stop." Then he left and the', 2, 40) == 'He said "stop."'
    df = pl.DataFrame({"text": [text, "Short and done.", text], "finish_reason": ["length", "stop", "stop"]})
    out = F.cut_long_outputs(df, Filters(min_words=3), max_words=40)
    assert out["text"].to_list() == ["Running late. Be there at 7!", "Short and done.", text]
    assert out["cut_at_sentence"].to_list() == [True, False, False]
    too_long = pl.DataFrame({"text": ["One two three. Four five six seven eight."], "finish_reason": ["stop"]})
    assert F.cut_long_outputs(too_long, Filters(min_words=1), max_words=4)["text"].to_list() == ["One two three."]
    assert F.cut_long_outputs(df, Filters(cut_at_sentence=False), 40)["cut_at_sentence"].to_list() == [False] * 3


def test_prompt_echo():
    prompt = F.shingles("write one sms message from a shop an unsolicited sms message such as an advertisement")
    assert F.echoes_prompt("an unsolicited sms message such as an advertisement", prompt)
    assert not F.echoes_prompt("big sale at the shop today only call 0800 now", prompt)


def _norm(texts):
    return pl.DataFrame({"t": texts}).select(F.normalize_expr(pl.col("t")))["t"]


def test_exact_and_near_duplicates():
    texts = [
        "Win a FREE holiday to Spain! Call now to claim your prize today",
        "win a free holiday to spain call now to claim your prize today!!",  # exact after normalising
        "Win a free holiday to Spain, call now to claim your prize today please",  # near: 11/12 words
        "Meeting moved to 3pm tomorrow, bring the quarterly report and slides",
    ]
    norms = _norm(texts)
    keys = F.band_keys(norms).tolist()
    index = F.DedupIndex(near_threshold=0.8)
    decisions = []
    for n, k in zip(norms.to_list(), keys):
        reason = index.check(n, k, exact=True)
        decisions.append(reason)
        if reason is None:
            index.add(n, k)
    assert decisions == [None, "duplicate", "near_duplicate", None]


def test_near_duplicate_detection_has_no_false_positives_and_high_recall():
    words = [f"w{i}" for i in range(400)]
    base = [" ".join(words[i * 20 : i * 20 + 20]) for i in range(20)]  # disjoint word sets
    variants = [b + " extra" for b in base]  # Jaccard 20/21 = 0.95 with its base
    far = [" ".join(words[i * 20 : i * 20 + 10] + words[(i + 1) % 20 * 20 : (i + 1) % 20 * 20 + 10]) for i in range(20)]
    norms = _norm(base + variants + far)
    keys = F.band_keys(norms).tolist()
    index = F.DedupIndex(near_threshold=0.8)
    for n, k in zip(norms.to_list()[:20], keys[:20]):
        assert index.check(n, k, exact=True) is None
        index.add(n, k)
    flagged = [index.check(n, k, exact=True) for n, k in zip(norms.to_list()[20:40], keys[20:40])]
    assert flagged.count("near_duplicate") >= 19  # LSH recall at Jaccard 0.95 is ~1
    # half-overlapping texts (Jaccard 1/3) are candidates at most, never flagged: exact check decides
    assert all(index.check(n, k, exact=True) is None for n, k in zip(norms.to_list()[40:], keys[40:]))


def test_jaccard_matches_brute_force():
    sets = [frozenset(s) for s in (["a", "b"], ["b", "c"], ["a", "b", "c"], [])]
    for a, b in itertools.product(sets, sets):
        expected = 1.0 if not (a | b) else len(a & b) / len(a | b)
        assert F.jaccard(a, b) == expected


def test_copies_example():
    examples = ["call now to win a prize", "see you at the pub tonight"]
    assert F.copies_example("hey call now to win a prize ok", examples, 0.7)  # contains an example
    assert F.copies_example("see you at the pub tonight mate", examples, 0.7)
    assert not F.copies_example("the meeting is at noon", examples, 0.7)


def _pairs_at(jaccard: float, n: int, union: int = 40, offset: int = 0) -> tuple[list[str], list[str]]:
    """n pairs of texts whose word sets have exactly this Jaccard similarity (shared / union
    words), each pair on its own vocabulary (no two pairs share a word)."""
    shared = round(jaccard * union)
    assert abs(shared / union - jaccard) < 1e-9
    own_a = (union - shared) // 2
    firsts, seconds = [], []
    for p in range(n):
        words = [f"p{offset + p}w{i}" for i in range(union)]
        common, rest = words[:shared], words[shared:]
        firsts.append(" ".join(common + rest[:own_a]))
        seconds.append(" ".join(rest[own_a:] + common[::-1]))  # another order: sets, not sequences
    return firsts, seconds


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.7, 0.8, 0.9])
def test_near_duplicate_recall_at_the_threshold(threshold):
    """Pairs exactly at the threshold are found (recall >= 0.98: the layout promises 0.99), and
    pairs just below it never are (the exact Jaccard decides)."""
    n = 500
    firsts, seconds = _pairs_at(threshold, n)
    below_a, below_b = _pairs_at(threshold - 0.025, n, offset=n)
    texts = firsts + below_a
    keys = F.band_keys(_norm(texts), threshold).tolist()
    index = F.DedupIndex(near_threshold=threshold)
    for text, k in zip(texts, keys):
        assert index.check(text, k, exact=True) is None  # no two of these are alike
        index.add(text, k)
    found = [index.check(t, k, exact=True) for t, k in zip(seconds, F.band_keys(_norm(seconds), threshold).tolist())]
    assert found.count("near_duplicate") / n >= 0.98
    assert set(found) <= {"near_duplicate", None}
    below = [index.check(t, k, exact=True) for t, k in zip(below_b, F.band_keys(_norm(below_b), threshold).tolist())]
    assert below == [None] * n  # zero false positives


def test_lsh_layout_meets_its_promise():
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        bands, rows = F.lsh_layout(threshold)
        assert 1 - (1 - threshold**rows) ** bands >= F.LSH_RECALL
        assert 1 - (1 - (threshold / 2) ** rows) ** bands <= F.LSH_HALF_THRESHOLD_CANDIDATES
        assert bands <= F.MAX_BANDS


def test_band_keys_are_a_fixed_function_of_the_words():
    """The keys come from FNV-1a of the UTF-8 bytes and a fixed SplitMix64 stream, never from a
    library's hash (polars' .hash is not promised stable across versions): pinned values."""

    def fnv(text: str) -> int:
        h = 0xCBF29CE484222325
        for byte in text.encode():
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h

    words = pl.Series(["", "a", "héllo", "x" * 70, "prize", "call"])
    assert F.fnv1a_64(words[1:]).tolist() == [fnv(w) for w in words[1:]]  # a slice: the Arrow offset
    assert F.fnv1a_64(words).tolist() == [fnv(w) for w in words]
    keys = F.band_keys(_norm(["Win a FREE prize, call now", ""]), 0.8)
    assert keys.shape == (2, 9)
    assert keys[0, :3].tolist() == PINNED_KEYS


PINNED_KEYS = [16707605114925659160, 16179972468296049096, 7836158631431312912]
