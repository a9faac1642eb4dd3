"""Shared fixtures: tiny models built locally (never downloaded), CLI runners, offline hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = os.environ.get("LOCALSYNTH_REAL_DATA")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random-weight Llama with a trained-on-the-fly tokenizer and a chat template."""
    from localsynth.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture()
def cli_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env["LOCALSYNTH_CACHE"] = str(tmp_path / "cache")
    env["PYTHONUNBUFFERED"] = "1"
    # One intra-op thread per CLI process: tests run tiny models, where torch's thread pool costs
    # more than it saves on a loaded 2-core machine (measured: 42 tiny steps 33 s -> 3 s).
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `python -m localsynth ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "localsynth", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def generate_config(tmp_path: Path, model: Path | str | None, **extra) -> dict:
    """A small generation config on the sms_spam task (extra keys merged at the top level)."""
    cfg = {
        "task": "sms_spam",
        "mode": "zero-shot",
        "seed": 1,
        "generator": {"backend": "hf", "model": str(model) if model else "tiny-random", "sampling": {"max_tokens": 24}},
        "quota": {"per_label": 6},
        "filters": {"drop_truncated": False},
        "run_dir": str(tmp_path / "run"),
        "progress": "log",
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
