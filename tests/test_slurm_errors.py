"""Bad input to `localsynth slurm`: exit 2 and one message naming the key or command, the value
and the fix. Missing commands and a silent controller use doubles on PATH (fault injection);
the real cluster tests cover the rest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import assert_user_error, generate_config, run_cli, run_in_process, write_yaml


@pytest.fixture()
def gen(tmp_path) -> Path:
    return write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, None))


def fake_bin(tmp_path: Path, **scripts: str) -> str:
    """A folder of stand-in commands, and a PATH with it and the system folders only."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return f"{folder}:/usr/bin:/bin" if scripts else "/nonexistent"


def env_with_path(cli_env: dict, path: str) -> dict:
    env = dict(cli_env)
    env["PATH"] = path
    env.pop("SLURM_CONF", None)
    return env


@pytest.mark.parametrize("value", ["4h", "25:61:00:00", "1-", "tomorrow"])
def test_bad_time_limit(gen, cli_env, value):
    result = run_cli("slurm", "render", str(gen), "--set", f"slurm.time={value}", env=cli_env)
    assert_user_error(result, "slurm.time", value, "HH:MM:SS")


def test_unquoted_yaml_time_asks_for_quotes(tmp_path, gen, cli_env):
    site = tmp_path / "site.yaml"
    site.write_text("time: 4:00:00\n")  # YAML 1.1 reads this as the number 14400
    result = run_cli("slurm", "render", str(gen), "--site", str(site), env=cli_env)
    assert_user_error(result, "slurm.time", "quotes", "14400")


def test_unknown_site_key_and_bad_memory_reported_together(tmp_path, gen, cli_env):
    site = write_yaml(tmp_path / "site.yaml", {"partiton": "gpu", "mem": "lots", "train": {"gpus": -1}})
    message = assert_user_error(run_cli("slurm", "render", str(gen), "--site", str(site), env=cli_env), "3 problems")
    assert "slurm.partiton" in message and "did you mean 'partition'" in message
    assert "slurm.mem" in message and "64G" in message and "slurm.train.gpus" in message


def test_tensor_parallel_larger_than_gpus(tmp_path, cli_env):
    cfg = generate_config(tmp_path, "/models/x", generator={"backend": "vllm", "model": "/models/x",
                                                           "vllm": {"tensor_parallel_size": 4}})
    path = write_yaml(tmp_path / "gen.yaml", cfg)
    result = run_cli("slurm", "render", str(path), "--set", "slurm.gpus=2", env=cli_env)
    assert_user_error(result, "tensor_parallel_size is 4", "slurm.generate.gpus=4")


def test_not_a_known_config(tmp_path, cli_env):
    path = write_yaml(tmp_path / "odd.yaml", {"hello": 1})
    assert_user_error(run_cli("slurm", "render", str(path), env=cli_env), "odd.yaml", "study config")


@pytest.mark.parametrize("command", ["submit", "status", "cancel"])
def test_slurm_commands_absent_from_path(gen, cli_env, command, tmp_path):
    if command != "submit":  # status and cancel need a record of a submission
        record = tmp_path / "run" / "slurm" / "jobs.json"
        record.parent.mkdir(parents=True)
        record.write_text('{"submissions": [{"time": "t", "jobs": [{"key": "g", "kind": "generate", "name": "n", '
                          '"job_id": "7", "script": "s", "tasks": [0], "submitted": [0], "markers": ["m"], "after": []}]}]}')
    result = run_cli("slurm", command, str(gen), env=env_with_path(cli_env, fake_bin(tmp_path)))
    assert_user_error(result, "is not on PATH", "login node")


def test_controller_that_does_not_answer(gen, cli_env, tmp_path):
    # Fault injection: clients that hang as real ones do when slurmctld is down (they retry ~120 s).
    path = fake_bin(tmp_path, squeue="sleep 60", sinfo="sleep 60", sbatch="sleep 60", scontrol="sleep 60")
    start = time.monotonic()
    result = run_cli("slurm", "submit", str(gen), "--set", "slurm.submit_timeout_s=2", env=env_with_path(cli_env, path))
    assert time.monotonic() - start < 30
    assert_user_error(result, "did not answer within 2 s", "scontrol ping", "submit_timeout_s")


def test_unknown_partition_lists_the_partitions(gen, cli_env, tmp_path):
    # A double for sinfo's partition list; the real cluster test submits to a real partition.
    path = fake_bin(tmp_path, squeue="exit 0", sinfo="printf 'debug\\ngpu\\n'", sbatch="echo should-not-run; exit 1")
    result = run_cli("slurm", "submit", str(gen), "--set", "slurm.partition=gpux", env=env_with_path(cli_env, path))
    assert_user_error(result, "slurm.partition 'gpux'", "debug, gpu")
    assert not (tmp_path / "run" / "slurm" / "jobs.json").exists()


