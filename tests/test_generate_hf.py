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
import yaml
from helpers import REPO, generate_config, run_cli, write_yaml

from localsynth.backends.base import Completion
from localsynth.errors import UserError
from localsynth.generation.completions import CompletionLog
from localsynth.generation.config import GenerateConfig, load_generate_config
from localsynth.generation.run import ShardIncomplete, generate_shard
from localsynth.generation.rundir import Shard, ShardPaths
from localsynth.schema import validate_rows


def load(tmp_path, model, **extra) -> GenerateConfig:
    return load_generate_config(write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, model, **extra)))


def test_zero_shot_shard_meets_quotas_and_keeps_the_raw(tmp_path, tiny_llama):
    cfg = load(tmp_path, tiny_llama)
    stats = generate_shard(cfg, Shard(0, 1), tmp_path / "run")
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
    generate_shard(cfg, Shard(0, 1), tmp_path / "run")
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
    generate_shard(cfg, Shard(0, 1), tmp_path / "run")
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
        generate_shard(cfg, Shard(i, 2), tmp_path / "run")
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
        # "{label}" in the text: the same answer per label (every label keeps one row)
        yield [(i, Completion(self.text.format(label=r.id.split("/")[1]), "stop", 10, 5)) for i, r in enumerate(requests)]

    def close(self):
        pass


def test_quota_tops_up_then_reports_the_shortfall(tmp_path):
    cfg = load(tmp_path, None, quota={"per_label": 4, "max_topup_rounds": 2})
    backend = RepeatingBackend("the very same {label} text every time")
    stats = generate_shard(cfg, Shard(0, 1), tmp_path / "run", backend=backend)
    # one text per label is kept (later copies are duplicates)
    assert stats["kept"] == 2
    assert stats["shortfall_per_label"] == {"ham": 3, "spam": 3}
    assert stats["dropped"]["duplicate"] == stats["requests"] - 2
    df = pl.read_parquet(ShardPaths(tmp_path / "run", Shard(0, 1)).rows)
    # initial pass + 2 top-ups per label, each a fresh set of conversations
    assert df["conversation"].n_unique() > 2


def test_refusals_and_bad_outputs_are_rows_not_crashes(tmp_path):
    cfg = load(tmp_path, None, quota={"per_label": 2, "max_topup_rounds": 0})
    run = tmp_path / "run"
    with pytest.raises(ShardIncomplete, match="no text was kept for ham, spam"):
        generate_shard(cfg, Shard(0, 1), run, backend=RepeatingBackend("I'm sorry, but I cannot write that."))
    paths = ShardPaths(run, Shard(0, 1))
    stats = json.loads(paths.stats.read_text())  # the reasons are on disk, as rows would be
    assert stats["kept"] == 0 and stats["dropped"] == {"refusal": stats["requests"]}
    assert not paths.done.exists() and not paths.rows.exists()  # nothing complete-looking


def test_resume_refuses_a_changed_config(tmp_path, tiny_llama):
    cfg = load(tmp_path, tiny_llama)
    generate_shard(cfg, Shard(0, 1), tmp_path / "run")
    changed = cfg.model_copy(update={"seed": 99})
    with pytest.raises(UserError, match="seed"):
        generate_shard(changed, Shard(1, 2), tmp_path / "run")


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
    common = dict(quota={"per_label": 16})
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
    while time.monotonic() < deadline and len(CompletionLog(log_dir, 0).cached) < 10:  # 5 batches of 2
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
    from localsynth.generation.run import ShardIncomplete

    cfg = load(tmp_path, None, quota={"per_label": 2, "max_topup_rounds": 1}, filters={"near_duplicate_jaccard": None})
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    with pytest.raises(ShardIncomplete, match="rerun the same command"):
        generate_shard(cfg, Shard(0, 1), tmp_path / "run", backend=FailingBackend())
    assert not paths.done.exists() and not paths.rows.exists()

    class Counting(RepeatingBackend):
        def generate(self, requests, sampling):
            self.calls += 1
            yield [(i, Completion(f"distinct text number {r.seed} here", "stop", 3, 3)) for i, r in enumerate(requests)]

    backend = Counting()
    stats = generate_shard(cfg, Shard(0, 1), tmp_path / "run", backend=backend)
    assert backend.calls >= 1 and stats["requests_from_log"] == 0  # failures are asked again, not replayed
    assert stats["kept_per_label"] == {"ham": 2, "spam": 2} and paths.done.is_file()


