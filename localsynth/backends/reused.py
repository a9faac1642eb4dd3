"""One loaded engine shared by several generation runs (a study's runs with the same generator)."""

from __future__ import annotations

import json
from typing import Any


def engine_key(generator: Any) -> str:
    """Runs whose generators differ only in sampling or pricing can share one loaded engine."""
    return json.dumps(generator.model_dump(mode="json", exclude={"sampling", "pricing"}), sort_keys=True)


class ReusedBackend:
    """One loaded engine for every generation run of a study with the same generator settings:
    starting the vLLM engine costs about a minute on a CPU, once per run otherwise. `close`
    (called by each run) keeps it; `shutdown` frees it."""

    def __init__(self, inner: Any):
        self.inner, self.loaded = inner, False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def gpus(self) -> int:
        return getattr(self.inner, "gpus", 0)

    def load(self) -> None:
        if not self.loaded:
            self.inner.load()
            self.loaded = True

    def generate(self, requests, sampling):
        return self.inner.generate(requests, sampling)

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        if self.loaded:
            self.inner.close()
            self.loaded = False
