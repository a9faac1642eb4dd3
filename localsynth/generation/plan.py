"""A wave of requests planned as columns: ids, seeds, style draws and rendered prompts.

The per-request functions of prompts.py define what a request is; this module computes the
same values for a whole wave at once. Seeds stay a hash per request (blake2b has no vectorised
form; ~1 us each), style draws run SplitMix64 in NumPy over all seeds, and a zero-shot prompt
depends only on (label, style, diversity turn), so each distinct one is rendered once by
prompts.py and gathered: a shard of 10^5 requests renders a few hundred prompts, not 10^5.
Few-shot prompts hold examples drawn per request with `random.Random(seed)` (Python's
Mersenne Twister: the stream that decides which examples), so they render per request.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from localsynth.backends.base import ChatRequest
from localsynth.generation.columns import arrow, message_lists, series, string_lists
from localsynth.generation.prompts import (
    Example,
    Message,
    sample_examples,
    system_message,
    user_turn,
)
from localsynth.tasks import TaskConfig

_M32 = np.uint64(0xFFFFFFFF)


def wave_seeds(run_seed: int, task: str, label: str, conversations: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """`prompts.derive_seed` for many requests of one label (the shared key prefix hashed once,
    the "conversation|turn" suffixes formatted by Polars; the digests joined and read as
    little-endian integers by NumPy)."""
    copy = hashlib.blake2b(f"{run_seed}|{task}|{label}|".encode(), digest_size=8).copy
    suffixes = pl.DataFrame({"c": conversations, "t": turns}).select(pl.format("{}|{}", "c", "t").cast(pl.Binary))[:, 0]
    digests = []
    for suffix in suffixes.to_list():
        h = copy()
        h.update(suffix)
        digests.append(h.digest())
    return (np.frombuffer(b"".join(digests), dtype="<u8") & np.uint64(0x7FFFFFFF)).astype(np.int64)


def _mix(state: np.ndarray) -> np.ndarray:
    z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def style_draws(seeds: np.ndarray, sizes: list[np.ndarray]) -> list[np.ndarray]:
    """`prompts.sample_style`'s value indices for every seed: attribute j draws from sizes[j]
    values (per row: the label's own list). (z * n) >> 64 is computed in 32-bit halves, exact
    for n < 2^32."""
    state, out = seeds.astype(np.uint64), []
    for n in sizes:
        state = state + np.uint64(0x9E3779B97F4A7C15)  # uint64 arrays wrap: SplitMix64's addition mod 2^64
        z, n = _mix(state), n.astype(np.uint64)
        high = (z >> np.uint64(32)) * n + (((z & _M32) * n) >> np.uint64(32))
        out.append((high >> np.uint64(32)).astype(np.int64))
    return out


@dataclass
class Wave:
    """Planned requests, in order. `history` holds the messages before this turn (None: a
    first turn, whose history is its system message)."""

    frame: pl.DataFrame  # label, conversation, turn, seed, id, style, system, user
    user_messages: list[Message]  # one per row (shared between rows with the same prompt)
    system_messages: list[Message]
    first_messages: list[list[Message]]  # [system, user] of each row
    history: list[list[Message] | None]
    examples: list[list[Example]] | None
    prompt_key: np.ndarray  # rows with equal (system, user without examples) share a key
    prompt_texts: list[tuple[str, str]]  # (system, user without examples) per key
    start: int = 0  # the wave's first request in its round

    def __len__(self) -> int:
        return self.frame.height

    def messages(self, i: int) -> list[Message]:
        past = self.history[i]
        return self.first_messages[i] if past is None else [*past, self.user_messages[i]]

    def requests(self, rows: list[int]) -> list[ChatRequest]:
        ids, seeds = self.frame["id"].to_list(), self.frame["seed"].to_list()
        firsts, users, history = self.first_messages, self.user_messages, self.history
        if len(rows) == len(self) and not any(history):  # a whole wave of first turns (most waves)
            return list(map(ChatRequest, ids, firsts, seeds))
        return [ChatRequest(ids[i], firsts[i] if history[i] is None else [*history[i], users[i]], seeds[i]) for i in rows]

    def messages_column(self) -> pl.Series:
        """List(Struct{role, content}): first turns as [system, user] pairs (no Python object
        per message), later turns (which carry their history) from their lists."""
        n = len(self)
        pair = self._first_turns()
        first = [i for i, h in enumerate(self.history) if h is None]
        if len(first) == n:
            return pair
        later = [i for i, h in enumerate(self.history) if h is not None]
        rest = message_lists([self.messages(i) for i in later]).cast(pair.dtype)
        order = np.argsort(np.array(first + later), kind="stable")
        return pl.concat([pair.gather(first), rest]).gather(order)

    def _first_turns(self) -> pl.Series:
        """Every row's [system, user] pair (right for its first turn). Without examples a first
        turn's pair is its prompt key's: built once per key and gathered (views, no copies)."""
        if self.examples is None:
            system, user = zip(*self.prompt_texts, strict=True) if self.prompt_texts else ((), ())
            keys = pl.DataFrame({"system": pl.Series(system, dtype=pl.Utf8), "user": pl.Series(user, dtype=pl.Utf8)})
            role = {name: pl.struct(role=pl.lit(name), content=name) for name in ("system", "user")}
            return keys.select(pl.concat_list(role["system"], role["user"]))[:, 0].gather(self.prompt_key)
        return _pairs(self.frame)

    def examples_column(self) -> pl.Series:
        if self.examples is not None:
            return string_lists([[e.text for e in ex] for ex in self.examples])
        return pl.repeat(pl.lit([], dtype=pl.List(pl.Utf8)), len(self), eager=True)


def _pairs(frame: pl.DataFrame) -> pl.Series:
    """[system, user] messages of each row of columns system and user, built through Arrow (a
    Polars struct expression over 10^4 rows costs several times more, measured)."""
    n = frame.height
    contents = frame.select(pl.concat_list("system", "user").explode())[:, 0].to_arrow()  # large strings
    roles = pl.Series(["system", "user"], dtype=pl.Utf8).gather(np.tile(np.array([0, 1], np.int64), n)).to_arrow()
    structs = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return series(pa.LargeListArray.from_arrays(arrow(np.arange(0, 2 * n + 1, 2), pl.Int64), structs))


def _style_columns(task: TaskConfig, labels: list[str], label_code: np.ndarray, seeds: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    names = list(task.styles)
    lists = [[c[label] if isinstance(c, dict) else c for label in labels] for c in task.styles.values()]
    sizes = [np.array([len(v) for v in per_label])[label_code] for per_label in lists]
    draws = style_draws(seeds, sizes)
    columns = {}
    for name, per_label, idx in zip(names, lists, draws, strict=True):
        flat = [v for values in per_label for v in values]
        offsets = np.cumsum([0] + [len(v) for v in per_label])[:-1]
        columns[name] = pl.Series(name, flat, dtype=pl.Utf8).gather(offsets[label_code] + idx)
    return columns, draws


def plan_wave(
    task: TaskConfig,
    run_seed: int,
    labels: list[str],
    label_code: np.ndarray,
    conversation: np.ndarray,
    turn: np.ndarray,
    history: list[list[Message] | None],
    pool: dict[str, list[str]] | None,
    system_cache: dict[tuple, Message],
) -> Wave:
    """The requests of one wave. Rows of a label are contiguous (a round is label-major)."""
    n = len(label_code)
    seeds = np.empty(n, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(label_code, prepend=-1, append=-1))
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        seeds[start:stop] = wave_seeds(run_seed, task.name, labels[label_code[start]], conversation[start:stop], turn[start:stop])
    styles, draws = _style_columns(task, labels, label_code, seeds)
    every = task.conversation.diversity_every
    diverse = (turn > 0) & (turn % every == 0) if every else np.zeros(n, dtype=bool)

    # one system message per (label, style); one user message per (label, style, diversity)
    key = label_code.astype(np.int64)
    for idx, values in zip(draws, task.styles.values(), strict=True):
        most = max(len(v) for v in values.values()) if isinstance(values, dict) else len(values)
        key = key * most + idx
    keys, first, inverse = np.unique(key * 2 + diverse, return_index=True, return_inverse=True)
    style_rows = [{name: styles[name][int(i)] for name in styles} for i in first]
    sys_of_key = []
    for i, style in zip(first.tolist(), style_rows, strict=True):
        cache_key = (labels[label_code[i]], *style.values())
        if cache_key not in system_cache:
            system_cache[cache_key] = system_message(task, cache_key[0], style)
        sys_of_key.append(system_cache[cache_key])
    inverse_list = inverse.tolist()
    system_messages = [sys_of_key[k] for k in inverse_list]
    sys_col = pl.Series([m["content"] for m in sys_of_key], dtype=pl.Utf8).gather(inverse)
    label_column = pl.Series("label", labels, dtype=pl.Utf8).gather(label_code)
    turns = turn.tolist()

    examples = None
    if pool is None:
        users = [user_turn(task, labels[label_code[i]], s, turns[i]) for i, s in zip(first.tolist(), style_rows, strict=True)]
        user_messages = [users[k] for k in inverse_list]
        # first turns with the same prompt share one messages list (requests never change them)
        pairs = [[m, u] for m, u in zip(sys_of_key, users, strict=True)]
        first_messages = [pairs[k] for k in inverse_list]
        user_col = pl.Series([m["content"] for m in users], dtype=pl.Utf8).gather(inverse)
    else:
        fs = task.few_shot
        label_names = label_column.to_list()
        style_list = pl.DataFrame(styles).to_dicts() if styles else [{}] * n
        seed_list = seeds.tolist()
        examples = [sample_examples(pool, label_names[i], fs.k, fs.same_label, random.Random(seed_list[i])) for i in range(n)]
        user_messages = [
            user_turn(task, label_names[i], style_list[i], turns[i], examples[i], with_labels=not fs.same_label)
            for i in range(n)
        ]
        user_col = pl.Series([m["content"] for m in user_messages], dtype=pl.Utf8)
        first_messages = [[m, u] for m, u in zip(system_messages, user_messages, strict=True)]

    # The echo check compares an output with its own instructions: system and last user
    # message, few-shot examples blanked (copying those is `copies_example`). In a zero-shot
    # first turn both follow from the prompt key.
    later = [i for i, h in enumerate(history) if h is not None]
    if examples is None and not later:
        prompt_key = inverse.astype(np.int64)
        prompt_texts = [(m["content"], u["content"]) for m, u in zip(sys_of_key, users, strict=True)]
    else:
        sys_text = sys_col.to_list()
        for i in later:
            sys_text[i] = history[i][0]["content"]
        user_text = user_col.to_list()
        for i, ex in enumerate(examples or ()):
            for e in ex:
                user_text[i] = user_text[i].replace(e.text.strip(), " ")
        prompts = pl.DataFrame({"s": sys_text, "u": user_text}, schema={"s": pl.Utf8, "u": pl.Utf8})
        prompt_key = prompts.select(pl.struct("s", "u").rank("dense") - 1)[:, 0].to_numpy().astype(np.int64)
        uniq = prompts.with_columns(k=prompt_key).unique("k").sort("k")
        prompt_texts = list(zip(uniq["s"].to_list(), uniq["u"].to_list(), strict=True))

    style_json = (
        pl.DataFrame(styles).select(pl.struct(pl.all()).struct.json_encode())[:, 0]
        if styles else pl.Series(["{}"] * n, dtype=pl.Utf8)
    )
    ids = pl.DataFrame({"label": label_column, "c": conversation, "t": turn}).select(
        pl.format(f"{task.name}/{{}}/c{{}}/t{{}}", "label", "c", "t")
    )[:, 0]
    frame = pl.DataFrame({
        "label": label_column,
        "conversation": pl.Series(conversation, dtype=pl.Int64),
        "turn": pl.Series(turn, dtype=pl.Int32),
        "seed": pl.Series(seeds, dtype=pl.Int64),
        "id": ids,
        "style": style_json,
        "system": sys_col,
        "user": user_col,
    })
    return Wave(frame, user_messages, system_messages, first_messages, history, examples, prompt_key, prompt_texts)
