"""`localsynth experiment`: the whole study (generate -> train -> evaluate -> report) as one command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from localsynth.cli.options import SetOption
from localsynth.errors import UserError


class Stage(str, Enum):
    all = "all"
    plan = "plan"
    generate = "generate"
    train = "train"
    report = "report"


def experiment(
    config: Path = typer.Argument(..., help="Study config YAML (tasks, conditions, models, seeds, sizes)."),
    stage: Stage = typer.Option(
        Stage.all, "--stage", help="all, or one stage: plan (write the stage configs), generate, train (and evaluate), report."
    ),
    cell: str | None = typer.Option(None, "--cell", help="With --stage train: only this cell (index or id, see plan.json)."),
    set_: SetOption = None,
    out: Path | None = typer.Option(None, "--out", help="The study folder (overrides out_dir)."),
) -> None:
    """Run a study: every cell of tasks x conditions x models x sizes x seeds, skipping what is
    done, then write the report (Table 1, diversity, subjectivity, cost)."""
    from localsynth.progress import log
    from localsynth.study.config import load_study_config
    from localsynth.study.plan import current_plan, make_plan
    from localsynth.study.run import generate_runs, run_cells

    if cell is not None and stage != Stage.train:
        raise UserError(f"--cell goes with --stage train (one cell's training and evaluation); got --stage {stage.value}")
    cfg = load_study_config(config, list(set_ or []), out)
    # One array task of training reads the plan its submission wrote instead of planning the grid again.
    plan = current_plan(cfg, str(config)) if cell is not None else make_plan(cfg, str(config))
    todo = plan.missing_cells()
    log(f"study {cfg.name}: {len(plan.generate)} generation runs, {len(plan.cells)} cells "
        f"({len(plan.cells) - len(todo)} done) in {plan.out_dir}")
    if stage == Stage.plan:
        typer.echo(f"wrote {Path(plan.out_dir) / 'plan.json'} and the stage configs")
        return
    if stage in (Stage.all, Stage.generate):
        needed = {need for c in todo for need in c.needs} if stage == Stage.all else None
        generate_runs(plan, sorted(needed) if needed is not None else None, cfg.analysis)
    if stage in (Stage.all, Stage.train):
        run_cells(plan, cfg, plan.cell(cell) if cell is not None else None)
    if stage in (Stage.all, Stage.report):
        import os

        if os.environ.get("RANK", "0") != "0":
            return
        from localsynth.study.report import write_report

        report = write_report(plan, cfg)
        typer.echo((Path(plan.report_dir) / "table1.md").read_text(encoding="utf-8"), nl=False)
        typer.echo(f"report: {report}")
