"""`localsynth generate`: one shard of synthetic rows into a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from localsynth.config import load_generate_config, shard_quota_problem
from localsynth.errors import UserError


def generate(
    config: Path | None = typer.Argument(
        None, help="Generation config YAML. Default: the embedded default (real SMS texts from SmolLM2 on the CPU)."
    ),
    mode: str | None = typer.Option(None, "--mode", help="zero-shot or few-shot (overrides the config)."),
    shard: str = typer.Option("0/1", "--shard", help="INDEX/COUNT: this process's part of the work."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set quota.per_label=500 (repeatable)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Where rows, stats and markers go."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, one prompt and the cost; generate nothing."),
) -> None:
    """Generate synthetic labelled texts with the configured backend (hf, vllm or openai)."""
    from localsynth.progress import log
    from localsynth.rundir import Shard, ShardPaths

    overrides = list(set_)
    if mode is not None:
        overrides.append(f"mode={mode}")
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
        from localsynth.estimate import estimate

        typer.echo(json.dumps(estimate(cfg, the_shard), indent=2, ensure_ascii=False))
        return
    if cfg.generator.model == "tiny-random":
        log("SMOKE RUN: generator.model is tiny-random, a random-weight model: its texts are meaningless. "
            "Leave generator.model unset for the embedded real model, or set it to a model folder or .gguf file.")
    from localsynth.generate import default_run_dir, run_generate
    from localsynth.io import output_dir

    if not ShardPaths(default_run_dir(cfg), the_shard).done.is_file():  # a finished shard writes nothing
        output_dir(default_run_dir(cfg), "run_dir (--run-dir)")
    stats = run_generate(cfg, the_shard, default_run_dir(cfg))
    log(
        f"shard {the_shard}: kept {stats['kept']} of {stats['requests']} requests "
        f"({stats['samples_per_s']} samples/s, {stats['tokens_per_s']} tokens/s) -> {default_run_dir(cfg)}"
    )
