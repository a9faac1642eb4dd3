"""The generation stage end to end on the transformers backend with a tiny local model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from conftest import REPO, generate_config, run_cli, write_yaml

from localsynth.backends.base import Completion
from localsynth.config import GenerateConfig, load_generate_config
from localsynth.errors import UserError
from localsynth.generate import run_generate
from localsynth.rundir import Shard, ShardPaths
from localsynth.schema import validate_rows


def load(tmp_path, model, **extra) -> GenerateConfig:
    return load_generate_config(write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, model, **extra)))


def test_zero_shot_shard_meets_quotas_and_keeps_the_raw(tmp_path, tiny_llama):
    cfg = load(tmp_path, tiny_llama)
    stats = run_generate(cfg, Shard(0, 1), tmp_path / "run")
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    assert paths.done.is_file() and paths.stats.is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert not paths.log_dir.exists()
    df = pl.read_parquet(paths.rows)
    assert validate_rows(df) == []
    kept = df.filter("kept").group_by("label").len().sort("label")
    assert kept.rows() == [("ham", 6), ("spam", 6)]
    assert stats["kept_per_label"] == {"ham": 6, "spam": 6} and stats["shortfall_per_label"] == {}
    assert stats["requests"] == df.height and stats["completion_tokens"] == df["completion_tokens"].sum()
    # the conversation history grows by one user and one assistant message per turn
    for row in df.iter_rows(named=True):
        assert len(row["messages"]) == 2 * row["turn"] + 2
        assert row["messages"][0]["role"] == "system" and row["messages"][-1]["role"] == "user"
    diversity = cfg.task.prompts.diversity.strip()[:30]
    turn2 = df.filter(pl.col("turn") == 2)["messages"].to_list()[0]
    assert diversity in turn2[-1]["content"]
    env = json.loads(paths.environment.read_text())
    assert "torch" in env["packages"] and env["host"]


def test_history_holds_the_cleaned_replies(tmp_path, tiny_llama):
    cfg = load(tmp_path, tiny_llama)
    run_generate(cfg, Shard(0, 1), tmp_path / "run")
    df = pl.read_parquet(ShardPaths(tmp_path / "run", Shard(0, 1)).rows)
    by_id = {r["id"]: r for r in df.iter_rows(named=True)}
    for row in by_id.values():
        if row["turn"] > 0:
            previous = by_id[row["id"].rsplit("/t", 1)[0] + f"/t{row['turn'] - 1}"]
            # the cleaned text, not the raw output: a rambling reply must not grow every later prompt
            assert row["messages"][-2] == {"role": "assistant", "content": previous["text"]}


def test_few_shot_shows_fresh_real_examples(tmp_path, tiny_llama):
    source = tmp_path / "examples.csv"
    pl.DataFrame(
        {
            "message": [f"example ham message number {i}" for i in range(10)]
            + [f"example spam offer number {i}" for i in range(10)],
            "category": ["ham"] * 10 + ["spam"] * 10,
        }
    ).write_csv(source)
    task_override = {"few_shot": {"k": 2, "source": {"path": str(source), "text_column": "message", "label_column": "category"}}}
    cfg_dict = generate_config(tmp_path, tiny_llama, mode="few-shot")
    path = write_yaml(tmp_path / "gen.yaml", cfg_dict)
    cfg = load_generate_config(path, [f"task.few_shot.{k}={json.dumps(v)}" for k, v in task_override["few_shot"].items()])
    run_generate(cfg, Shard(0, 1), tmp_path / "run")
    df = pl.read_parquet(ShardPaths(tmp_path / "run", Shard(0, 1)).rows)
    assert (df["examples"].list.len() == 2).all()
    for row in df.iter_rows(named=True):
        assert all(row["label"] in ex for ex in row["examples"])  # same-label examples
        assert all(ex in row["messages"][-1]["content"] for ex in row["examples"])
    assert df["examples"].n_unique() > df.height // 2  # re-sampled per request


def test_shards_partition_the_work(tmp_path, tiny_llama):
    cfg = load(tmp_path, tiny_llama, quota={"per_label": 5})
    frames = []
    for i in range(2):
        run_generate(cfg, Shard(i, 2), tmp_path / "run")
        frames.append(pl.read_parquet(ShardPaths(tmp_path / "run", Shard(i, 2)).rows))
    df = pl.concat(frames)
    assert df["id"].n_unique() == df.height
    assert df.filter("kept").group_by("label").len().sort("label").rows() == [("ham", 5), ("spam", 5)]
    assert set(frames[0]["conversation"]).isdisjoint(set(frames[1]["conversation"]))


class RepeatingBackend:
    """Fault injection: a model that keeps answering the same thing (or refuses)."""

    name, model_name = "fault", "fault"

    def __init__(self, text="the very same text every time"):
        self.text = text
        self.calls = 0

    def load(self):
        pass

    def generate(self, requests, sampling):
        self.calls += 1
        yield [(i, Completion(self.text, "stop", 10, 5)) for i in range(len(requests))]

    def close(self):
        pass


def test_quota_tops_up_then_reports_the_shortfall(tmp_path):
    cfg = load(tmp_path, None, quota={"per_label": 4, "max_topup_rounds": 2})
    backend = RepeatingBackend()
    stats = run_generate(cfg, Shard(0, 1), tmp_path / "run", backend=backend)
    # one text is kept in total (later copies are duplicates, across labels too)
    assert stats["kept"] == 1
    assert stats["shortfall_per_label"] == {"ham": 3, "spam": 4}
    assert stats["dropped"]["duplicate"] == stats["requests"] - 1
    df = pl.read_parquet(ShardPaths(tmp_path / "run", Shard(0, 1)).rows)
    # initial pass + 2 top-ups per label, each a fresh set of conversations
    assert df["conversation"].n_unique() > 2


def test_refusals_and_bad_outputs_are_rows_not_crashes(tmp_path):
    cfg = load(tmp_path, None, quota={"per_label": 2, "max_topup_rounds": 0})
    stats = run_generate(cfg, Shard(0, 1), tmp_path / "run", backend=RepeatingBackend("I'm sorry, but I cannot write that."))
    assert stats["kept"] == 0 and stats["dropped"] == {"refusal": stats["requests"]}


def test_resume_refuses_a_changed_config(tmp_path, tiny_llama):
    cfg = load(tmp_path, tiny_llama)
    run_generate(cfg, Shard(0, 1), tmp_path / "run")
    changed = cfg.model_copy(update={"seed": 99})
    with pytest.raises(UserError, match="seed"):
        run_generate(changed, Shard(1, 2), tmp_path / "run")


def test_dry_run_prints_plan_and_cost(tmp_path, tiny_llama, cli_env):
    path = write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, tiny_llama))
    out = run_cli(
        "generate", str(path), "--dry-run", "--set", "generator.pricing.input_per_million=0.5",
        "--set", "generator.pricing.output_per_million=1.5", env=cli_env,
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["rows_wanted"] == 12 and plan["requests_first_pass"] == 2 * 2 * 5
    assert plan["example_messages"][0]["role"] == "system"
    assert plan["estimated_cost_usd"] is None and "no API cost" in plan["cost_note"]  # prices apply to APIs only
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    api = run_cli(
        "generate", str(path), "--dry-run", "--set", "generator.backend=openai", "--set", "generator.model=gpt-x",
        "--set", "generator.pricing.input_per_million=0.5", "--set", "generator.pricing.output_per_million=1.5",
        env=cli_env,
    )
    assert api.returncode == 0, api.stderr
    assert json.loads(api.stdout)["estimated_cost_usd"] > 0


def _rows(run_dir):
    return pl.read_parquet(ShardPaths(run_dir, Shard(0, 1)).rows)


def test_kill_9_then_resume_gives_the_same_rows(tmp_path, tiny_llama, cli_env):
    """Deterministic backend (hf on CPU): a shard killed mid-way and resumed ends with exactly
    the rows of an uninterrupted run."""
    common = dict(quota={"per_label": 16}, flush_every_s=0)
    cfg = generate_config(tmp_path, tiny_llama, **common)
    cfg["generator"]["hf"] = {"batch_size": 2, "device": "cpu"}
    cfg["generator"]["sampling"]["max_tokens"] = 48
    ref_cfg = write_yaml(tmp_path / "ref.yaml", {**cfg, "run_dir": str(tmp_path / "ref")})
    run_cfg = write_yaml(tmp_path / "run.yaml", cfg)

    proc = subprocess.Popen(
        [sys.executable, "-m", "localsynth", "generate", str(run_cfg)],
        cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    log_dir = ShardPaths(tmp_path / "run", Shard(0, 1)).log_dir
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(log_dir.glob("part-*.parquet"))) < 5:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not ShardPaths(tmp_path / "run", Shard(0, 1)).done.exists()

    resumed = run_cli("generate", str(run_cfg), env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming shard" in resumed.stderr
    reference = run_cli("generate", str(ref_cfg), env=cli_env)
    assert reference.returncode == 0, reference.stderr

    got, want = _rows(tmp_path / "run"), _rows(tmp_path / "ref")
    assert got["id"].n_unique() == got.height
    assert got.filter("kept").height == 32
    assert got.equals(want)
    stats = json.loads(ShardPaths(tmp_path / "run", Shard(0, 1)).stats.read_text())
    assert stats["requests_from_log"] >= 5 * 2


class FailingBackend(RepeatingBackend):
    """Fault injection: every request fails (a server that is down after the client's retries)."""

    def generate(self, requests, sampling):
        yield [(i, Completion(None, None, error="InternalServerError 500")) for i in range(len(requests))]


def test_failed_requests_leave_the_shard_incomplete_and_are_retried(tmp_path):
    from localsynth.generate import ShardIncomplete

    cfg = load(tmp_path, None, quota={"per_label": 2, "max_topup_rounds": 1}, filters={"near_duplicate_jaccard": None})
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    with pytest.raises(ShardIncomplete, match="rerun the same command"):
        run_generate(cfg, Shard(0, 1), tmp_path / "run", backend=FailingBackend())
    assert not paths.done.exists() and not paths.rows.exists()

    class Counting(RepeatingBackend):
        def generate(self, requests, sampling):
            self.calls += 1
            yield [(i, Completion(f"distinct text number {r.seed} here", "stop", 3, 3)) for i, r in enumerate(requests)]

    backend = Counting()
    stats = run_generate(cfg, Shard(0, 1), tmp_path / "run", backend=backend)
    assert backend.calls >= 1 and stats["requests_from_log"] == 0  # failures are asked again, not replayed
    assert stats["kept_per_label"] == {"ham": 2, "spam": 2} and paths.done.is_file()
