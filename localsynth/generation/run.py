"""The generation stage: plan conversations -> backend -> clean, filter, dedup -> Parquet shard.

ConversationState advance in lockstep: each round sends the next turn of every open conversation
as one batch, so the engine stays full while each conversation keeps its own history. A label's
conversations close once its quota of kept rows is met; when they have all closed short of it,
a top-up opens new ones (at most `quota.max_topup_rounds` times).

Everything is a function of the config and the completions received, and every request has its
own seed and id. A resumed shard replays its logged completions through the same loop and asks
the backend only for what is missing: none lost, none duplicated, and with a deterministic
backend the same rows as an uninterrupted run.

The work is columnar: a round is planned at once (which conversations, in order) and then
rendered, sent, screened, decided and written in waves of at most WAVE requests, so memory
holds a few waves, not the shard. The stages of successive waves overlap on threads (the next
wave rendered, earlier ones screened, the last one written, while the main thread sends and
decides in order). Splitting a round into waves changes no decision: the stateful checks run
in request order across waves, and a conversation's next turn waits for the round.
"""

from __future__ import annotations

import collections
import json
import math
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from localsynth.backends.base import Backend, ChatRequest
from localsynth.generation import filters as F
from localsynth.generation.accept import KeptIndex, decide
from localsynth.generation.completions import CompletionLog, completion_frame, replay_error
from localsynth.generation.config import GenerateConfig
from localsynth.generation.gcpause import gc_paused
from localsynth.generation.guards import finally_flush, stop_on_sigterm
from localsynth.generation.judge import BackendJudge
from localsynth.generation.plan import Wave, plan_wave
from localsynth.generation.rows import ShardWriter, Tally, invalid_summary, summarize
from localsynth.generation.rundir import Shard, ShardPaths, check_config, prepare, shard_lock
from localsynth.generation.screen import EchoCheck, Screened, screen
from localsynth.io import stop_here_for_tests, write_json_atomic
from localsynth.progress import GenerationProgress, log
from localsynth.schema import COMPLETION_SCHEMA, ROW_SCHEMA

# Requests per wave: a multiple of every power-of-two hf.batch_size. A wave is screened while
# the next one is sent, so smaller waves overlap more; an engine drains at the end of each (its
# last sequences run with the batch emptying: about half a generation length, <1% of a wave of
# 16,384 at vLLM's 256 sequences at a time).
WAVE = 16_384
# Threads that screen waves (stateless work, mostly in Polars and NumPy) while the main thread
# sends the next waves and decides the earlier ones in order: two keep both cores busy.
SCREENERS = 2


class ShardIncomplete(RuntimeError):
    """Requests failed and the quota was not met: the shard is not marked complete."""


@dataclass
class ConversationState:
    """One label's conversations: conversation k of this shard is k * shard.count + shard.index."""

    index: np.ndarray  # int64, global
    turns_done: np.ndarray  # int32
    open: np.ndarray  # bool
    history: list  # messages so far per conversation (multi-turn only; None before the first turn)


@dataclass
class Planned:
    request: ChatRequest


def load_pool(cfg: GenerateConfig) -> dict[str, list[str]] | None:
    if cfg.mode != "few-shot":
        return None
    from localsynth.data.sources import example_pool, load_source

    key = "task.few_shot.source"
    df = load_source(cfg.task.few_shot.source, key)
    return example_pool(df, cfg.task.label_names, key)


def _empty(n: int) -> ConversationState:
    return ConversationState(np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, bool), [None] * n)


