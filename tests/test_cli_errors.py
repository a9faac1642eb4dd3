"""Bad input through the real CLI: exit code 2, one message naming the problem and the fix,
no traceback (unless --verbose), and nothing in the run directory that looks finished."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, generate_config, run_cli, write_yaml

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


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str, run_dir: Path | None = None) -> str:
    """Exit 2, exactly one error message, containing every fragment; no traceback; and no
    completion marker or shard rows left behind."""
    out = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{out}"
    assert "Traceback" not in out, out
    assert result.stderr.count("error:") == 1, result.stderr
    message = result.stderr[result.stderr.index("error:") :]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    if run_dir is not None:
        assert not list(run_dir.glob("**/*.done")), list(run_dir.rglob("*"))
        assert not list(run_dir.glob("shards/*.parquet")), list(run_dir.rglob("*"))
    return message


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


HEAVY = ("torch", "vllm", "transformers")


def _modules_after(code: str) -> set[str]:
    probe = f"""
import sys
{code}
print("HEAVY:" + ",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    line = [x for x in result.stdout.splitlines() if x.startswith("HEAVY:")][-1]
    return set(filter(None, line.removeprefix("HEAVY:").split(",")))


def test_import_and_help_stay_light():
    assert _modules_after("import localsynth") == set()
    for argv in (["--help"], ["generate", "--help"], ["generate", "--set", "task=nope"]):
        code = f"""
from localsynth.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""
        assert _modules_after(code) == set(), argv


# ----------------------------------------------------------------------------- run directories


def test_fixing_a_failed_setting_then_rerunning_works(tmp_path, cli_env):
    env = {**cli_env, "CUDA_VISIBLE_DEVICES": ""}
    path = config_file(tmp_path, generator={"hf": {"device": "cuda"}}, quota={"per_label": 1})
    assert run_cli("generate", str(path), env=env).returncode == 2
    result = run_cli("generate", str(path), "--set", "generator.hf.device=cpu", env=env)
    assert result.returncode == 0, result.stderr


def test_other_config_in_a_finished_run_dir_is_refused(tmp_path, cli_env):
    from test_openai_faults import FaultServer, openai_config  # a quick way to a finished shard

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
