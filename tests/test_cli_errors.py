"""Bad input through the real CLI: exit code 2, one message naming the problem and the fix,
no traceback (unless --verbose), and nothing in the run directory that looks finished."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import (
    assert_user_error,
    generate_config,
    modules_after,
    run_cli,
    run_in_process,
    write_yaml,
)

TASKS = [
    "ag_news",
    "fewrel4",
    "financial_phrasebank",
    "humor",
    "imdb",
    "reddit_emotion",
    "sarcasm_headlines",
    "sms_spam",
    "tweet_emotion",
    "tweet_irony",
]


def config_file(tmp_path: Path, model=None, **extra) -> Path:
    return write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, model, **extra))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- config files


def test_malformed_yaml(tmp_path, cli_env):
    path = tmp_path / "bad.yaml"
    path.write_text("task: sms_spam\ngenerator: {backend: hf\nquota:\n  per_label: 3\n", encoding="utf-8")
    result = run_cli("generate", str(path), env=cli_env)
    assert_user_error(result, str(path), "not valid YAML", "line", "fix the syntax", run_dir=tmp_path / "run")


def test_unknown_key_is_named(tmp_path, cli_env):
    path = config_file(tmp_path, quota={"per_label": 3, "per_lable": 4})
    result = run_cli("generate", str(path), env=cli_env)
    assert_user_error(result, "quota.per_lable", "unknown key", "did you mean 'per_label'", run_dir=tmp_path / "run")


def test_api_key_in_config_points_to_the_environment(tmp_path, cli_env):
    path = config_file(tmp_path, generator={"backend": "openai", "model": "m", "openai": {"api_key": "sk-xyz"}})
    result = run_cli("generate", str(path), env=cli_env)
    message = assert_user_error(result, "generator.openai.api_key", "api_key_env", run_dir=tmp_path / "run")
    assert "sk-xyz" not in message


def test_unknown_task_lists_known_tasks(tmp_path, cli_env):
    result = run_cli("generate", "--set", "task=sms_spma", "--run-dir", str(tmp_path / "run"), env=cli_env)
    message = assert_user_error(result, "unknown task 'sms_spma'", "did you mean sms_spam", *TASKS)
    assert "smoke" not in message  # experiment configs are not tasks


def test_empty_label_list(tmp_path, cli_env):
    result = run_cli("generate", str(config_file(tmp_path)), "--set", "task.labels=[]", env=cli_env)
    assert_user_error(result, "task.labels", "at least two labels", run_dir=tmp_path / "run")


def test_few_shot_without_real_data(tmp_path, cli_env):
    result = run_cli("generate", str(config_file(tmp_path)), "--mode", "few-shot", env=cli_env)
    assert_user_error(
        result, "few-shot", "task.few_shot.source.path=FILE", "--mode zero-shot", run_dir=tmp_path / "run"
    )


def test_set_without_equals(tmp_path, cli_env):
    result = run_cli("generate", str(config_file(tmp_path)), "--set", "quota.per_label", env=cli_env)
    assert_user_error(result, "--set expects KEY=VALUE", "'quota.per_label'", run_dir=tmp_path / "run")


@pytest.mark.parametrize("shard", ["3/2", "abc", "0/0", "-1/2"])
def test_bad_shard(tmp_path, cli_env, shard):
    result = run_cli("generate", str(config_file(tmp_path)), f"--shard={shard}", env=cli_env)
    assert_user_error(result, "--shard must be INDEX/COUNT", f"'{shard}'", "0/4", run_dir=tmp_path / "run")


def test_unknown_option_is_a_usage_error(tmp_path, cli_env):
    result = run_cli("generate", str(config_file(tmp_path)), "--shards", "0/1", env=cli_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No such option: --shards" in result.stderr and "--help" in result.stderr


# ----------------------------------------------------------------------------- models and machines


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_missing_model_path(tmp_path, cli_env, backend):
    missing = tmp_path / "no-such-model"
    path = config_file(tmp_path, missing, generator={"backend": backend, "model": str(missing)})
    result = run_cli("generate", str(path), env=cli_env)
    assert_user_error(result, "generator.model", str(missing), "no such folder", run_dir=tmp_path / "run")


def test_unreachable_server(tmp_path, cli_env):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    path = config_file(tmp_path, "served-model", generator={"backend": "openai", "model": "served-model", "openai": {"base_url": url}})
    result = run_cli("generate", str(path), env=cli_env)
    assert_user_error(result, "cannot reach", url, "generator.openai.base_url", run_dir=tmp_path / "run")


def test_gpu_setting_without_a_gpu(tmp_path, cli_env):
    path = config_file(tmp_path, generator={"hf": {"device": "cuda"}})
    result = run_cli("generate", str(path), env={**cli_env, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, on any machine
    assert_user_error(result, "generator.hf.device", "'cuda'", "generator.hf.device=cpu", run_dir=tmp_path / "run")


# ----------------------------------------------------------------------------- few-shot source files


def few_shot(tmp_path: Path, cli_env, source: Path, *extra: str) -> subprocess.CompletedProcess:
    path = config_file(tmp_path, mode="few-shot")
    return run_cli("generate", str(path), "--set", f"task.few_shot.source.path={source}", *extra, env=cli_env)


def test_source_with_wrong_columns(tmp_path, cli_env):
    source = tmp_path / "real.csv"
    source.write_text("sentence,category\nwin a prize now,spam\nsee you at lunch,ham\n", encoding="utf-8")
    result = few_shot(tmp_path, cli_env, source)
    assert_user_error(
        result,
        "'text', 'label' not found",
        "'sentence', 'category'",
        "task.few_shot.source.text_column=",
        "task.few_shot.source.label_column=",
        run_dir=tmp_path / "run",
    )


def test_source_with_other_label_names(tmp_path, cli_env):
    source = tmp_path / "real.csv"
    source.write_text("text,label\nwin a prize now,1\nsee you at lunch,0\n", encoding="utf-8")
    result = few_shot(tmp_path, cli_env, source)
    assert_user_error(result, "no real examples", "'0', '1'", "label_map", run_dir=tmp_path / "run")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_source_not_utf8(tmp_path, cli_env, suffix):
    source = tmp_path / f"real{suffix}"
    rows = {
        ".csv": "text,label\ncaf\u00e9 au lait offer,spam\nsee you,ham\n",
        ".tsv": "text\tlabel\ncaf\u00e9 au lait offer\tspam\nsee you\tham\n",
        ".jsonl": '{"text": "caf\u00e9 au lait offer", "label": "spam"}\n',
    }[suffix]
    source.write_bytes(rows.encode("latin-1"))
    result = few_shot(tmp_path, cli_env, source)
    assert_user_error(result, str(source), "UTF-8", "save it as UTF-8", run_dir=tmp_path / "run")


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"], ids=["zero-bytes", "blank-lines", "header-only"])
def test_source_empty(tmp_path, cli_env, content):
    source = tmp_path / "real.csv"
    source.write_text(content, encoding="utf-8")
    result = few_shot(tmp_path, cli_env, source)
    message = assert_user_error(result, str(source), run_dir=tmp_path / "run")
    assert "empty" in message or "no rows" in message
    assert "point it at a file with" in message


def test_source_missing(tmp_path, cli_env):
    result = few_shot(tmp_path, cli_env, tmp_path / "nowhere.csv")
    assert_user_error(result, "task.few_shot.source.path", "not found", "nowhere.csv", run_dir=tmp_path / "run")


# ----------------------------------------------------------------------------- --verbose, imports


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_the_traceback(tmp_path, cli_env, where):
    args = ["generate", str(config_file(tmp_path)), "--shard", "3/2"]
    args = ["--verbose", *args] if where == "before" else [*args, "--verbose"]
    result = run_cli(*args, env=cli_env)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "UserError" in result.stderr
    assert "error: --shard must be INDEX/COUNT" in result.stderr


def test_import_and_help_stay_light():
    assert modules_after("import localsynth") == set()
    for argv in (["--help"], ["generate", "--help"], ["generate", "--set", "task=nope"]):
        code = f"""