class ShardGenerator:
    def __init__(self, cfg: GenerateConfig, shard: Shard, pool: dict[str, list[str]] | None):
        self.cfg = cfg
        self.shard = shard
        self.pool = pool
        self.turns = cfg.task.conversation.turns if cfg.mode == "zero-shot" else cfg.task.few_shot.turns
        self.labels = list(cfg.labels)
        self.targets = {label: shard.share(cfg.quota.per_label) for label in self.labels}
        self.target_n = np.array([self.targets[label] for label in self.labels], dtype=np.int64)
        self.kept_n = np.zeros(len(self.labels), dtype=np.int64)
        self.openings = np.zeros(len(self.labels), dtype=np.int64)
        self.next_k = np.zeros(len(self.labels), dtype=np.int64)
        self.conversations = [_empty(0) for _ in self.labels]
        self.index = KeptIndex(cfg.filters.near_duplicate_jaccard)
        self.rounds = 0
        self.system_cache: dict = {}
        self.echo = EchoCheck()
        self.round: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.judge: BackendJudge | None = None  # filters.judge: drop

    @property
    def kept(self) -> dict[str, int]:
        return {label: int(n) for label, n in zip(self.labels, self.kept_n, strict=True)}

    # ---------------------------------------------------------------- planning

    def open_conversations(self) -> None:
        quota = self.cfg.quota
        for code, conv in enumerate(self.conversations):
            missing = int(self.target_n[code] - self.kept_n[code])
            if missing <= 0 or conv.open.any() or self.openings[code] > quota.max_topup_rounds:
                continue
            count = math.ceil(missing * quota.overgenerate / self.turns)
            k = np.arange(self.next_k[code], self.next_k[code] + count, dtype=np.int64)
            self.conversations[code] = _empty(count)
            self.conversations[code].index = k * self.shard.count + self.shard.index
            self.conversations[code].open[:] = True
            self.next_k[code] += count
            self.openings[code] += 1

    def plan_round(self) -> int:
        """Choose the requests of the next round (label-major, conversation order): how many."""
        self.open_conversations()
        opened = [np.flatnonzero(conv.open) for conv in self.conversations]
        codes = np.repeat(np.arange(len(self.labels)), [len(o) for o in opened])
        self.round = (codes, np.concatenate(opened) if opened else np.zeros(0, np.int64))
        return len(codes)

    def waves(self) -> Iterator[Wave]:
        """The round's requests, rendered a wave at a time: the next wave on a second thread
        while the caller sends and decides this one (whose `_advance` touches only its own
        conversations: the next wave's inputs are read before and are the same after)."""
        bounds = wave_bounds(len(self.round[0]))
        with ThreadPoolExecutor(1, thread_name_prefix="plan") as pool:
            ahead = pool.submit(self._plan, *bounds[0]) if bounds else None
            for i, (start, _) in enumerate(bounds):
                wave = ahead.result()
                ahead = pool.submit(self._plan, *bounds[i + 1]) if i + 1 < len(bounds) else None
                wave.start = start
                yield wave

    def _plan(self, start: int, stop: int) -> Wave:
        codes, positions = self.round
        code, pos = codes[start:stop], positions[start:stop]
        index, turn, history = np.empty(len(code), np.int64), np.empty(len(code), np.int32), []
        for c in np.unique(code).tolist():
            at = code == c
            conv = self.conversations[c]
            index[at], turn[at] = conv.index[pos[at]], conv.turns_done[pos[at]]
            history += [conv.history[p] for p in pos[at].tolist()]
        with gc_paused():
            return plan_wave(self.cfg.task, self.cfg.seed, self.labels, code, index, turn, history, self.pool, self.system_cache)

    def next_round(self) -> list[Planned]:
        """The next round's requests (for `--dry-run`)."""
        self.plan_round()
        return [Planned(r) for wave in self.waves() for r in wave.requests(list(range(len(wave))))]

    # ---------------------------------------------------------------- processing

    def screen_wave(self, wave: Wave, completions: pl.DataFrame) -> Screened:
        """The wave's stateless checks and MinHash band keys: nothing here depends on earlier
        waves' decisions, so waves are screened on SCREENERS threads while the main one decides
        the earlier ones (the echo check's prompt cache takes a lock)."""
        with gc_paused():
            checked = screen(self.cfg, wave, completions, self.echo)
            near = self.cfg.filters.near_duplicate_jaccard
            checked.keys = F.minhash_band_keys(checked.word_hashes, checked.word_counts, near) if near else None
            # the prompts' columns: Arrow work, no decision in them
            checked.examples, checked.messages = wave.examples_column(), wave.messages_column()
            return checked

    def decide_wave(self, wave: Wave, checked: Screened, completions: pl.DataFrame, model: str, backend: str) -> pl.DataFrame:
        """Rows for one screened wave, with filter decisions; advances conversations and quotas.
        Waves are decided in order: the duplicate checks and quotas see every earlier row."""
        cfg, n = self.cfg, len(wave)
        code = self.round[0][wave.start : wave.start + n]
        eligible, normalized, reason, keys = checked.eligible, checked.normalized, checked.reason, checked.keys
        if self.judge is not None and len(eligible):  # before dedup and quotas: a mismatch takes no room
            mismatch = self.judge.mismatches(checked.text.gather(eligible).to_list(), code[eligible], self.labels)
            for i in eligible[mismatch].tolist():
                reason[i] = "judge_mismatch"
            eligible, normalized = eligible[~mismatch], normalized.filter(pl.Series(~mismatch))
            keys = keys[~mismatch] if keys is not None else None
        with gc_paused():
            reasons, accepted = decide(
                self.index, normalized, keys, code[eligible], self.kept_n, self.target_n, cfg.filters.dedup
            )
            for i, r in zip(eligible.tolist(), reasons, strict=True):
                reason[i] = r
            kept = np.zeros(n, dtype=bool)
            kept[eligible[accepted]] = True
            self._advance(wave, code, completions["error"].is_null().to_numpy(), checked.text)

            rows = wave.frame.select(
                "id",
                pl.lit(cfg.task.name).alias("task"),
                "label",
                checked.text.alias("text"),
                checked.cut_at_sentence.alias("cut_at_sentence"),
                pl.Series("kept", kept),
                checked.parse_error.alias("parse_error"),
                pl.Series("filter_reason", reason, dtype=pl.Utf8),
                pl.lit(cfg.mode).alias("mode"),
                pl.lit(self.rounds, dtype=pl.Int32).alias("round"),
                "conversation",
                "turn",
                "style",
                checked.examples.alias("examples"),
                checked.messages.alias("messages"),
                completions["raw_output"].alias("raw_output"),
                completions["finish_reason"].alias("finish_reason"),
                completions["prompt_tokens"].alias("prompt_tokens"),
                completions["completion_tokens"].alias("completion_tokens"),
                pl.lit(model).alias("model"),
                pl.lit(backend).alias("backend"),
                "seed",
                pl.lit(str(self.shard)).alias("shard"),
            )
            return rows.cast(ROW_SCHEMA)

    def _advance(self, wave: Wave, code: np.ndarray, answered: np.ndarray, text: pl.Series) -> None:
        """Next turn of the answered conversations; close the failed, the finished, the
        emptied, and every one of a label whose quota is met."""
        pos = self.round[1][wave.start : wave.start + len(wave)]
        texts = text.to_list() if self.turns > 1 else None
        empty = text.is_null().to_numpy()
        for c in np.unique(code).tolist():
            at = np.flatnonzero(code == c)
            conv, p = self.conversations[c], pos[at]
            ok = answered[at]
            conv.turns_done[p[ok]] += 1
            conv.open[p] = ok & (conv.turns_done[p] < self.turns) & ~empty[at]
            if texts is not None:
                # The history holds the cleaned (and cut) text, not the raw output: a rambling
                # reply would otherwise grow every later prompt of the conversation by its length.
                for i, q in zip(at[ok].tolist(), p[ok].tolist(), strict=True):
                    conv.history[q] = [*wave.messages(i), {"role": "assistant", "content": texts[i] or ""}]
        for c in np.flatnonzero(self.kept_n >= self.target_n).tolist():
            self.conversations[c].open[:] = False