# ----------------------------------------------------------------------------- permanent failures


class ContextLimitBackend(RepeatingBackend):
    """Fault injection: an engine whose context holds only first turns (later turns carry the
    history: vLLM's prompt_too_long), and optionally a server error for one label."""

    def __init__(self, limit=64, down_for=None):
        super().__init__()
        self.limit, self.down_for, self.asked = limit, down_for, []

    def generate(self, requests, sampling):
        out = []
        for i, r in enumerate(requests):
            self.asked.append(r.id)
            tokens = 50 + 50 * int(r.id.rsplit("/t", 1)[1])  # the history grows the prompt
            if self.down_for and f"/{self.down_for}/" in r.id:
                out.append((i, Completion(None, None, error="InternalServerError 500: busy")))
            elif tokens >= self.limit:
                out.append((i, Completion(None, None, tokens, None, error=f"prompt_too_long: {tokens} tokens, max_model_len is {self.limit}")))
            else:
                out.append((i, Completion(f"distinct text number {r.seed} here", "stop", tokens, 3)))
        yield out


def test_permanent_failures_finish_the_shard_and_are_not_asked_again(tmp_path):
    """prompt_too_long can never succeed with the same settings: it is a row (request_invalid)
    that lets the shard finish, with a message naming the setting to change, and a rerun does not
    ask it again; raising generator.vllm.max_model_len on resume is allowed and asks again
    exactly the requests it now fits. Retryable failures are still asked again."""
    from localsynth.generation.run import ShardIncomplete

    extra = dict(quota={"per_label": 4, "max_topup_rounds": 1}, filters={"near_duplicate_jaccard": None})
    cfg = load(tmp_path, None, **extra)
    cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"backend": "vllm"})})
    with_limit = cfg.generator.vllm.model_copy(update={"max_model_len": 64})
    cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"vllm": with_limit})})

    # only permanent failures and a shortfall: complete, not "rerun the same command" forever
    stats = generate_shard(cfg, Shard(0, 1), tmp_path / "a", backend=ContextLimitBackend())
    paths = ShardPaths(tmp_path / "a", Shard(0, 1))
    assert paths.done.is_file() and stats["shortfall_per_label"] and stats["dropped"]["request_invalid"] > 0
    rows = pl.read_parquet(paths.rows)
    invalid = rows.filter(pl.col("parse_error").str.starts_with("request_invalid: prompt_too_long"))
    assert invalid.height == stats["dropped"]["request_invalid"] and (invalid["turn"] >= 1).all()

    # a retryable failure (spam is down) leaves the shard unfinished, and says what to change too
    backend = ContextLimitBackend(down_for="spam")
    with pytest.raises(ShardIncomplete, match="rerun the same command") as failed:
        generate_shard(cfg, Shard(0, 1), tmp_path / "b", backend=backend)
    assert "max_model_len" in str(failed.value)
    too_long = {i for i in backend.asked if "/ham/" in i and not i.endswith("/t0")}
    assert too_long

    backend = ContextLimitBackend(down_for="spam")  # the same settings again
    with pytest.raises(ShardIncomplete):
        generate_shard(cfg, Shard(0, 1), tmp_path / "b", backend=backend)
    assert backend.asked and all("/spam/" in i for i in backend.asked)  # the server error only

    # max_model_len (and engine sizing) may change on resume: the prompts it now fits are asked again
    vllm = cfg.generator.vllm.model_copy(update={"max_model_len": 4096, "max_num_seqs": 8, "cpu_kv_cache_gib": 1.0})
    raised = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"vllm": vllm})})
    backend = ContextLimitBackend(limit=4096)
    stats = generate_shard(raised, Shard(0, 1), tmp_path / "b", backend=backend)
    # (the top-up conversations of the earlier attempts are not needed now: the quota fills first)
    assert "sms_spam/ham/c0/t1" in too_long and "sms_spam/ham/c0/t1" in backend.asked
    assert not any("/ham/" in i and i.endswith("/t0") for i in backend.asked)  # replayed from the log
    assert ShardPaths(tmp_path / "b", Shard(0, 1)).done.is_file() and stats["kept_per_label"] == {"ham": 4, "spam": 4}


