"""The generator's own engine as the judge of the texts it writes (filters.judge: drop)."""

from __future__ import annotations

import numpy as np

from localsynth.backends.base import Backend
from localsynth.generation.config import GenerateConfig


class BackendJudge:
    """The generator's own engine as the judge of its texts (filters.judge: drop): one label per
    text, constrained to the task's label names; loaded with the engine when first needed."""

    def __init__(self, cfg: GenerateConfig, backend: Backend, load):
        self.task, self.backend, self.load = cfg.task, backend, load

    def mismatches(self, texts: list[str], codes: np.ndarray, labels: list[str]) -> np.ndarray:
        from localsynth.audit.judge import Judge

        self.load()
        engine = getattr(self.backend, "inner", self.backend)  # a study's shared engine wraps the backend
        descriptions = {label.name: label.description for label in self.task.labels}
        verdicts = Judge.on(engine).judge(texts, self.task.label_names, descriptions, self.task.title, self.task.text_kind)
        return np.array([v is not None and v != labels[c] for v, c in zip(verdicts.labels, codes.tolist(), strict=True)],
                        dtype=bool)
