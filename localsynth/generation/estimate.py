"""`--dry-run`: what a generation run will ask for, before it asks."""

from __future__ import annotations

import math
from typing import Any

from localsynth.generation.config import GenerateConfig
from localsynth.generation.run import ShardGenerator, load_pool
from localsynth.generation.rundir import Shard

CHARS_PER_TOKEN = 4  # a rough English average; the real counts land in the shard stats


def estimate(cfg: GenerateConfig, shard: Shard) -> dict[str, Any]:
    """Requests and tokens of the first pass (top-ups come on top), one rendered prompt, and
    the API cost when prices are configured."""
    gen = ShardGenerator(cfg, shard, load_pool(cfg))
    first = gen.next_round()
    turns = gen.turns
    conversations = sum(math.ceil(t * cfg.quota.overgenerate / turns) for t in gen.targets.values() if t > 0)
    requests = conversations * turns
    completion_per_turn = min(cfg.generator.sampling.max_tokens, math.ceil(cfg.task.max_words * 1.4))
    prompt_tokens = 0
    for p in first:
        base = sum(len(m["content"]) for m in p.request.messages) / CHARS_PER_TOKEN
        # turn t re-sends the history: t earlier user turns and t replies
        user = len(p.request.messages[-1]["content"]) / CHARS_PER_TOKEN
        prompt_tokens += sum(base + t * (user + completion_per_turn) for t in range(turns))
    out: dict[str, Any] = {
        "shard": str(shard),
        "labels": len(gen.targets),
        "rows_wanted": sum(gen.targets.values()),
        "requests_first_pass": requests,
        "conversations": conversations,
        "turns_per_conversation": turns,
        "estimated_prompt_tokens": int(prompt_tokens),
        "estimated_completion_tokens": requests * completion_per_turn,
        "example_messages": first[0].request.messages if first else [],
    }
    price = cfg.generator.pricing
    if cfg.generator.backend != "openai":
        out["estimated_cost_usd"] = None  # a local engine: compute time, not per-token prices
        out["cost_note"] = f"no API cost: the {cfg.generator.backend} backend runs the model on this machine"
    elif price.input_per_million is not None or price.output_per_million is not None:
        out["estimated_cost_usd"] = round(
            out["estimated_prompt_tokens"] / 1e6 * (price.input_per_million or 0)
            + out["estimated_completion_tokens"] / 1e6 * (price.output_per_million or 0),
            4,
        )
    return out