def test_status_before_any_submission(gen, cli_env):
    assert_user_error(run_cli("slurm", "status", str(gen), env=cli_env), "nothing was submitted", "slurm submit")




# ----------------------------------------------------------------------------- nothing typed becomes a shell line


def render(*args: str):


    return run_in_process("slurm", "render", *args)


def assert_no_script(root: Path) -> None:
    assert not list(root.rglob("*.sbatch")), list(root.rglob("*.sbatch"))


@pytest.mark.parametrize("shards", ["-2", "0"])
def test_shards_below_one(gen, tmp_path, shards):
    assert_user_error(render(str(gen), "--shards", shards), "--shards must be at least 1", f"got {shards}", "--shards 4")
    assert_no_script(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("partition", "gpu\nrm -rf ~", "not a SLURM partition name"),
        ("partition", "gpu;reboot", "not a SLURM partition name"),
        ("account", "lab $(id)", "not a SLURM account name"),
        ("qos", "normal high", "not a SLURM qos name"),
        ("train.partition", "a\nb", "not a SLURM partition name"),
        ("gpu_type", "a100:2", "not a GPU type"),
        ("gpu_type", "a100\necho", "not a GPU type"),
        ("sbatch", ["--comment=x\nrm -rf ~"], "without line breaks"),
        ("command", "", "not a command line"),
        ("command", "localsynth\nrm -rf ~", "not a command line"),
        ("setup", [f"export OPENAI_API_KEY={'sk-FAKE0123456789abcdefXYZ'}"], "looks like an API key"),
    ],
)
def test_site_values_that_would_break_the_script(tmp_path, gen, key, value, fragment):
    site, node = {}, None
    parts = key.split(".")
    node = site
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    path = write_yaml(tmp_path / "site.yaml", site)
    message = assert_user_error(render(str(gen), "--site", str(path)), f"slurm.{key}", fragment)
    assert "sk-FAKE" not in message
    assert_no_script(tmp_path)


def test_newline_in_a_set_value_is_refused_and_shown_on_one_line(gen, tmp_path):
    result = render(str(gen), "--set", "slurm.partition=gpu\nrm -rf ~")
    message = assert_user_error(result, "slurm.partition (from --set slurm.partition=gpu\\nrm -rf ~)")
    assert "\nrm" not in message
    assert_no_script(tmp_path)


@pytest.mark.parametrize(
    ("settings", "key"),
    [(["slurm.time=5", "slurm.signal_s=300"], "slurm.signal_s"),
     (["slurm.train.time=5"], "slurm.train.signal_s")],
)
def test_signal_not_before_the_time_limit(gen, tmp_path, settings, key):
    args = [x for item in settings for x in ("--set", item)]
    assert_user_error(render(str(gen), *args), key, "not shorter than", "time limit", "raise slurm.")
    assert_no_script(tmp_path)


def test_signal_without_requeue_is_not_checked(gen):
    result = render(str(gen), "--set", "slurm.time=5", "--set", "slurm.requeue=false")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("run_dir", "fragment"),
    [("run\nrm -rf ~", "line break"), ("my run", "space or quote"), ("run$(reboot)", "expand")],
    ids=["newline", "space", "substitution"],
)
def test_run_dir_that_a_script_cannot_hold(tmp_path, run_dir, fragment):
    path = write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, None, run_dir=str(tmp_path / run_dir)))
    assert_user_error(render(str(path)), fragment)
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_model_path_with_shell_characters(tmp_path):
    cfg = generate_config(tmp_path, "/m/x", generator={"backend": "vllm", "model": "/m/`reboot`"})
    path = write_yaml(tmp_path / "gen.yaml", cfg)
    assert_user_error(render(str(path), "--set", "slurm.gpus=1"), "generator.model", "`reboot`", "expand")
    assert_no_script(tmp_path)


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    path = write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, None, run_dir=str(tmp_path / "taken")))
    assert_user_error(render(str(path)), "run_dir", "taken", "which is a file", "choose another run_dir")
    assert (tmp_path / "taken").read_text() == "x"


def test_shard_share_too_large(gen, tmp_path):
    result = render(str(gen), "--set", "quota.per_label=3000000", "--shards", "2")
    assert_user_error(result, "1,500,000 rows per label to one shard", "--shards 3")
    assert_no_script(tmp_path)
    assert render(str(gen), "--set", "quota.per_label=3000000", "--shards", "3").returncode == 0


def test_rendered_values_are_checked_in_every_script():
    """The last guard: a value with a line break never reaches a template, whatever the caller."""
    from localsynth.cluster.render import render as render_template
    from localsynth.errors import UserError

    with pytest.raises(UserError, match="line break"):
        render_template("report", {"name": "x\nrm -rf ~", "config": "c", "sbatch": "", "setup": "", "command": "ls"})