def wave_bounds(total: int) -> list[tuple[int, int]]:
    """(start, stop) of each wave of a round of `total` requests."""
    return [(start, min(start + WAVE, total)) for start in range(0, total, WAVE)]


def generate_shard(
    cfg: GenerateConfig, shard: Shard, run_dir: Path | None = None, backend: Backend | None = None
) -> dict[str, Any]:
    """Generate one shard into the run directory, resuming whatever an earlier attempt did.
    Returns the shard's stats."""
    run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
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
    state = {"loaded": False, "load_seconds": 0.0}
    if cfg.filters.judge == "drop":
        gen.judge = BackendJudge(cfg, backend, lambda: _load(backend, state))
    total = sum(gen.targets.values())
    progress = GenerationProgress(total, f"{cfg.task.name} {cfg.mode} shard {shard}", cfg.progress, cfg.log_every_s)
    if completion_log.table.height:
        log(f"resuming shard {shard}: {completion_log.table.height} finished requests found in {paths.log_dir}")
    writer, tally = ShardWriter(paths.rows), Tally()
    screener = ThreadPoolExecutor(SCREENERS, thread_name_prefix="screen")
    start = time.monotonic()
    try:
        with stop_on_sigterm(), finally_flush(completion_log, progress, backend, lambda: state["loaded"]):
            while gen.plan_round():
                # waves are screened on other threads while the main one asks for the next
                # waves' completions and decides the earlier ones, in order
                pending: collections.deque = collections.deque()
                for wave in gen.waves():
                    completions, from_log = _complete(wave, completion_log, backend, cfg, progress, state)
                    pending.append((wave, completions, from_log, screener.submit(gen.screen_wave, wave, completions)))
                    if len(pending) > SCREENERS:
                        _decide(gen, pending.popleft(), backend, writer, tally, progress)
                while pending:
                    _decide(gen, pending.popleft(), backend, writer, tally, progress)
                gen.rounds += 1
        return _finish(cfg, shard, paths, gen, tally, writer, completion_log, backend, state, start)
    finally:
        screener.shutdown(cancel_futures=True)
        writer.abort()  # after a commit: nothing left to remove