def test_settings_that_decide_the_rows_still_refuse_a_resume(tmp_path):
    from localsynth.generation.run import ShardIncomplete

    cfg = load(tmp_path, None, quota={"per_label": 2})
    with pytest.raises(ShardIncomplete):
        generate_shard(cfg, Shard(0, 1), tmp_path / "run", backend=FailingBackend())
    hf = cfg.generator.hf.model_copy(update={"batch_size": 3})  # picks each request's random stream
    changed = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"hf": hf})})
    with pytest.raises(UserError, match="generator.hf.batch_size"):
        generate_shard(changed, Shard(0, 1), tmp_path / "run", backend=FailingBackend())


@pytest.mark.parametrize(("error", "permanent"), [
    ("prompt_too_long: 900 tokens, max_model_len is 512", True),  # backends/vllm.py
    ("rejected: ValueError: top_p must be in (0, 1]", True),
    ("no output from vLLM", False),
    ("BadRequestError 400: maximum context length is 4096 tokens", True),  # backends/openai.py
    ("UnprocessableEntityError 422: bad field", True),
    ("missing choice (server ignored n)", True),
    ("RateLimitError 429: slow down", False),
    ("InternalServerError 500", False),
    ("APITimeoutError: Request timed out.", False),
    ("APIConnectionError: Connection error.", False),
])
def test_errors_are_classified(error, permanent):
    from localsynth.generation.completions import error_fix

    assert (error_fix(error) is not None) == permanent


# ----------------------------------------------------------------------------- crash windows


def _cli_generate(cfg_path, env, **extra_env):
    return subprocess.run(
        [sys.executable, "-m", "localsynth", "generate", str(cfg_path)], cwd=REPO, env={**env, **extra_env},
        capture_output=True, text=True, timeout=600,
    )


def test_a_kill_right_after_a_chunk_loses_none_of_it(tmp_path, tiny_llama, cli_env):
    """With the default settings, a chunk of completions is in the log when the next one is
    asked for: a kill at that point loses none of it."""
    cfg = generate_config(tmp_path, tiny_llama)
    cfg["generator"]["hf"] = {"batch_size": 2, "device": "cpu"}
    path = write_yaml(tmp_path / "gen.yaml", cfg)
    killed = _cli_generate(path, cli_env, LOCALSYNTH_KILL_AT="after-log-chunk")
    assert killed.returncode == 137, killed.stderr
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    assert len(CompletionLog(paths.log_dir, 0).cached) == 2  # the first chunk: one batch of 2
    resumed = _cli_generate(path, cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming shard 0/1: 2 finished requests" in resumed.stderr


def test_a_kill_between_the_marker_and_the_log_removal(tmp_path, tiny_llama, cli_env):
    """The .done marker alone says finished: training and experiments take the shard as
    finished, and the next generate removes the leftover log."""
    from localsynth.generation.config import GenerationRun
    from localsynth.generation.rundir import finished_shards

    path = write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, tiny_llama))
    killed = _cli_generate(path, cli_env, LOCALSYNTH_KILL_AT="after-done")
    assert killed.returncode == 137, killed.stderr
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    assert paths.done.is_file() and paths.log_dir.is_dir()
    assert finished_shards(tmp_path / "run", "train[0]", allow_partial=False) == [paths.rows]
    assert GenerationRun("g", "sms_spam", "zero-shot", path, tmp_path / "run", 1).is_done()
    again = _cli_generate(path, cli_env)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr and not paths.log_dir.exists()
    assert pl.read_parquet(paths.rows).filter("kept").height == 12