from localsynth.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""
        assert modules_after(code) == set(), argv


# ----------------------------------------------------------------------------- run directories


def test_fixing_a_failed_setting_then_rerunning_works(tmp_path, cli_env):
    env = {**cli_env, "CUDA_VISIBLE_DEVICES": ""}
    path = config_file(tmp_path, generator={"hf": {"device": "cuda"}}, quota={"per_label": 1})
    assert run_cli("generate", str(path), env=env).returncode == 2
    result = run_cli("generate", str(path), "--set", "generator.hf.device=cpu", env=env)
    assert result.returncode == 0, result.stderr


def test_other_config_in_a_finished_run_dir_is_refused(tmp_path, cli_env):
    from fault_server import FaultServer, openai_config

    source = tmp_path / "real.csv"
    source.write_text("text,label\nwin a prize now,spam\nsee you at lunch,ham\n", encoding="utf-8")
    with FaultServer(lambda n, body: "ok") as server:
        cfg = {**openai_config(tmp_path, server.base_url), "quota": {"per_label": 2}}
        path = write_yaml(tmp_path / "gen.yaml", cfg)
        assert run_cli("generate", str(path), env=cli_env).returncode == 0
        result = run_cli(
            "generate", str(path), "--mode", "few-shot", "--set", f"task.few_shot.source.path={source}", env=cli_env
        )
    assert_user_error(result, "different configuration", "mode")


