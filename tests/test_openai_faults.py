"""The openai backend against a local OpenAI-compatible server that misbehaves on purpose.

The server (stdlib http.server, one thread per connection, on a free loopback port) answers a
deterministic share of chat requests with 429 + Retry-After, 500 + Retry-After-ms, or slowly,
and the rest with a valid completion whose text is unique to the request (so dedup keeps it).
It records what it saw: statuses sent, attempts per request seed, Authorization headers and the
most requests it had in flight at once. Everything on the client side is real: the official
`openai` client, its retry logic, the backend, the generation loop and the CLI.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml
from fault_server import API_KEY, MODEL, FaultServer, openai_config
from helpers import generate_config, run_cli, write_yaml

from localsynth.generation.config import load_generate_config
from localsynth.generation.run import generate_shard
from localsynth.generation.rundir import Shard


def run(cfg_dict: dict, tmp_path: Path, *overrides: str) -> tuple[dict, pl.DataFrame]:
    """Generate one shard in-process (the server lives in this process)."""
    cfg = load_generate_config(write_yaml(tmp_path / "gen.yaml", cfg_dict), list(overrides))
    run_dir = Path(cfg_dict["run_dir"])
    stats = generate_shard(cfg, Shard(0, 1), run_dir)
    rows = pl.read_parquet(run_dir / "shards" / "00000-of-00001.parquet")
    return stats, rows


def test_faults_are_retried_within_the_concurrency_bound(tmp_path):
    with FaultServer() as server:
        # One turn per conversation: all 24 requests of the first round are ready at once.
        stats, rows = run(openai_config(tmp_path, server.base_url), tmp_path, "task.conversation.turns=1")

    assert stats["kept"] == 20 and stats["shortfall_per_label"] == {}
    assert stats["kept_per_label"] == {"ham": 10, "spam": 10}
    assert rows.filter(pl.col("parse_error").str.starts_with("request_failed")).height == 0
    assert rows.filter(pl.col("kept")).height == 20
    # Retries really happened, through the official client's own logic.
    assert server.statuses[429] > 0 and server.statuses[500] > 0
    assert server.arrivals == rows.height + server.statuses[429] + server.statuses[500]
    # The bound holds with retries and slow responses, and requests really overlapped.
    assert 2 <= server.max_in_flight <= 4
    # Token counts come from the server's usage.
    assert rows["completion_tokens"].to_list() == [12] * rows.height
    assert stats["completion_tokens"] == 12 * rows.height


def test_rate_limits_do_not_lose_rows(tmp_path):
    with FaultServer() as server:
        cfg = openai_config(tmp_path, server.base_url, requests_per_minute=1200, tokens_per_minute=200_000)
        stats, rows = run(cfg, tmp_path)
    assert stats["kept"] == 20 and stats["shortfall_per_label"] == {}
    assert rows.filter(pl.col("parse_error").is_not_null()).height == 0
    assert server.max_in_flight <= 4


def test_request_failing_beyond_max_retries_becomes_a_row(tmp_path):
    def fault(n: int, body: dict) -> str:
        return "500" if body["seed"] % 4 == 0 else "ok"

    with FaultServer(fault) as server:
        stats, rows = run(openai_config(tmp_path, server.base_url, max_retries=2), tmp_path)

    failed = rows.filter(pl.col("parse_error").str.starts_with("request_failed"))
    assert failed.height > 0
    assert set(failed["seed"].to_list()) == {s for s in rows["seed"].to_list() if s % 4 == 0}
    assert all("InternalServerError 500" in e for e in failed["parse_error"].to_list())
    assert failed["raw_output"].null_count() == failed.height and not failed["kept"].any()
    # 1 attempt + max_retries retries for every failing request, no more.
    assert {server.attempts_by_seed[s] for s in failed["seed"].to_list()} == {3}
    assert stats["dropped"]["request_failed"] == failed.height
    # Top-up rounds replace the failures: the quota is still met.
    assert stats["kept"] == 20 and stats["shortfall_per_label"] == {}


def test_api_key_is_sent_but_never_written(tmp_path, cli_env):
    with FaultServer() as server:
        cfg = openai_config(tmp_path, server.base_url, api_key_env="LOCALSYNTH_TEST_KEY")
        path = write_yaml(tmp_path / "gen.yaml", cfg)
        env = {**cli_env, "LOCALSYNTH_TEST_KEY": API_KEY}
        env.pop("OPENAI_API_KEY", None)
        result = run_cli("generate", str(path), "--set", "quota.per_label=4", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert server.auth_headers == {f"Bearer {API_KEY}"}
    assert API_KEY not in result.stdout + result.stderr

    run_dir = tmp_path / "run"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and (run_dir / "shards" / "00000-of-00001.done").is_file()
    for file in files:
        assert API_KEY.encode() not in file.read_bytes(), file
        if file.suffix == ".parquet":  # compressed: check the decoded values and metadata too
            import pyarrow.parquet as pq

            table = pq.read_table(file)
            assert API_KEY not in str(table.to_pylist()) and API_KEY not in str(table.schema.metadata)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["generator"]["openai"]["api_key_env"] == "LOCALSYNTH_TEST_KEY"


def test_model_not_served_is_a_user_error(tmp_path, cli_env):
    with FaultServer() as server:
        cfg = openai_config(tmp_path, server.base_url)
        path = write_yaml(tmp_path / "gen.yaml", cfg)
        result = run_cli("generate", str(path), "--set", "generator.model=other-model", env=cli_env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "other-model" in result.stderr and MODEL in result.stderr and "Traceback" not in result.stderr
    assert not [p for p in (tmp_path / "run").glob("shards/*") if p.suffix != ".lock"]  # the shard lock only


def test_rejected_key_mid_run_stops_with_a_user_error(tmp_path, cli_env):
    """A 401 on chat requests (after GET /models passed) is a settings problem, not a bad row:
    exit 2 naming the variable, no completion marker, and the key itself nowhere."""
    with FaultServer(lambda n, body: "401" if n > 3 else "ok") as server:
        path = write_yaml(tmp_path / "gen.yaml", openai_config(tmp_path, server.base_url))
        result = run_cli("generate", str(path), env={**cli_env, "OPENAI_API_KEY": API_KEY}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.stderr
    assert API_KEY not in result.stdout + result.stderr
    assert not (tmp_path / "run" / "shards" / "00000-of-00001.done").exists()
    assert not (tmp_path / "run" / "shards" / "00000-of-00001.parquet").exists()


def test_every_request_refused_stops_with_a_user_error(tmp_path, cli_env):
    """400 for every request means bad settings (e.g. a parameter the model refuses): one
    message, exit 2, rather than a "complete" shard made only of failures."""
    with FaultServer(lambda n, body: "400") as server:
        path = write_yaml(tmp_path / "gen.yaml", openai_config(tmp_path, server.base_url))
        result = run_cli("generate", str(path), env=cli_env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "refused every request" in result.stderr and "injected 400" in result.stderr
    assert "generator.sampling" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "shards" / "00000-of-00001.done").exists()


def test_missing_api_key_for_the_openai_api(tmp_path, cli_env):
    cfg = generate_config(
        tmp_path, MODEL, generator={"backend": "openai", "model": MODEL, "openai": {"api_key_env": "LOCALSYNTH_NO_SUCH_KEY"}}
    )
    path = write_yaml(tmp_path / "gen.yaml", cfg)
    env = dict(cli_env)
    env.pop("LOCALSYNTH_NO_SUCH_KEY", None)
    result = run_cli("generate", str(path), env=env, timeout=120)
    assert result.returncode == 2
    assert "LOCALSYNTH_NO_SUCH_KEY" in result.stderr and "Traceback" not in result.stderr
