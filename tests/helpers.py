"""Helpers the test modules share (test modules never import each other): the repository's
paths, running the CLI as a user does (a new process) or in this process, configs, checks
of a bad-input exit, and small separable data."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = os.environ.get("LOCALSYNTH_REAL_DATA")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `python -m localsynth ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "localsynth", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def generate_config(tmp_path: Path, model: Path | str | None, **extra) -> dict:
    """A small generation config on the sms_spam task (extra keys merged at the top level)."""
    cfg = {
        "task": "sms_spam",
        "mode": "zero-shot",
        "seed": 1,
        "generator": {"backend": "hf", "model": str(model) if model else "tiny-random", "sampling": {"max_tokens": 24}},
        "quota": {"per_label": 6},
        "filters": {"drop_truncated": False},
        "run_dir": str(tmp_path / "run"),
        "progress": "log",
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def run_in_process(*args: str) -> subprocess.CompletedProcess:
    """`localsynth ARGS` through the real entry point (`localsynth.cli.main`, its error handling
    included) in this process: for errors found before any heavy work, without a new interpreter."""
    import contextlib
    import io

    from localsynth.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(["localsynth", *args], code, out.getvalue(), err.getvalue())


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


HEAVY = ("torch", "vllm", "transformers")


def modules_after(code: str) -> set[str]:
    probe = f"""
import sys
{code}
print("HEAVY:" + ",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    line = [x for x in result.stdout.splitlines() if x.startswith("HEAVY:")][-1]
    return set(filter(None, line.removeprefix("HEAVY:").split(",")))


POSITIVE = "good great funny love thanks win".split()
NEGATIVE = "bad terrible boring sorry loss stop".split()
FILLER = "the a movie film plot story actor is was it this that and".split()


def separable(n: int, seed: int) -> pl.DataFrame:
    """Texts whose label shows in two of their words, the rest filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        cue = POSITIVE if label == "pos" else NEGATIVE
        words = rng.choices(FILLER, k=rng.randint(3, 9)) + rng.choices(cue, k=2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return pl.DataFrame(rows, schema=["text", "label"], orient="row")
