"""`localsynth train`: fine-tune an encoder on real, synthetic or mixed data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from localsynth.cli.options import SetOption
from localsynth.training.config import load_train_config


def train(
    config: Path | None = typer.Argument(None, help="Training config YAML (optional when flags say enough)."),
    model: str | None = typer.Option(
        None, "--model", help="Local encoder folder (BERT, RoBERTa, MiniLM, ...), or all-MiniLM-L6-v2 (the packaged weights)."
    ),
    real: list[str] = typer.Option([], "--real", help="Real training data: a file or an imported folder (repeatable)."),
    synthetic: list[str] = typer.Option([], "--synthetic", help="A generation run directory (repeatable)."),
    task: str | None = typer.Option(None, "--task", help="Task whose label set to use."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (checkpoints, model, record)."),
    set_: SetOption = None,
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Train on the finished shards of a generation run that has unfinished ones."
    ),
) -> None:
    """Fine-tune a classifier with accelerate (run under `accelerate launch` or `torchrun` for
    several processes); a rerun resumes from the last checkpoint."""
    base: dict[str, Any] = {}
    if model:
        base["model"] = model
    if real or synthetic:
        base["train"] = [{"path": p} for p in real] + [{"run_dir": r} for r in synthetic]
    if task:
        base["task"] = task
    if out:
        base["out_dir"] = str(out)
    cfg = load_train_config(config, list(set_ or []), base)
    from localsynth.io import output_dir

    if not (Path(cfg.out_dir) / "train.done").is_file():
        output_dir(Path(cfg.out_dir), "out_dir (--out)")
    from localsynth.progress import log
    from localsynth.training.rows import allow_partial_runs
    from localsynth.training.train import run_train

    allow_partial_runs.set(allow_partial)
    record = run_train(cfg)
    import os

    if os.environ.get("RANK", "0") == "0":
        log(
            f"trained {record['steps']} steps on {record['train_rows']} rows ({record['samples_per_s']} samples/s, "
            f"final loss {record['final_loss']:.4f}) -> {Path(cfg.out_dir) / 'model'}"
        )
