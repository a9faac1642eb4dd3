"""`localsynth generate`: one shard of synthetic rows into a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from localsynth.config import load_generate_config


def generate(
    config: Path | None = typer.Argument(
        None, help="Generation config YAML. Default: the embedded smoke config (tiny random model)."
    ),
    mode: str | None = typer.Option(None, "--mode", help="zero-shot or few-shot (overrides the config)."),
    shard: str = typer.Option("0/1", "--shard", help="INDEX/COUNT: this process's part of the work."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set quota.per_label=500 (repeatable)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Where rows, stats and markers go."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, one prompt and the cost; generate nothing."),
) -> None:
    """Generate synthetic labelled texts with the configured backend (hf, vllm or openai)."""
    from localsynth.progress import log
    from localsynth.rundir import Shard

    overrides = list(set_)
    if mode is not None:
        overrides.append(f"mode={mode}")
    if run_dir is not None:
        overrides.append(f"run_dir={run_dir}")
    cfg = load_generate_config(config, overrides)
    the_shard = Shard.parse(shard)
    if dry_run:
        from localsynth.estimate import estimate

        typer.echo(json.dumps(estimate(cfg, the_shard), indent=2, ensure_ascii=False))
        return
    if cfg.generator.backend == "hf" and not cfg.generator.model:
        log("SMOKE RUN: no generator.model given, so a tiny random-weight model is used. Its texts are "
            "meaningless; set generator.model=DIR for real data.")
    from localsynth.generate import default_run_dir, run_generate

    stats = run_generate(cfg, the_shard, default_run_dir(cfg))
    log(
        f"shard {the_shard}: kept {stats['kept']} of {stats['requests']} requests "
        f"({stats['samples_per_s']} samples/s, {stats['tokens_per_s']} tokens/s) -> {default_run_dir(cfg)}"
    )
