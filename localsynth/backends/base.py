"""The backend protocol: load, generate a batch of chat requests, close."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from localsynth.backends.settings import GeneratorConfig, Sampling
from localsynth.errors import UserError

Message = dict[str, str]


@dataclass(slots=True)
class ChatRequest:
    id: str
    messages: list[Message]
    seed: int


@dataclass(slots=True)
class Completion:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


Results = Iterator[list[tuple[int, Completion]]]


class Backend(Protocol):
    name: str
    model_name: str

    def load(self) -> None:
        """Start the engine / check the server. Raises UserError for bad settings."""

    def generate(self, requests: Sequence[ChatRequest], sampling: Sampling) -> Results:
        """Yield lists of (position in `requests`, completion) as they finish; every position
        exactly once. A failed request yields a Completion with `error` set, never raises."""

    def close(self) -> None:
        """Free the engine, connections and memory."""


class InProcessBackend:
    """What the backends that load the model into this process (hf, vllm) set up alike."""

    gpus = 0  # GPUs the loaded model holds (for GPU-hour accounting)

    def __init__(self, cfg: GeneratorConfig, settings):
        from localsynth.backends.models import DEFAULT_MODEL

        self.cfg, self.settings = cfg, settings
        self.model_name = cfg.model or DEFAULT_MODEL
        self.tokenizer = None


def group_identical(requests: Sequence[ChatRequest]) -> list[list[int]]:
    """Positions of requests whose messages are identical, in first-seen order: such a group
    can be one request with n > 1 (one prefill instead of many)."""
    groups: dict[tuple, list[int]] = {}
    for pos, req in enumerate(requests):
        key = tuple((m["role"], m["content"]) for m in req.messages)
        groups.setdefault(key, []).append(pos)
    return list(groups.values())


def local_model_dir(model: str | None, key: str = "generator.model") -> str:
    """A local model folder (air-gapped use), or a hub id that the library may resolve.
    A path that does not exist is a clear error rather than a hub lookup."""
    if not model:
        raise UserError(f"{key} is not set; give a local model folder (with config.json)")
    path = Path(os.path.expanduser(model))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{key}: {model} has no config.json; point it at a Hugging Face model folder")
        return str(path.resolve())
    first = model.split("/", 1)[0]
    # "org/name" may be a hub id, unless "org" is a local folder: then it is a mistyped path
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not Path(first).is_dir()
    if not looks_like_hub_id:
        raise UserError(f"{key}: no such folder: {model}; point it at a local model folder (with config.json)")
    return model


def hub_error(model: str, key: str = "generator.model") -> UserError:
    return UserError(
        f"{key}: '{model}' is not a local folder and could not be loaded from the Hugging Face Hub "
        f"(offline or unreachable); download it where there is internet "
        f"(hf download {model} --local-dir DIR), copy DIR here and set {key}=DIR"
    )
