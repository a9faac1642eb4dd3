"""Settings of the analyses that the CLI and the study share (defaults here only)."""

from __future__ import annotations

from pydantic import Field

from localsynth.config import Strict


class EmbedSettings(Strict):
    """How texts are embedded (`localsynth analyze diversity`, the study's analyses, the audit)."""

    batch_size: int = Field(default=64, ge=1, description="Texts per forward pass.")
    max_length: int = Field(default=256, ge=1, description="Tokens per text; longer texts are truncated.")
    device: str = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")


EMBED_DEFAULTS = EmbedSettings()