def test_an_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path):
    """A rename is durable only once its folder is fsynced; traced with strace (a kill cannot
    show this window: only a power loss or a node crash can)."""
    import shutil

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace.txt"
    target = tmp_path / "out" / "file.json"
    code = f"from pathlib import Path; from localsynth.io import write_json_atomic; write_json_atomic(Path({str(target)!r}), 1)"
    done = subprocess.run(["strace", "-f", "-e", "trace=openat,rename,renameat,renameat2,fsync", "-o", str(trace),
                           sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    lines = trace.read_text().splitlines()
    renamed = next(i for i, line in enumerate(lines) if "rename" in line and str(target) in line)
    opened = [line.rsplit("= ", 1)[1] for line in lines[renamed:] if f'"{target.parent}", O_RDONLY' in line]
    assert opened and any(f"fsync({opened[0]})" in line for line in lines[renamed:])


def test_a_second_process_on_a_shard_stops_at_once_naming_the_first(tmp_path, tiny_llama, cli_env):
    """Two real processes on one shard: the second exits 2 naming the first's PID, and the first
    finishes with the rows of an undisturbed run."""
    cfg = generate_config(tmp_path, tiny_llama)
    cfg["generator"]["hf"] = {"batch_size": 2, "device": "cpu"}
    path = write_yaml(tmp_path / "gen.yaml", cfg)
    release = tmp_path / "release"
    first = subprocess.Popen(
        [sys.executable, "-m", "localsynth", "generate", str(path)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**cli_env, "LOCALSYNTH_PAUSE_AT": "after-log-chunk", "LOCALSYNTH_PAUSE_UNTIL": str(release)},
    )
    try:
        paths = ShardPaths(tmp_path / "run", Shard(0, 1))
        deadline = time.monotonic() + 300
        while not list(paths.log_dir.glob("part-*")) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.05)
        second = _cli_generate(path, cli_env)
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and "another process" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        release.touch()
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert paths.done.is_file() and not paths.holder.exists()
    reference = write_yaml(tmp_path / "ref.yaml", {**cfg, "run_dir": str(tmp_path / "ref")})
    assert _cli_generate(reference, cli_env).returncode == 0
    assert _rows(tmp_path / "run").equals(_rows(tmp_path / "ref"))


def test_a_log_cut_anywhere_by_a_kill_keeps_its_whole_chunks(tmp_path):
    """A kill can stop the log mid-write: reading it back keeps every chunk written whole before
    the cut and drops the cut one, wherever the cut falls."""
    log = CompletionLog(tmp_path / "log", 0)
    sizes = []
    for chunk in range(3):
        log.add([(f"r{chunk}-{i}", Completion(f"text {chunk} {i}", "stop", 3, 4)) for i in range(2)])
        sizes.append((tmp_path / "log" / "part-000000.arrows").stat().st_size)
    log.close()
    data = (tmp_path / "log" / "part-000000.arrows").read_bytes()
    for cut in range(len(data) + 1):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        (folder / "part-000000.arrows").write_bytes(data[:cut])
        cached = CompletionLog(folder, 0).cached
        whole = sum(size <= cut for size in sizes)
        assert sorted(cached) == sorted(f"r{c}-{i}" for c in range(whole) for i in range(2)), cut
    assert CompletionLog(tmp_path / "log", 0).cached["r2-1"] == Completion("text 2 1", "stop", 3, 4)
    resumed = CompletionLog(tmp_path / "log", 0)  # a later attempt appends to a part of its own
    resumed.add([("r3-0", Completion("x", "stop", 1, 1))])
    resumed.close()
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["part-000000.arrows", "part-000001.arrows"]


def test_judge_filter_drops_what_the_generator_labels_otherwise(tmp_path, tiny_llama):
    """filters.judge: drop. The generator judges every text that passed the other filters, before
    dedup and quotas. The tiny random model, as a judge, answers 'ham' whatever the text (checked
    here first), so spam texts are all dropped as judge_mismatch and topped up in vain: the shard
    is not marked complete and the message names the label; ham fills its quota."""
    from localsynth.audit.judge import Judge
    from localsynth.generation.run import ShardIncomplete

    cfg = load(tmp_path, tiny_llama, filters={"drop_truncated": False, "judge": "drop"},
               quota={"per_label": 4, "max_topup_rounds": 2})
    judge = Judge(cfg.generator)
    try:
        probe = judge.judge(["win a free prize now, call 0800", "see you at lunch", "urgent! claim your cash"],
                            cfg.task.label_names)
    finally:
        judge.close()
    assert probe.labels == ["ham", "ham", "ham"]
    with pytest.raises(ShardIncomplete, match=r"no text was kept for spam .*judge_mismatch"):
        generate_shard(cfg, Shard(0, 1), tmp_path / "run")
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    stats = json.loads(paths.stats.read_text())
    assert stats["kept_per_label"] == {"ham": 4, "spam": 0}
    assert stats["dropped"]["judge_mismatch"] > 0 and not paths.done.exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["filters"]["judge"] == "drop"
