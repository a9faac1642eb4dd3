"""Pure functions that turn a task config into chat messages.

Zero-shot (the paper's three prompt parts): a system message with the context prompt (the
role), then user turns with the data-generation prompt; every `diversity_every` generations the
user turn also carries the diversity prompt, in the same conversation, so the model can see what
it wrote before. Few-shot adds k real examples, re-sampled for every request, with an
instruction to imitate them without copying or rewriting them.

Everything random is driven by the request's own seed, so a request renders the same way in
every run, on every machine, however the work was sharded or resumed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from localsynth.tasks import TaskConfig

Message = dict[str, str]


def derive_seed(run_seed: int, task: str, label: str, conversation: int, turn: int) -> int:
    """A request's own seed: stable across processes (unlike `hash()`), 31 bits so every
    backend and server accepts it."""
    key = f"{run_seed}|{task}|{label}|{conversation}|{turn}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str


def sample_style(task: TaskConfig, seed: int, label: str) -> dict[str, str]:
    """One value per style attribute (from the label's own values where the attribute is given
    per label), drawn with SplitMix64 from the request seed: the same draw everywhere, and ~10x
    cheaper than seeding a `random.Random` for two choices."""
    style, state = {}, seed
    for name, choices in task.styles.items():
        values = choices[label] if isinstance(choices, dict) else choices
        state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        style[name] = values[((z ^ (z >> 31)) * len(values)) >> 64]
    return style


def sample_examples(
    pool: Mapping[str, Sequence[str]], label: str, k: int, same_label: bool, rng: random.Random
) -> list[Example]:
    """k real examples without replacement: from the target label, or from all labels."""
    if same_label:
        texts = pool.get(label, ())
        chosen = rng.sample(range(len(texts)), min(k, len(texts)))
        return [Example(texts[i], label) for i in chosen]
    flat = [(name, i) for name, texts in pool.items() for i in range(len(texts))]
    chosen = rng.sample(range(len(flat)), min(k, len(flat)))
    return [Example(pool[flat[j][0]][flat[j][1]], flat[j][0]) for j in chosen]


def template_values(task: TaskConfig, label: str, style: Mapping[str, str]) -> dict[str, object]:
    description = next(item.description for item in task.labels if item.name == label)
    return {
        "label": label,
        "label_description": description,
        "text_kind": task.text_kind,
        "max_words": task.max_words,
        "style": "; ".join(f"{name}: {value}" for name, value in style.items()),
        **style,
    }


def format_examples(task: TaskConfig, examples: Sequence[Example], with_labels: bool) -> str:
    template = task.prompts.example_with_label if with_labels else task.prompts.example
    return "\n".join(
        template.format(i=i, text=ex.text.strip(), label=ex.label) for i, ex in enumerate(examples, start=1)
    )


def system_message(task: TaskConfig, label: str, style: Mapping[str, str]) -> Message:
    return {"role": "system", "content": task.prompts.context.format(**template_values(task, label, style))}


class SystemMessages:
    """System messages by (label, style): most context prompts use neither, so a shard
    renders a handful instead of one per conversation."""

    def __init__(self, task: TaskConfig):
        self.task = task
        self.cache: dict[tuple, Message] = {}

    def __call__(self, label: str, style: Mapping[str, str]) -> Message:
        key = (label, *style.values())
        message = self.cache.get(key)
        if message is None:
            message = self.cache[key] = system_message(self.task, label, style)
        return message


def user_turn(
    task: TaskConfig,
    label: str,
    style: Mapping[str, str],
    turn: int,
    examples: Sequence[Example] = (),
    with_labels: bool = False,
) -> Message:
    """The user message of turn `turn` (0-based) of a conversation."""
    values = template_values(task, label, style)
    parts = []
    every = task.conversation.diversity_every
    if turn > 0 and every and turn % every == 0:
        parts.append(task.prompts.diversity.format(**values))
    if examples:
        values = {**values, "k": len(examples), "examples": format_examples(task, examples, with_labels)}
        parts.append(task.prompts.few_shot.format(**values))
    parts.append(task.prompts.generation.format(**values))
    return {"role": "user", "content": "\n\n".join(p.strip() for p in parts)}
