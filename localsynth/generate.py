"""The generation stage: plan conversations -> backend -> clean, filter, dedup -> Parquet shard.

Conversations advance in lockstep: each round sends the next turn of every open conversation
as one batch, so the engine stays full while each conversation keeps its own history. A label's
conversations close once its quota of kept rows is met; when they have all closed short of it,
a top-up opens new ones (at most `quota.max_topup_rounds` times).

Everything is a function of the config and the completions received, and every request has its
own seed and id. A resumed shard replays its logged completions through the same loop and asks
the backend only for what is missing: none lost, none duplicated, and with a deterministic
backend the same rows as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from localsynth import filters as F
from localsynth.backends.base import Backend, ChatRequest, Completion
from localsynth.config import GenerateConfig
from localsynth.io import stop_here_for_tests, write_json_atomic, write_parquet_atomic
from localsynth.progress import GenerationProgress, log
from localsynth.prompts import (
    Example,
    SystemMessages,
    derive_seed,
    sample_examples,
    sample_style,
    user_turn,
)
from localsynth.rundir import (
    CompletionLog,
    Shard,
    ShardPaths,
    check_config,
    error_fix,
    prepare,
    replay_error,
    shard_lock,
)
from localsynth.schema import ROW_SCHEMA
from localsynth.shardrows import (
    FAILED,
    INVALID,
    invalid_summary,
    message_lists,
    string_lists,
    style_json,
    summarize,
)


class ShardIncomplete(RuntimeError):
    """Requests failed and the quota was not met: the shard is not marked complete."""




@dataclass
class Conversation:
    label: str
    index: int  # global: conversation k of this shard is k * shard.count + shard.index
    messages: list[dict[str, str]] = field(default_factory=list)
    turns_done: int = 0
    open: bool = True


@dataclass
class Planned:
    conversation: Conversation
    request: ChatRequest
    turn: int
    style: dict[str, str]
    examples: list[Example]


def default_run_dir(cfg: GenerateConfig) -> Path:
    return Path(cfg.run_dir or f"runs/{cfg.task.name}-{cfg.mode}")


def load_pool(cfg: GenerateConfig) -> dict[str, list[str]] | None:
    if cfg.mode != "few-shot":
        return None
    from localsynth.data import example_pool, load_source

    key = "task.few_shot.source"
    df = load_source(cfg.task.few_shot.source, key)
    return example_pool(df, cfg.task.label_names, key)


class ShardGenerator:
    def __init__(self, cfg: GenerateConfig, shard: Shard, pool: dict[str, list[str]] | None):
        self.cfg = cfg
        self.shard = shard
        self.pool = pool
        self.turns = cfg.task.conversation.turns if cfg.mode == "zero-shot" else cfg.task.few_shot.turns
        self.targets = {label: shard.share(cfg.quota.per_label) for label in cfg.labels}
        self.kept = Counter()
        self.openings = Counter()
        self.next_k = Counter()
        self.conversations: dict[str, list[Conversation]] = {label: [] for label in cfg.labels}
        self.dedup = F.DedupIndex(cfg.filters.near_duplicate_jaccard)
        self.rounds = 0
        self.system = SystemMessages(cfg.task)
        self._shingles: dict[tuple[str, str], set[tuple[str, ...]]] = {}

    # ---------------------------------------------------------------- planning

    def open_conversations(self) -> None:
        quota = self.cfg.quota
        for label in self.cfg.labels:
            missing = self.targets[label] - self.kept[label]
            if missing <= 0 or any(c.open for c in self.conversations[label]):
                continue
            if self.openings[label] > quota.max_topup_rounds:
                continue
            count = math.ceil(missing * quota.overgenerate / self.turns)
            start = self.next_k[label]
            self.conversations[label] = [
                Conversation(label, k * self.shard.count + self.shard.index) for k in range(start, start + count)
            ]
            self.next_k[label] += count
            self.openings[label] += 1

    def plan(self, conv: Conversation) -> Planned:
        task, turn = self.cfg.task, conv.turns_done
        seed = derive_seed(self.cfg.seed, task.name, conv.label, conv.index, turn)
        style = sample_style(task, seed, conv.label)
        examples: list[Example] = []
        if self.pool is not None:
            fs = task.few_shot
            examples = sample_examples(self.pool, conv.label, fs.k, fs.same_label, random.Random(seed))
        if turn == 0:
            conv.messages = [self.system(conv.label, style)]
        user = user_turn(task, conv.label, style, turn, examples, with_labels=self.pool is not None and not task.few_shot.same_label)
        request = ChatRequest(f"{task.name}/{conv.label}/c{conv.index}/t{turn}", [*conv.messages, user], seed)
        return Planned(conv, request, turn, style, examples)

    def prompt_shingles(self, p: Planned) -> set[tuple[str, ...]]:
        """Word n-grams of a request's own instructions (system and last user message, few-shot
        examples excluded: copying those is `copies_example`), cached per prompt."""
        system, user = p.request.messages[0]["content"], p.request.messages[-1]["content"]
        for example in p.examples:
            user = user.replace(example.text.strip(), " ")
        key = (system, user)
        found = self._shingles.get(key)
        if found is None:
            normalized = pl.select(F.normalize_expr(pl.lit(f"{system}\n{user}"))).item()
            found = self._shingles[key] = F.shingles(normalized)
        return found

    def next_round(self) -> list[Planned]:
        self.open_conversations()
        return [self.plan(c) for label in self.cfg.labels for c in self.conversations[label] if c.open]

    # ---------------------------------------------------------------- processing

    def process(self, planned: list[Planned], completions: list[Completion], model: str, backend: str) -> pl.DataFrame:
        """Rows for one round, with filter decisions; advances conversations and quotas."""
        cfg, n = self.cfg, len(planned)
        raw = pl.Series("raw", [c.text for c in completions], dtype=pl.Utf8)
        cleaned = F.clean(raw)
        finish = [c.finish_reason for c in completions]
        finish_col = pl.Series("finish_reason", finish, dtype=pl.Utf8)
        cut = F.cut_long_outputs(cleaned.with_columns(finish_col), cfg.filters, cfg.max_words)
        cleaned = cleaned.with_columns(cut["text"])
        # a text cut at a sentence end is complete: the truncated check applies to the rest
        effective = pl.when(cut["cut_at_sentence"]).then(pl.lit("stop")).otherwise(finish_col)
        reasons = F.stateless_reasons(cleaned.with_columns(finish_reason=effective), cfg.filters, cfg.max_words)
        normalized = cleaned.select(F.normalize_expr(pl.col("text")).alias("n"))["n"]
        near = cfg.filters.near_duplicate_jaccard
        keys = F.band_keys(normalized, near).tolist() if near else [()] * n
        example_norms = None
        if self.pool is not None:
            lists = pl.Series([[e.text for e in p.examples] for p in planned], dtype=pl.List(pl.Utf8))
            example_norms = lists.list.eval(F.normalize_expr(pl.element())).to_list()

        parse_errors = cleaned["parse_error"].to_list()
        texts = cleaned["text"].to_list()
        reasons_list, norm_list = reasons.to_list(), normalized.to_list()
        kept_flags, filter_reasons = [False] * n, [None] * n
        for i, (p, c) in enumerate(zip(planned, completions, strict=True)):
            conv = p.conversation
            if c.error is not None:
                parse_errors[i] = f"{FAILED if error_fix(c.error) is None else INVALID}: {c.error}"
                conv.open = False  # no reply to build the next turn on
                continue
            # The history holds the cleaned (and cut) text, not the raw output: a rambling
            # reply would otherwise grow every later prompt of the conversation by its length.
            history = texts[i] if texts[i] is not None else ""
            conv.messages = [*p.request.messages, {"role": "assistant", "content": history}]
            conv.turns_done += 1
            if conv.turns_done >= self.turns or not history:
                conv.open = False
            if parse_errors[i] is not None:
                continue
            reason = reasons_list[i]
            if reason is None and example_norms is not None and F.copies_example(norm_list[i], example_norms[i], cfg.filters.copy_jaccard):
                reason = "copies_example"
            if reason is None and cfg.filters.drop_prompt_echoes and F.echoes_prompt(norm_list[i], self.prompt_shingles(p)):
                reason = "echoes_prompt"
            if reason is None and (cfg.filters.dedup or cfg.filters.near_duplicate_jaccard):
                reason = self.dedup.check(norm_list[i], keys[i], cfg.filters.dedup)
            if reason is None and self.kept[p.conversation.label] >= self.targets[p.conversation.label]:
                reason = "quota_met"
            if reason is None:
                self.dedup.add(norm_list[i], keys[i])
                self.kept[conv.label] += 1
                kept_flags[i] = True
                if self.kept[conv.label] >= self.targets[conv.label]:
                    for other in self.conversations[conv.label]:
                        other.open = False
            filter_reasons[i] = reason

        rows = {
            "id": [p.request.id for p in planned],
            "task": [cfg.task.name] * n,
            "label": [p.conversation.label for p in planned],
            "text": cleaned["text"],
            "cut_at_sentence": cut["cut_at_sentence"],
            "kept": kept_flags,
            "parse_error": parse_errors,
            "filter_reason": filter_reasons,
            "mode": [cfg.mode] * n,
            "round": [self.rounds] * n,
            "conversation": [p.conversation.index for p in planned],
            "turn": [p.turn for p in planned],
            "style": style_json(planned, cfg.task.styles),
            "examples": string_lists([[e.text for e in p.examples] for p in planned]),
            "messages": message_lists([p.request.messages for p in planned]),
            "raw_output": raw,
            "finish_reason": finish,
            "prompt_tokens": [c.prompt_tokens for c in completions],
            "completion_tokens": [c.completion_tokens for c in completions],
            "model": [model] * n,
            "backend": [backend] * n,
            "seed": [p.request.seed for p in planned],
            "shard": [str(self.shard)] * n,
        }
        self.rounds += 1
        return pl.DataFrame(rows, schema=ROW_SCHEMA)


@contextmanager
def _finally_flush(completion_log: CompletionLog, progress: GenerationProgress, backend: Backend, loaded):
    finished = False
    try:
        yield
        finished = True
    finally:
        completion_log.close()  # keep every finished request, whatever stopped us
        progress.close(final_line=finished)
        if loaded():
            backend.close()


@contextmanager
def stop_on_sigterm():
    """SIGTERM (SLURM preemption, `scancel`, a time limit) stops the shard like Ctrl-C: the
    finished requests are flushed to the log and a rerun resumes from there."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_generate(
    cfg: GenerateConfig, shard: Shard, run_dir: Path | None = None, backend: Backend | None = None
) -> dict[str, Any]:
    """Generate one shard into the run directory, resuming whatever an earlier attempt did.
    Returns the shard's stats."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    paths = ShardPaths(run_dir, shard)
    check_config(paths, cfg.model_dump(mode="json"))
    if paths.done.is_file() and not paths.log_dir.exists():  # a finished shard writes nothing
        log(f"shard {shard} of {run_dir} is already complete; nothing to do")
        return json.loads(paths.stats.read_text(encoding="utf-8"))
    pool = load_pool(cfg)  # bad data is a user error: found before anything is written
    with shard_lock(paths):
        if paths.done.is_file():  # finished by the holder we waited for, or killed before the log's removal
            shutil.rmtree(paths.log_dir, ignore_errors=True)
            log(f"shard {shard} of {run_dir} is already complete; nothing to do")
            return json.loads(paths.stats.read_text(encoding="utf-8"))
        return _generate_locked(cfg, shard, paths, pool, backend)


def _generate_locked(
    cfg: GenerateConfig, shard: Shard, paths: ShardPaths, pool: dict[str, list[str]] | None, backend: Backend | None
) -> dict[str, Any]:
    prepare(paths, cfg.model_dump(mode="json"))
    if backend is None:
        from localsynth.backends import make_backend

        backend = make_backend(cfg.generator)
    max_model_len = cfg.generator.vllm.max_model_len if cfg.generator.backend == "vllm" else None
    completion_log = CompletionLog(paths.log_dir, cfg.flush_every_s, lambda error: replay_error(error, max_model_len))
    gen = ShardGenerator(cfg, shard, pool)
    total = sum(gen.targets.values())
    progress = GenerationProgress(total, f"{cfg.task.name} {cfg.mode} shard {shard}", cfg.progress, cfg.log_every_s)
    if completion_log.cached:
        log(f"resuming shard {shard}: {len(completion_log.cached)} finished requests found in {paths.log_dir}")
    loaded, frames, from_log, load_seconds, start = False, [], 0, 0.0, time.monotonic()
    with stop_on_sigterm(), _finally_flush(completion_log, progress, backend, lambda: loaded):
        while planned := gen.next_round():
            completions: list[Completion | None] = [completion_log.cached.get(p.request.id) for p in planned]
            todo = [i for i, c in enumerate(completions) if c is None]
            from_log += len(planned) - len(todo)
            if todo:
                if not loaded:
                    load_start = time.monotonic()
                    backend.load()
                    load_seconds = time.monotonic() - load_start
                    loaded = True
                subset = [planned[i].request for i in todo]
                for chunk in backend.generate(subset, cfg.generator.sampling):
                    entries = []
                    for pos, completion in chunk:
                        completions[todo[pos]] = completion
                        entries.append((subset[pos].id, completion))
                    completion_log.add(entries)
                    stop_here_for_tests("after-log-chunk")
                    progress.update(requests=len(chunk), tokens=sum(c.completion_tokens or 0 for _, c in chunk))
                completion_log.flush()
            before = sum(gen.kept.values())
            frames.append(gen.process(planned, completions, backend.model_name, backend.name))
            progress.update(kept=sum(gen.kept.values()) - before)

    rows = pl.concat(frames) if frames else pl.DataFrame(schema=ROW_SCHEMA)
    stats = summarize(rows, gen, time.monotonic() - start - load_seconds, from_log, cfg)
    stats["load_seconds"] = round(load_seconds, 3)
    stats["gpus"] = getattr(backend, "gpus", 0)
    failed = rows.filter(pl.col("parse_error").str.starts_with(f"{FAILED}:")).height
    invalid = invalid_summary(rows)
    if failed and stats["shortfall_per_label"]:
        # Not complete: the failed requests are asked again when the same command is rerun
        # (the invalid ones are not: they would fail the same way).
        write_json_atomic(paths.stats, stats)
        raise ShardIncomplete(
            f"shard {shard}: {failed} requests failed and the quota is short by {stats['shortfall_per_label']}; the finished requests are saved in "
            f"{paths.log_dir}: rerun the same command to retry the failed ones" + (f". Besides, {invalid}" if invalid else "")
        )
    empty = [label for label in cfg.labels if gen.targets[label] and not gen.kept[label]]
    if empty:
        # Nothing to train on for a label: never complete-looking, whatever the cause.
        write_json_atomic(paths.stats, stats)
        raise ShardIncomplete(
            f"shard {shard}: no text was kept for {', '.join(empty)} after {cfg.quota.max_topup_rounds} top-up "
            f"rounds (dropped: {stats['dropped']}); "
            + (invalid if invalid else f"read the raw outputs in {paths.log_dir}, then loosen the filters, fix the "
               f"prompts or use a stronger generator.model (in a new --run-dir: they are fixed per run directory)")
        )
    write_parquet_atomic(rows, paths.rows)
    write_json_atomic(paths.stats, stats)
    write_json_atomic(paths.done, {"rows": rows.height, "kept": stats["kept"], "shard": str(shard)})
    stop_here_for_tests("after-done")
    completion_log.remove()
    if invalid:
        log(f"warning: shard {shard}: {invalid}")
    if stats["shortfall_per_label"]:
        log(f"warning: shortfall after {cfg.quota.max_topup_rounds} top-up rounds: {stats['shortfall_per_label']}")
    return stats