def _decide(gen: ShardGenerator, pending: tuple, backend: Backend, writer: ShardWriter, tally: Tally, progress: GenerationProgress) -> None:
    """Decide a screened wave (the oldest pending one) and hand its rows to the writer."""
    wave, completions, from_log, screened = pending
    before = int(gen.kept_n.sum())
    rows = gen.decide_wave(wave, screened.result(), completions, backend.model_name, backend.name)
    with gc_paused():
        writer.write(rows)
        tally.add(rows, from_log)
    progress.update(kept=int(gen.kept_n.sum()) - before)


def _complete(
    wave: Wave, completion_log: CompletionLog, backend: Backend, cfg: GenerateConfig, progress: GenerationProgress, state: dict
) -> tuple[pl.DataFrame, int]:
    """The wave's completions in its order: logged ones replayed, the others asked for and
    logged chunk by chunk before they count. Also how many came from the log."""
    ids = wave.frame["id"]
    logged = completion_log.lookup(ids) if completion_log.table.height else None
    todo = np.flatnonzero(logged["_logged"].is_null().to_numpy()) if logged is not None else np.arange(len(wave))
    parts = [] if logged is None else [logged.with_row_index("pos").filter(pl.col("_logged").is_not_null()).drop("_logged")]
    if len(todo):
        _load(backend, state)
        with gc_paused():
            requests = wave.requests(todo.tolist())
        for chunk in backend.generate(requests, cfg.generator.sampling):
            with gc_paused():
                positions, answers = zip(*chunk, strict=True) if chunk else ((), ())
                at = np.array(positions, dtype=np.int64)
                frame = completion_frame(ids.gather(todo[at]), answers)
                completion_log.add_frame(frame)
                stop_here_for_tests("after-log-chunk")
                progress.update(requests=len(chunk), tokens=int(frame["completion_tokens"].sum() or 0))
                parts.append(frame.with_columns(pos=pl.Series(todo[at], dtype=pl.UInt32)).select("pos", *COMPLETION_SCHEMA))
        completion_log.flush()
    completions = pl.concat(parts).sort("pos").cast(COMPLETION_SCHEMA)
    if completions.height != len(wave) or not completions["id"].equals(ids.rename("id")):
        raise RuntimeError(f"backend {backend.name} did not answer every request of the wave exactly once")
    return completions, len(wave) - len(todo)


def _load(backend: Backend, state: dict) -> None:
    """Start the engine on first use (a shard replayed whole from its log never starts it)."""
    if not state["loaded"]:
        load_start = time.monotonic()
        backend.load()
        state["load_seconds"] = time.monotonic() - load_start
        state["loaded"] = True


def _finish(cfg, shard, paths, gen, tally, writer, completion_log, backend, state, start) -> dict[str, Any]:
    stats = summarize(tally, gen, time.monotonic() - start - state["load_seconds"], cfg)
    stats["load_seconds"] = round(state["load_seconds"], 3)
    stats["gpus"] = getattr(backend, "gpus", 0)
    invalid = invalid_summary(tally.invalid)
    if tally.failed and stats["shortfall_per_label"]:
        # Not complete: the failed requests are asked again when the same command is rerun
        # (the invalid ones are not: they would fail the same way).
        write_json_atomic(paths.stats, stats)
        raise ShardIncomplete(
            f"shard {shard}: {tally.failed} requests failed and the quota is short by {stats['shortfall_per_label']}; the finished requests are saved in "
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
    writer.commit(pl.DataFrame(schema=ROW_SCHEMA))
    write_json_atomic(paths.stats, stats)
    write_json_atomic(paths.done, {"rows": tally.requests, "kept": stats["kept"], "shard": str(shard)})
    stop_here_for_tests("after-done")
    completion_log.remove()
    if invalid:
        log(f"warning: shard {shard}: {invalid}")
    if stats["shortfall_per_label"]:
        log(f"warning: shortfall after {cfg.quota.max_topup_rounds} top-up rounds: {stats['shortfall_per_label']}")
    return stats
