"""Fixed generation cases whose rows are pinned by fingerprint (tests/test_pipeline_scale.py).

`ScriptedBackend` answers each request with a text that is a fixed function of the request
(its seed and messages), never of the call order, so a shard's rows depend only on the
pipeline: the outputs cover what the filters, dedup and quotas must handle (preambles,
refusals, placeholders, loops, long and cut-off outputs, prompt echoes, copied examples, exact
and near duplicates, odd whitespace, permanent failures).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from localsynth.backends.base import Completion
from localsynth.generation.config import load_generate_config
from localsynth.generation.run import generate_shard
from localsynth.generation.rundir import Shard, ShardPaths

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti") for b in ("n", "r", "s", "t", "x", "m")]
FIXED = [
    "Meet me at the station at six, I will bring the tickets.",
    "WIN a FREE cruise! Text CRUISE to 80085 now to claim your prize.",
    "Your parcel could not be delivered, reschedule at the link below.",
    "Are we still on for dinner tomorrow night at the usual place?",
]


def scripted_text(request) -> tuple[str, str]:
    """(text, finish_reason) for a request: a fixed function of its seed and messages."""
    s = request.seed
    kind = s % 23
    words = [WORDS[(s >> (3 * i)) % len(WORDS)] for i in range(6 + s % 9)]
    plain = " ".join(words).capitalize() + "."
    user = request.messages[-1]["content"]
    if kind == 0:
        return "I'm sorry, but I cannot write that message.", "stop"
    if kind == 1:
        return f"Sure! Here is the message:\n\n\"{plain}\"", "stop"
    if kind == 2:
        return FIXED[s % len(FIXED)], "stop"  # exact duplicates across requests
    if kind == 3:
        return FIXED[s % len(FIXED)].upper().replace(",", "") + " " + words[0], "stop"  # near duplicates
    if kind == 4:
        return " ".join(user.split()[2:10]), "stop"  # echoes the prompt
    if kind == 5:
        return "Hi [Your Name], " + plain, "stop"
    if kind == 6:
        return "win win win win win win win win big", "stop"
    if kind == 7:
        long = " ".join(f"{w} {w}x {w}y." for w in words * 8)  # many sentences, over max_words
        return long, "length" if s % 2 else "stop"
    if kind == 8:
        return plain + " and then " + " ".join(words), "length"  # cut off, no sentence end
    if kind == 9:
        return "", "stop"
    if kind == 10:
        return "Text: " + plain.replace(" ", "\u00a0", 1) + "\x1c end\u2003here", "stop"  # odd whitespace
    if kind == 11:
        lines = [line for line in user.splitlines() if line.strip()]
        return lines[-2] if len(lines) > 2 else plain, "stop"  # a line of the prompt (a few-shot example)
    if kind == 13:
        return " ".join(words * 12), "stop"  # over max_words, no sentence end: too long
    if kind == 12 and s % 5 == 0:
        return "ok", "stop"  # too short
    return plain + " " + " ".join(reversed(words[: 3 + s % 4])), "stop"


class ScriptedBackend:
    name, model_name = "scripted", "scripted"

    def __init__(self, fail_every: int = 0, chunk: int = 7):
        self.fail_every, self.chunk = fail_every, chunk

    def load(self):
        pass

    def generate(self, requests, sampling):
        out = []
        for i, r in enumerate(requests):
            if self.fail_every and r.seed % self.fail_every == 0 and not r.id.endswith("/t0"):
                tokens = 5000 + r.seed % 100
                out.append((i, Completion(None, None, tokens, None, error=f"prompt_too_long: {tokens} tokens, max_model_len is 4096")))
            else:
                text, finish = scripted_text(r)
                out.append((i, Completion(text, finish, 10 + r.seed % 50, len(text.split()))))
            if len(out) == self.chunk:  # small chunks: many log batches
                yield out
                out = []
        if out:
            yield out

    def close(self):
        pass


def write_pool(path: Path) -> Path:
    pl.DataFrame({
        "text": [f"  Example ham number {i}: see you at {i} pm, {WORDS[i % 48]} {WORDS[(i * 7) % 48]} " for i in range(12)]
        + [f"Example spam {i}: WIN {WORDS[i % 48]} cash now, call 0800{i:03d}!" for i in range(12)],
        "label": ["ham"] * 12 + ["spam"] * 12,
    }).write_csv(path)
    return path


def cases(tmp: Path) -> dict[str, tuple[list[str], Shard, dict]]:
    """name -> (config overrides, shard, backend options)."""
    pool = write_pool(tmp / "pool.csv")
    few = ["mode=few-shot", f"task.few_shot.source.path={pool}", "task.few_shot.source.split=null"]
    return {
        "zero_multiturn": (["task=sms_spam", "quota.per_label=150", "task.conversation.turns=5", "quota.max_topup_rounds=3"], Shard(0, 1), {}),
        "zero_sharded": (["task=sms_spam", "quota.per_label=200", "task.conversation.turns=3", "seed=7"], Shard(1, 3), {"fail_every": 11}),
        "zero_near05_nodedup": (
            ["task=ag_news", "quota.per_label=60", "task.conversation.turns=2", "filters.near_duplicate_jaccard=0.5",
             "filters.dedup=false", "filters.cut_at_sentence=false"], Shard(0, 1), {}),
        "zero_no_near": (["task=sms_spam", "quota.per_label=80", "filters.near_duplicate_jaccard=null", "filters.drop_truncated=false",
                          "filters.max_repeated_share=1.0", "filters.min_words=0", "quota.overgenerate=2.0"], Shard(0, 1), {}),
        "few_same": (few + ["task=sms_spam", "quota.per_label=120", "task.few_shot.k=3"], Shard(0, 1), {}),
        "few_mixed_turns": (few + ["task=sms_spam", "quota.per_label=60", "task.few_shot.same_label=false", "task.few_shot.turns=3",
                                   "quota.labels=[spam]"], Shard(0, 2), {}),
    }


def run_case(tmp: Path, name: str) -> pl.DataFrame:
    overrides, shard, options = cases(tmp)[name]
    run_dir = tmp / name
    cfg = load_generate_config(None, overrides + ["progress=off", f"run_dir={run_dir}"])
    generate_shard(cfg, shard, run_dir, backend=ScriptedBackend(**options))
    return pl.read_parquet(ShardPaths(run_dir, shard).rows)


def fingerprint(rows: pl.DataFrame) -> str:
    """sha256 of the rows as canonical JSON lines, sorted by id (independent of Parquet)."""
    digest = hashlib.sha256()
    for row in rows.sort("id").to_dicts():
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
