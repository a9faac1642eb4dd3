"""Bad input to `localsynth train`: exit 2, one message naming the problem and the fix, no
traceback, and no finished-looking output."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from helpers import assert_user_error, run_cli, run_in_process
from tiny_encoders import build_tiny_bert

from localsynth.errors import UserError


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("m") / "bert", None)


def rows(n: int = 20, labels=("pos", "neg")) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"good movie {i}" if i % 2 else f"bad film {i}" for i in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)]})


def train(tmp_path, model, source, *extra, env=None):
    """`localsynth train` in this process (the errors come before any work), or in a new one
    when the environment matters (a kill hook, no GPU)."""
    args = ("train", "--model", str(model), "--real", str(source), "--out", str(tmp_path / "out"), *extra)
    return run_cli(*args, env=env) if env is not None else run_in_process(*args)


def assert_nothing_finished(tmp_path):
    out = tmp_path / "out"
    assert not (out / "train.done").exists() and not (out / "model").exists()


def test_single_class_training_set(tmp_path, bert, cli_env):
    rows(labels=("pos",)).write_parquet(tmp_path / "one.parquet")
    result = train(tmp_path, bert, tmp_path / "one.parquet")
    assert_user_error(result, "single class", "pos", "at least two")
    assert_nothing_finished(tmp_path)


def test_empty_file(tmp_path, bert, cli_env):
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    assert_user_error(train(tmp_path, bert, tmp_path / "empty.csv"), "empty.csv", "empty")
    assert_nothing_finished(tmp_path)


def test_wrong_column_names(tmp_path, bert, cli_env):
    rows().rename({"text": "sentence", "label": "y"}).write_csv(tmp_path / "cols.csv")
    result = train(tmp_path, bert, tmp_path / "cols.csv")
    assert_user_error(result, "sentence", "text_column")
    assert_nothing_finished(tmp_path)


def test_non_utf8_bytes(tmp_path, bert, cli_env):
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me,pos\nbad,neg\n".encode("latin-1"))
    assert_user_error(train(tmp_path, bert, tmp_path / "latin.csv"), "latin.csv", "UTF-8")
    assert_nothing_finished(tmp_path)


def test_missing_model_path(tmp_path, cli_env):
    rows().write_parquet(tmp_path / "ok.parquet")
    result = train(tmp_path, tmp_path / "no-such-model", tmp_path / "ok.parquet")
    assert_user_error(result, "no-such-model", "model")
    assert_nothing_finished(tmp_path)


def test_classifier_with_another_label_count(tmp_path, cli_env):
    model = build_tiny_bert(tmp_path / "clf3", ["a", "b", "c"])
    rows().write_parquet(tmp_path / "ok.parquet")
    result = train(tmp_path, model, tmp_path / "ok.parquet")
    assert_user_error(result, "3 labels", "base encoder")
    assert_nothing_finished(tmp_path)


def test_checkpoint_with_other_labels_is_refused(tmp_path, bert, cli_env):
    rows().write_parquet(tmp_path / "ok.parquet")
    killed = train(tmp_path, bert, tmp_path / "ok.parquet", "--set", "training.max_steps=2",
                   "--set", "training.checkpoint_every_steps=1", env={**cli_env, "LOCALSYNTH_TRAIN_KILL_AT": "saved:1"})
    assert killed.returncode == -9, killed.stderr  # killed after its first checkpoint
    rows(labels=("pos", "neg", "meh")).write_parquet(tmp_path / "ok.parquet")
    result = train(tmp_path, bert, tmp_path / "ok.parquet", "--set", "training.max_steps=2",
                   "--set", "training.checkpoint_every_steps=1")
    assert_user_error(result, "checkpoint", "labels", "new out_dir")
    assert not (tmp_path / "out" / "train.done").exists()


def test_labels_outside_the_task(tmp_path, bert, cli_env):
    rows(labels=("pos", "neg")).write_parquet(tmp_path / "ok.parquet")
    result = train(tmp_path, bert, tmp_path / "ok.parquet", "--task", "sms_spam")
    assert_user_error(result, "pos", "ham", "label_map")
    assert_nothing_finished(tmp_path)


def test_unfinished_generation_run(tmp_path, bert, cli_env):
    shards = tmp_path / "gen" / "shards"
    shards.mkdir(parents=True)
    (shards / "00000-of-00001.log").mkdir()
    result = run_cli("train", "--model", str(bert), "--synthetic", str(tmp_path / "gen"), "--out",
                     str(tmp_path / "out"), env=cli_env)
    assert_user_error(result, "unfinished", "rerun")


def test_batch_that_does_not_split(tmp_path, bert, cli_env):
    rows().write_parquet(tmp_path / "ok.parquet")
    result = train(tmp_path, bert, tmp_path / "ok.parquet", "--set", "training.batch_size=10",
                   "--set", "training.gradient_accumulation_steps=4")
    assert_user_error(result, "batch_size", "multiple of 4")


def test_fp16_without_a_gpu(tmp_path, bert, cli_env):
    rows().write_parquet(tmp_path / "ok.parquet")
    env = {**cli_env, "CUDA_VISIBLE_DEVICES": ""}
    result = train(tmp_path, bert, tmp_path / "ok.parquet", "--set", "training.precision=fp16", env=env)
    assert_user_error(result, "fp16", "GPU")


def test_unknown_training_key(tmp_path, bert, cli_env):
    rows().write_parquet(tmp_path / "ok.parquet")
    result = train(tmp_path, bert, tmp_path / "ok.parquet", "--set", "training.learnig_rate=1e-4")
    assert_user_error(result, "training.learnig_rate", "learning_rate")


def _shard(run_dir: Path, index: int, count: int, done: bool = True, label_offset: int = 0) -> pl.DataFrame:
    """One shard of a generation run as generate leaves it: rows, and the marker when finished."""
    shards = run_dir / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    name = f"{index:05d}-of-{count:05d}"
    df = pl.DataFrame({"text": [f"shard {index} text {i} of {count}" for i in range(6)],
                       "label": ["ham", "spam"] * 3, "kept": [True] * 5 + [False]})
    df.write_parquet(shards / f"{name}.parquet")
    if done:
        (shards / f"{name}.done").write_text("{}", encoding="utf-8")
    return df


def test_partial_generation_run_is_refused_naming_the_missing_shards(tmp_path, bert, cli_env):
    _shard(tmp_path / "gen", 0, 4)
    _shard(tmp_path / "gen", 2, 4, done=False)  # killed mid-way: rows of a previous attempt, no marker
    result = run_cli("train", "--model", str(bert), "--synthetic", str(tmp_path / "gen"), "--out",
                     str(tmp_path / "out"), env=cli_env)
    assert_user_error(result, "3 of 4 shards unfinished", "1/4, 2/4, 3/4", "--shard INDEX/4", "--allow-partial")
    assert_nothing_finished(tmp_path)


def test_partial_generation_run_on_request_reads_only_finished_shards(tmp_path):
    from localsynth.training.config import TrainSource
    from localsynth.training.rows import allow_partial_runs, read_synthetic

    finished = _shard(tmp_path / "gen", 0, 4)
    _shard(tmp_path / "gen", 2, 4, done=False)
    (tmp_path / "gen" / "shards" / "00000-of-00004.log").mkdir()  # a leftover beside a marker: finished
    source = TrainSource(run_dir=str(tmp_path / "gen"))
    with pytest.raises(UserError, match="unfinished"):
        read_synthetic(source, "train[0]")
    token = allow_partial_runs.set(True)  # what --allow-partial sets
    try:
        rows = read_synthetic(source, "train[0]")
    finally:
        allow_partial_runs.reset(token)
    assert rows.sort("text").equals(finished.filter("kept").select("text", "label").sort("text"))


def test_mixed_shard_counts_are_refused(tmp_path, bert, cli_env):
    _shard(tmp_path / "gen", 0, 1)
    _shard(tmp_path / "gen", 0, 2)
    _shard(tmp_path / "gen", 1, 2)
    result = run_cli("train", "--model", str(bert), "--synthetic", str(tmp_path / "gen"), "--allow-partial",
                     "--out", str(tmp_path / "out"), env=cli_env)
    assert_user_error(result, "different shard counts", "1 (1 shard(s) present)", "2 (2 shard(s) present)", "duplicated")
    assert_nothing_finished(tmp_path)


def test_allow_partial_flag_trains_on_the_finished_shards(tmp_path, bert, cli_env):
    """--allow-partial gets past the check: this run's one finished shard has a single class, the
    next problem training finds, so the flag's rows were read."""
    shards = tmp_path / "gen" / "shards"
    shards.mkdir(parents=True)
    pl.DataFrame({"text": ["a text", "another text"], "label": ["ham", "ham"], "kept": [True, True]}).write_parquet(
        shards / "00000-of-00002.parquet")
    (shards / "00000-of-00002.done").write_text("{}", encoding="utf-8")
    result = run_cli("train", "--model", str(bert), "--synthetic", str(tmp_path / "gen"), "--allow-partial",
                     "--out", str(tmp_path / "out"), env=cli_env)
    assert_user_error(result, "single class", "ham")
    assert "training on 1 of 2 shards" in result.stderr
