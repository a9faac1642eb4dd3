"""`localsynth generate`: one shard of synthetic rows into a run directory."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from localsynth.cli.options import SetOption
from localsynth.errors import UserError
from localsynth.generation.config import load_generate_config, shard_quota_problem


class Mode(str, Enum):
    zero_shot = "zero-shot"
    few_shot = "few-shot"


def generate(
    config: Path | None = typer.Argument(
        None, help="Generation config YAML. Default: the embedded default (real SMS texts from SmolLM2 on the CPU)."
    ),
    mode: Mode | None = typer.Option(None, "--mode", help="zero-shot or few-shot (overrides the config)."),
    shard: str = typer.Option("0/1", "--shard", help="INDEX/COUNT: this process's part of the work."),
    set_: SetOption = None,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Where rows, stats and markers go."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, one prompt and the cost; generate nothing."),
) -> None:
    """Generate synthetic labelled texts with the configured backend (hf, vllm or openai)."""
    from localsynth.generation.rundir import Shard, ShardPaths
    from localsynth.progress import log

    overrides = list(set_ or [])
    if mode is not None:
        overrides.append(f"mode={mode.value}")
    if run_dir is not None:
        overrides.append(f"run_dir={run_dir}")
    cfg = load_generate_config(config, overrides)
    the_shard = Shard.parse(shard)
    too_many = shard_quota_problem(
        cfg.quota.per_label, the_shard.count,
        "run --shard INDEX/{n} for INDEX 0 to {n}-1 (on SLURM: localsynth slurm render CONFIG --shards {n})",
    )
    if too_many:  # planning a shard holds all of its rows at once, a dry run too
        raise UserError(too_many)
    if dry_run:
        from localsynth.generation.estimate import estimate

        typer.echo(json.dumps(estimate(cfg, the_shard), indent=2, ensure_ascii=False))
        return
    if cfg.generator.model == "tiny-random":
        log("SMOKE RUN: generator.model is tiny-random, a random-weight model: its texts are meaningless. "
            "Leave generator.model unset for the embedded real model, or set it to a model folder or .gguf file.")
    from localsynth.generation.run import generate_shard
    from localsynth.io import output_dir

    run_dir = Path(cfg.run_dir)
    if not ShardPaths(run_dir, the_shard).done.is_file():  # a finished shard writes nothing
        output_dir(run_dir, "run_dir (--run-dir)")
    stats = generate_shard(cfg, the_shard, run_dir)
    log(
        f"shard {the_shard}: kept {stats['kept']} of {stats['requests']} requests "
        f"({stats['samples_per_s']} samples/s, {stats['tokens_per_s']} tokens/s) -> {run_dir}"
    )
