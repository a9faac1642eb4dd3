"""`localsynth experiment`: the whole study (generate -> train -> evaluate -> report) as one command."""

from __future__ import annotations

from pathlib import Path

import typer

from localsynth.errors import UserError

STAGES = ("all", "plan", "generate", "train", "report")


def experiment(
    config: Path = typer.Argument(..., help="Experiment config YAML (tasks, conditions, models, seeds, sizes)."),
    stage: str = typer.Option(
        "all", "--stage", help="all, or one stage: plan (write the stage configs), generate, train (and evaluate), report."
    ),
    cell: str | None = typer.Option(None, "--cell", help="With --stage train: only this cell (index or id, see plan.json)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set seeds=[0,1,2] (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="The study folder (overrides out_dir)."),
) -> None:
    """Run a study: every cell of tasks x conditions x models x sizes x seeds, skipping what is
    done, then write the report (Table 1, diversity, subjectivity, cost)."""
    from localsynth.experiment import make_plan, missing_cells, run_cells, run_generation
    from localsynth.experimentconfig import load_experiment_config
    from localsynth.progress import log

    if stage not in STAGES:
        raise UserError(f"--stage must be one of {', '.join(STAGES)}; got '{stage}'")
    if cell is not None and stage != "train":
        raise UserError(f"--cell goes with --stage train (one cell's training and evaluation); got --stage {stage}")
    cfg = load_experiment_config(config, list(set_), out)
    plan = make_plan(cfg, str(config))
    todo = missing_cells(plan)
    log(f"study {cfg.name}: {len(plan.generate)} generation runs, {len(plan.cells)} cells "
        f"({len(plan.cells) - len(todo)} done) in {plan.out_dir}")
    if stage == "plan":
        typer.echo(f"wrote {Path(plan.out_dir) / 'plan.json'} and the stage configs")
        return
    if stage in ("all", "generate"):
        needed = {need for c in todo for need in c.needs} if stage == "all" else None
        run_generation(plan, sorted(needed) if needed is not None else None)
    if stage in ("all", "train"):
        run_cells(plan, cfg, plan.cell(cell) if cell is not None else None)
    if stage in ("all", "report"):
        import os

        if os.environ.get("RANK", "0") != "0":
            return
        from localsynth.report import write_report

        report = write_report(plan, cfg)
        typer.echo((Path(plan.report_dir) / "table1.md").read_text(encoding="utf-8"), nl=False)
        typer.echo(f"report: {report}")
