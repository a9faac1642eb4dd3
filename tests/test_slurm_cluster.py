"""The SLURM commands against a real single-node SLURM (munged, slurmctld, slurmd from the Debian
packages), started and stopped by scripts/slurm-cluster.sh: a study through sbatch, preempted
and requeued shards, a failing shard whose dependents are cancelled, and a resubmit."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import REPO, assert_user_error, generate_config, run_cli, separable, write_yaml
from tiny_encoders import build_tiny_bert

pytestmark = pytest.mark.slurm
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
COMMAND = f"{sys.executable} -m localsynth"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running cluster for the session; skipped where none can be started here."""
    installed = all(shutil.which(p) for p in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not installed and os.geteuid() != 0:
        pytest.skip("SLURM is not installed and installing it needs root: apt-get install slurmctld slurmd slurm-client munge")
    if not installed and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get here to install it")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_CTLD_PORT": str(free_port()), "SLURM_D_PORT": str(free_port())}
    started = subprocess.run(["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, env=env, timeout=300)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, timeout=60)
        if os.geteuid() != 0:
            pytest.skip(f"could not start SLURM without root: {started.stderr.strip()}")
        pytest.fail(f"could not start SLURM: {started.stdout}{started.stderr}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def scontrol_fields(job: str) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    return [dict(t.split("=", 1) for t in line.split() if "=" in t) for line in out.splitlines() if line.strip()]


def wait_for(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def release_requeued(job: str) -> None:
    """A requeued job is held for about two minutes (Reason=BeginTime): once it is pending
    again, move its start time to now (until the controller takes it)."""
    wait_for(lambda: scontrol_fields(job)[0].get("Restarts") == "1", 60, f"{job} to be requeued")

    def started() -> bool:
        fields = scontrol_fields(job)[0]
        if fields.get("JobState") == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
            return False
        return True

    wait_for(started, 120, f"{job} to start again", 1)


def finished(job: str) -> bool:
    states = [f.get("JobState") for f in scontrol_fields(job)]
    return bool(states) and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states)


def site_file(tmp_path: Path, **extra) -> Path:
    site = {"time": "00:20:00", "cpus": 1, "command": COMMAND, "signal_s": 60, **extra}
    return write_yaml(tmp_path / "site.yaml", site)


def submit(config: Path, *args: str, env=None):
    result = run_cli("slurm", "submit", str(config), *args, env=env, cwd=config.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return {line.split()[2]: line.split()[1] for line in result.stdout.splitlines() if line.startswith("submitted")}


def run_dir_of(out_dir: Path) -> Path:
    plan = json.loads((out_dir / "plan.json").read_text())
    return Path(plan["generate"][0]["run_dir"])


def shard_rows(run_dir: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((run_dir / "shards").glob("*.parquet"))]).sort("id")


# ----------------------------------------------------------------------------- preemption


def slow_config(tmp_path: Path, model: Path, run: str) -> Path:
    # One request per batch: about 36 sequential batches per shard, time enough to signal one
    # mid-way (its finished requests are logged every 0.2 s).
    cfg = generate_config(tmp_path, model, quota={"per_label": 30}, run_dir=str(tmp_path / run), flush_every_s=0.2)
    cfg["generator"]["hf"] = {"batch_size": 1}
    return write_yaml(tmp_path / f"{run}.yaml", cfg)


def test_preempted_shards_requeue_and_resume(slurm_cluster, tiny_llama, tmp_path, cli_env):
    """Shard 0 gets the time-limit warning (USR1: it saves and requeues itself); shard 1 is
    requeued by `scontrol requeue` (as preemption does). Both resume; the rows equal an
    uninterrupted local run, none lost, none duplicated."""
    config = slow_config(tmp_path, tiny_llama, "run")
    ids = submit(config, "--shards", "2", "--site", str(site_file(tmp_path)), env=cli_env)
    array = ids["ls-gen-sms_spam-zero-shot"]
    logs = tmp_path / "run" / "shards"
    for task in (0, 1):  # mid-generation: some requests logged, the shard not finished
        wait_for(lambda t=task: list(logs.glob(f"0000{t}-of-00002.log/part-*")), 240, f"shard {task} to log requests", 0.1)
        if task == 0:
            subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array}_0"], check=True, timeout=30)
        else:
            subprocess.run(["scontrol", "requeue", f"{array}_1"], check=True, timeout=30)
    assert not list(logs.glob("*.done"))
    for task in (0, 1):
        release_requeued(f"{array}_{task}")
    wait_for(lambda: finished(f"{array}"), 300, "the array to finish", 2)
    assert [f["JobState"] for f in scontrol_fields(array)] == ["COMPLETED", "COMPLETED"]
    for task in (0, 1):
        log = (tmp_path / "run/slurm/logs" / f"ls-gen-sms_spam-zero-shot-{array}_{task}.out").read_text()
        assert "attempt 2" in log and "resuming shard" in log, log
    assert "requeueing job" in (tmp_path / "run/slurm/logs" / f"ls-gen-sms_spam-zero-shot-{array}_0.out").read_text()

    slurm_rows = shard_rows(tmp_path / "run")
    assert slurm_rows["id"].n_unique() == slurm_rows.height
    for task in (0, 1):
        local = run_cli("generate", str(config), "--shard", f"{task}/2", "--run-dir", str(tmp_path / "local"), env=cli_env)
        assert local.returncode == 0, local.stderr
    local_rows = shard_rows(tmp_path / "local")
    columns = ["id", "label", "text", "raw_output", "seed"]
    assert slurm_rows.select(columns).equals(local_rows.select(columns))

    status = run_cli("slurm", "status", str(config), env=cli_env, cwd=tmp_path)
    assert status.returncode == 0 and "2/2" in status.stdout, status.stdout + status.stderr


# ----------------------------------------------------------------------------- a study


@pytest.fixture()
def study(tmp_path, tiny_llama) -> Path:
    data = tmp_path / "data" / "sms_spam"
    data.mkdir(parents=True)
    for split, n, seed in (("train", 120, 0), ("test", 60, 1)):
        df = separable(n, seed).with_columns(pl.col("label").replace({"pos": "ham", "neg": "spam"}))
        df.write_parquet(data / f"{split}.parquet")
    bert = build_tiny_bert(tmp_path / "bert", None)
    cfg = {
        "name": "tiny-slurm", "out_dir": str(tmp_path / "study"), "tasks": ["sms_spam"],
        "conditions": ["real", "zero-shot"], "models": {"bert": str(bert)}, "seeds": [0], "sizes": [12],
        "data_dir": str(tmp_path / "data"),
        "generation": {"generator": {"backend": "hf", "model": str(tiny_llama), "sampling": {"max_tokens": 24}},
                       "quota": {"per_label": 12}, "filters": {"drop_truncated": False}, "shards": 3},
        "training": {"learning_rate": 1e-3, "batch_size": 8, "epochs": 2, "max_length": 32},
        "evaluation": {"max_length": 32},
        "analysis": {"diversity": False},
        "progress": "log",
        "slurm": {"time": "00:20:00", "cpus": 1, "command": COMMAND},
    }
    return write_yaml(tmp_path / "study.yaml", cfg)


def test_study_through_sbatch_matches_a_local_run(slurm_cluster, study, tmp_path, cli_env):
    ids = submit(study, env=cli_env)
    assert set(ids) == {"ls-gen-sms_spam-zero-shot", "ls-train-tiny-slurm-0", "ls-train-tiny-slurm-1", "ls-report-tiny-slurm"}
    report = ids["ls-report-tiny-slurm"]
    wait_for(lambda: finished(report), 600, "the report job", 2)
    assert scontrol_fields(report)[0]["JobState"] == "COMPLETED", (tmp_path / "study/slurm/logs").iterdir()
    local = run_cli("experiment", str(study), "--out", str(tmp_path / "local"), env=cli_env, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    slurm_rows = shard_rows(run_dir_of(tmp_path / "study"))
    local_rows = shard_rows(run_dir_of(tmp_path / "local"))
    assert slurm_rows.select("id", "text", "label").equals(local_rows.select("id", "text", "label"))
    slurm_table = (tmp_path / "study/report/table1.md").read_text()
    assert slurm_table == (tmp_path / "local/report/table1.md").read_text()
    status = run_cli("slurm", "status", str(study), env=cli_env, cwd=tmp_path)
    assert status.returncode == 0 and "3/3" in status.stdout, status.stdout + status.stderr


def test_failing_shard_cancels_dependents_and_resubmit_sends_only_it(slurm_cluster, study, tmp_path, cli_env):
    # Fault injection: a file where shard 1 keeps its request log makes that shard fail.
    plan = run_cli("experiment", str(study), "--stage", "plan", env=cli_env, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    run_dir = run_dir_of(tmp_path / "study")
    blocker = run_dir / "shards" / "00001-of-00003.log"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    ids = submit(study, env=cli_env)
    array, report = ids["ls-gen-sms_spam-zero-shot"], ids["ls-report-tiny-slurm"]
    dependent = ids["ls-train-tiny-slurm-1"]
    wait_for(lambda: finished(report) and finished(dependent) and finished(array), 300, "the dependents to end", 2)
    states = {f.get("ArrayTaskId"): f["JobState"] for f in scontrol_fields(array)}
    assert states == {"0": "COMPLETED", "1": "FAILED", "2": "COMPLETED"}, states
    assert {f["JobState"] for f in scontrol_fields(dependent)} == {"CANCELLED"}
    assert scontrol_fields(report)[0]["JobState"] == "CANCELLED"
    real_cell = ids["ls-train-tiny-slurm-0"]  # needs no generation: unaffected
    wait_for(lambda: finished(real_cell), 300, "the real-data cell", 2)
    assert scontrol_fields(real_cell)[0]["JobState"] == "COMPLETED"

    status = run_cli("slurm", "status", str(study), env=cli_env, cwd=tmp_path)
    assert status.returncode == 0 and "FAILED" in status.stdout and "2/3" in status.stdout, status.stdout

    blocker.unlink()
    again = run_cli("slurm", "submit", str(study), env=cli_env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    lines = [line for line in again.stdout.splitlines() if line.startswith("submitted")]
    assert any("ls-gen-sms_spam-zero-shot tasks 1 " in line + " " for line in lines), lines
    assert not any("ls-train-tiny-slurm-0" in line for line in lines), lines  # its cell is done
    report2 = next(line.split()[1] for line in lines if "ls-report" in line)
    wait_for(lambda: finished(report2), 600, "the resubmitted report", 2)
    assert scontrol_fields(report2)[0]["JobState"] == "COMPLETED"
    rows = shard_rows(run_dir)
    assert rows["id"].n_unique() == rows.height and len(list((run_dir / "shards").glob("*.done"))) == 3


def test_unknown_partition_on_the_real_cluster(slurm_cluster, tiny_llama, tmp_path, cli_env):


    config = write_yaml(tmp_path / "gen.yaml", generate_config(tmp_path, tiny_llama))
    result = run_cli("slurm", "submit", str(config), "--site", str(site_file(tmp_path, partition="gpux")),
                     env=cli_env, cwd=tmp_path)
    assert_user_error(result, "slurm.partition 'gpux'", "debug")  # the cluster's real partition list
    assert not (tmp_path / "run" / "slurm" / "jobs.json").exists()


def test_requeued_training_resumes_from_its_checkpoint(slurm_cluster, tmp_path, cli_env):
    """A training job requeued mid-way (as preemption does) resumes from its last checkpoint and
    completes the same schedule."""
    separable(400, 0).write_parquet(tmp_path / "train.parquet")
    bert = build_tiny_bert(tmp_path / "bert", None)
    out = tmp_path / "clf"
    cfg = {"model": str(bert), "labels": ["neg", "pos"], "train": [{"path": str(tmp_path / "train.parquet")}],
           "out_dir": str(out), "progress": "log",
           "training": {"learning_rate": 1e-3, "batch_size": 8, "epochs": 12, "max_length": 32, "checkpoint_every_steps": 10}}
    config = write_yaml(tmp_path / "train.yaml", cfg)
    (job,) = submit(config, "--site", str(site_file(tmp_path)), env=cli_env).values()
    wait_for(lambda: list((out / "checkpoints").glob("step-*")), 240, "a first checkpoint", 0.1)
    assert not (out / "train.done").exists(), "training finished before it could be requeued; give it more steps"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    release_requeued(job)
    wait_for(lambda: finished(job), 600, "the training job to finish", 2)
    assert scontrol_fields(job)[0]["JobState"] == "COMPLETED"
    record = json.loads((out / "training.json").read_text())
    assert record["resumed_from"] and "step-" in record["resumed_from"], record
    step = int(record["resumed_from"].rsplit("-", 1)[1])
    assert 0 < step < 600 and record["rows_trained"] == 12 * 400 - step * 8  # resumed mid-run, not from zero
    log = next((out / "slurm" / "logs").glob("*.out")).read_text()
    assert "attempt 2" in log, log