# ----------------------------------------------------------------------------- in-process runs


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in (root ignores permission bits: /sys)."""
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder / "out"
    try:  # root: sysfs refuses new entries to everyone
        (Path("/sys") / "localsynth-probe").mkdir()
    except OSError:
        return Path("/sys") / "localsynth-out"
    pytest.skip("no unwritable folder on this machine")


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------- impossible settings


@pytest.mark.parametrize(
    "overrides",
    [["filters.min_words=10", "filters.max_words=5"], ["filters.min_words=200"]],
    ids=["min-over-max", "min-over-task-default"],
)
def test_impossible_word_filters(tmp_path, overrides):
    args = [x for item in overrides for x in ("--set", item)]
    result = run_in_process("generate", str(config_file(tmp_path)), *args)
    assert_user_error(result, f"--set {overrides[0]}", "filters.min_words", "every text would be dropped",
                      "lower filters.min_words", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_huge_quota_is_refused_before_allocating(tmp_path, dry_run):
    extra = ["--dry-run"] if dry_run else []
    result = run_in_process("generate", str(config_file(tmp_path)), "--set", "quota.per_label=1000000000000", *extra)
    assert_user_error(result, "quota.per_label", "1,000,000,000,000", "at most 10,000,000", "several runs",
                      run_dir=tmp_path / "run")
    # Within the run bound, one shard still plans all of its rows at once: shard it.
    result = run_in_process("generate", str(config_file(tmp_path)), "--set", "quota.per_label=5000000", *extra)
    assert_user_error(result, "quota.per_label 5,000,000", "at most 1,000,000", "--shard INDEX/5", "--shards 5",
                      run_dir=tmp_path / "run")


def test_set_error_names_the_flag(tmp_path):
    result = run_in_process("generate", str(config_file(tmp_path)), "--set", "quota.per_label=-2")
    message = assert_user_error(result, "quota.per_label (from --set quota.per_label=-2)")
    assert message.startswith(f"error: --set quota.per_label=-2 (on {tmp_path / 'gen.yaml'})")


# ----------------------------------------------------------------------------- secrets

FAKE_KEY = "sk-localsynthFAKE0123456789abcdefXYZ"
SECRET_PLACES = {
    "api_key_env": {"api_key_env": FAKE_KEY},
    "base_url-userinfo": {"base_url": f"http://user:{FAKE_KEY}@127.0.0.1:9/v1"},
    "base_url-query": {"base_url": f"http://127.0.0.1:9/v1?api_key={FAKE_KEY}"},
    "extra_body": {"extra_body": {"auth": FAKE_KEY}},
    "extra_body-named": {"extra_body": {"metadata": {"api_key": FAKE_KEY}}},
}


def assert_key_nowhere(result: subprocess.CompletedProcess, root: Path, *allowed: Path) -> None:
    assert FAKE_KEY not in result.stdout + result.stderr, result.stderr
    for file in files_under(root):
        if file not in allowed:
            assert FAKE_KEY.encode() not in file.read_bytes(), file


@pytest.mark.parametrize("how", ["file", "set"])
@pytest.mark.parametrize("place", list(SECRET_PLACES))
def test_key_typed_into_generator_settings_is_refused_and_never_repeated(tmp_path, place, how):
    settings = SECRET_PLACES[place]
    generator = {"backend": "openai", "model": "m"}
    path = config_file(tmp_path, generator={**generator, "openai": settings if how == "file" else {}})
    args = []
    if how == "set":
        import json

        (key, value), = settings.items()
        args = ["--set", f"generator.openai.{key}={value if isinstance(value, str) else json.dumps(value)}"]
    for verbose in ([], ["--verbose"]):
        result = run_in_process("generate", str(path), *args, *verbose)
        assert result.returncode == 2, result.stderr
        assert "generator.openai." in result.stderr and "environment variable" in result.stderr
        assert_key_nowhere(result, tmp_path, path)
    assert not (tmp_path / "run").exists()


def test_key_in_a_usage_error_is_masked(tmp_path):
    result = run_in_process("generate", str(config_file(tmp_path)), FAKE_KEY)  # a stray extra argument
    assert result.returncode == 2 and "unexpected extra argument" in result.stderr
    assert FAKE_KEY not in result.stderr and "***" in result.stderr


def test_key_elsewhere_on_the_command_line_is_masked_in_the_run_record(tmp_path, cli_env):
    """A key that passes validation (here in a free-text field) is masked in config.yaml and in
    the command line that environment/*.json records."""
    from fault_server import FaultServer, openai_config

    with FaultServer(lambda n, body: "ok") as server:
        path = write_yaml(tmp_path / "gen.yaml", {**openai_config(tmp_path, server.base_url), "quota": {"per_label": 2}})
        result = run_cli("generate", str(path), "--set", f"task.title={FAKE_KEY}", env=cli_env, timeout=120)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "shards" / "00000-of-00001.done").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["task"]["title"] == "***"
    records = [p.read_text() for p in (run_dir / "environment").glob("*.json")]
    assert records and all("task.title=***" in r for r in records)
    assert_key_nowhere(result, tmp_path, path)


# ----------------------------------------------------------------------------- output folders


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    result = run_in_process("generate", str(config_file(tmp_path)), "--run-dir", str(tmp_path / "taken"))
    assert_user_error(result, "run_dir", str(tmp_path / "taken"), "is a file", "choose another")
    result = run_in_process("generate", str(config_file(tmp_path)), "--run-dir", str(tmp_path / "taken" / "run"))
    assert_user_error(result, "is inside", "which is a file")


def test_run_dir_that_is_read_only(tmp_path):
    target = unwritable_dir(tmp_path)
    result = run_in_process("generate", str(config_file(tmp_path)), "--run-dir", str(target))
    assert_user_error(result, "run_dir", str(target), "cannot write there", "choose another")


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_data_import_out_that_cannot_be_written(tmp_path, kind):
    source = tmp_path / "data.csv"
    source.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(10)), encoding="utf-8")
    if kind == "file":
        out = tmp_path / "taken"
        out.write_text("x")
    else:
        out = unwritable_dir(tmp_path)
    result = run_in_process("data", "import", str(source), "--out", str(out))
    assert_user_error(result, "--out", str(out), "choose another --out")


def test_train_out_that_is_a_file(tmp_path, cli_env):
    from tiny_encoders import build_tiny_bert

    model = build_tiny_bert(tmp_path / "bert", None)
    source = tmp_path / "data.csv"
    source.write_text("text,label\n" + "".join(f"good film {i},{'ab'[i % 2]}\n" for i in range(12)), encoding="utf-8")
    (tmp_path / "taken").write_text("x")
    result = run_cli("train", "--model", str(model), "--real", str(source), "--out", str(tmp_path / "taken"),
                     "--set", "training.epochs=1", env=cli_env)
    assert_user_error(result, str(tmp_path / "taken"), "choose another", "out")
    assert (tmp_path / "taken").read_text() == "x"


# ----------------------------------------------------------------------------- files that are not files


def test_fifo_beside_the_config_does_not_hang_the_task_listing(tmp_path, cli_env):
    import os

    os.mkfifo(tmp_path / "stuck.yaml")  # opening it would block until a writer comes
    path = config_file(tmp_path, task="sms_spma")
    result = run_cli("generate", str(path), env=cli_env, timeout=60)
    assert_user_error(result, "unknown task 'sms_spma'", "did you mean sms_spam")


def test_fifo_config_is_not_called_missing(tmp_path):
    import os

    os.mkfifo(tmp_path / "gen.yaml")
    result = run_in_process("generate", str(tmp_path / "gen.yaml"))
    message = assert_user_error(result, str(tmp_path / "gen.yaml"), "not a regular file")
    assert "not found" not in message


# ----------------------------------------------------------------------------- data messages


def test_broken_jsonl_line_is_named(tmp_path):
    import json

    lines = [json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) for i in range(50)]
    source = tmp_path / "data.jsonl"
    source.write_text("\n".join([*lines, '{"text": "oops", "label": }', *lines[:3]]) + "\n", encoding="utf-8")
    result = run_in_process("data", "import", str(source), "--out", str(tmp_path / "out"))
    message = assert_user_error(result, str(source), "line 51", "not valid JSON", "fix line 51")
    assert "character 0" not in message
    assert not (tmp_path / "out" / "import.json").exists()


def test_empty_label_cells_are_not_sent_to_label_map(tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(10)) + "no label,\n")
    result = run_in_process("data", "import", str(source), "--out", str(tmp_path / "out"), "--keep-empty")
    message = assert_user_error(result, "no label", "leave out --keep-empty")
    assert "--label-map" not in message
    result = run_in_process("data", "import", str(source), "--out", str(tmp_path / "out"), "--label-map", "=a")
    assert_user_error(result, "'=a'", "an empty label cell has no name to map")


def test_disjoint_train_and_test_labels(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(10)))
    test.write_text("text,label\nwin cash,spam\nsee you,ham\n")
    result = run_in_process("data", "import", str(train), "--test", str(test), "--out", str(tmp_path / "out"))
    assert_user_error(result, "train labels (0, 1", "test labels (ham, spam", "none in common", "--label-map")
    assert not (tmp_path / "out" / "import.json").exists()


def test_partly_different_label_sets_warn(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\n" + "".join(f"text {i},{'abc'[i % 3]}\n" for i in range(9)))
    test.write_text("text,label\nx,a\ny,d\n")
    result = run_in_process("data", "import", str(train), "--test", str(test), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "label sets differ" in result.stdout and "only in train: b, c" in result.stdout
    assert "only in test: d" in result.stdout


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--confidence", "1.5", "between 0 and 1"), ("--confidence", "nan", "between 0 and 1"),
     ("--bootstrap", "-1", "from 0"), ("--prior", "-0.5", "0 or more")],
)
def test_subjectivity_option_ranges_name_the_flag(tmp_path, option, value, fragment):
    judgments = tmp_path / "j.csv"
    judgments.write_text("more_objective,less_objective\nsms_spam,imdb\nimdb,sms_spam\n")
    result = run_in_process("analyze", "subjectivity", "tasks", "--judgments", str(judgments),
                            "--out", str(tmp_path / "out"), option, value)
    assert_user_error(result, option, f"got {value}", fragment, "for example")
    assert not (tmp_path / "out").exists()


def test_verbose_is_never_taken_from_an_option_value():
    """`-v` right after an option that takes a value is that value; the options that take one
    are read from the command tree, so a new option (`data import --format`) is known at once."""
    from typer.main import get_command

    from localsynth.cli import app, split_verbose
    from localsynth.cli.options import value_options

    assert split_verbose(["data", "import", "x.csv", "--format", "-v"]) == (["data", "import", "x.csv", "--format", "-v"], False)
    assert split_verbose(["generate", "--set", "-v", "-v"]) == (["generate", "--set", "-v"], True)
    assert split_verbose(["-v", "generate"]) == (["generate"], True)
    names = value_options(get_command(app))
    assert {"--set", "--format", "--stage", "--cell", "--site", "--label-map", "--shard"} <= names
    assert "--dry-run" not in names and "--verbose" not in names
