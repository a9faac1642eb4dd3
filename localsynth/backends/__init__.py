"""Generation backends behind one small protocol; each heavy library is imported only here,
and only when its backend is made."""

from __future__ import annotations

from localsynth.backends.base import Backend, ChatRequest, Completion
from localsynth.backends.settings import GeneratorConfig


def make_backend(cfg: GeneratorConfig) -> Backend:
    """The backend named by `cfg.backend`, not yet loaded."""
    if cfg.backend == "vllm":
        from localsynth.backends.vllm import VllmBackend

        return VllmBackend(cfg)
    if cfg.backend == "openai":
        from localsynth.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg)
    from localsynth.backends.hf import HFBackend

    return HFBackend(cfg)


__all__ = ["Backend", "ChatRequest", "Completion", "make_backend"]
