"""The data quality of a study's synthetic sets: each set audited before any cell trains on it
(label fidelity by the generator as judge, confident learning, contamination against the
task's real test split, semantic duplicates; see localsynth.audit), and in the report one row
of signals per set with the rank correlation of each signal with the real-minus-synthetic F1
gap across the study's sets.

Locally a run is audited right after its generation, with the generation engine as the judge
(no second engine); the report audits what is still unaudited (a SLURM study's runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from localsynth.generation.config import GenerationRun
from localsynth.progress import log
from localsynth.study.config import Analysis
from localsynth.study.plan import Plan


def audit_folder(run: GenerationRun) -> Path:
    return Path(run.run_dir) / "audit"


def audit_runs(plan: Plan, analysis: Analysis, runs: list[GenerationRun] | None = None, engine: Any = None) -> None:
    """Audit every finished run (of `runs`) that has no complete audit yet; `engine`: a loaded
    (or loadable) generation backend to judge with."""
    from localsynth.audit.judge import Judge
    from localsynth.audit.report import is_complete
    from localsynth.audit.run import AuditConfig, run_audit

    for run in runs if runs is not None else plan.generate:
        if not run.is_done() or is_complete(audit_folder(run)):
            continue
        cfg = AuditConfig.model_validate({
            "input": str(run.run_dir), "test": plan.data[run.task]["test"], "report_texts": False,
            "judge": {"enabled": analysis.audit_judge}, "embeddings": {"model": analysis.embedding_model},
        })
        judge = None
        if engine is not None and analysis.audit_judge:
            engine.load()
            judge = Judge.on(engine.inner)
        log(f"audit of {run.id}")
        run_audit(cfg, judge)


def contamination(plan: Plan) -> dict[str, float | None]:
    """Per synthetic condition of each task ('task/mode'): the share of its rows that match the
    real test set (None: not audited)."""
    from localsynth.audit.study import contaminated_share

    return {run.id: contaminated_share(audit_folder(run)) for run in plan.generate}


def cell_contamination(plan: Plan, cells: pl.DataFrame) -> pl.DataFrame:
    """`cells` with the test-contaminated share of the synthetic rows each cell trained on
    (the largest over its synthetic sources; 0 for real data only)."""
    shares = contamination(plan)
    column = [
        max((shares.get(need) or 0.0 for need in cell.needs), default=0.0)
        for cell in plan.cells
    ]
    return cells.with_columns(pl.Series("contaminated_share", column, dtype=pl.Float64))


def quality_section(plan: Plan, cells: pl.DataFrame, div: pl.DataFrame | None, target: Path) -> list[str]:
    """quality.{csv,md} and quality_correlation.{csv,md} in the report folder, and the report's
    section on them."""
    from localsynth.analysis.agreement import markdown_table
    from localsynth.audit.study import SIGNALS, audit_quality_table, signal_gap_correlation
    from localsynth.io import update_text

    quality = audit_quality_table({(r.task, r.set_name): audit_folder(r) for r in plan.generate}, div)
    correlation = signal_gap_correlation(quality, cells)
    update_text(target / "quality.csv", quality.write_csv())
    update_text(target / "quality.md", markdown_table(quality))
    update_text(target / "quality_correlation.csv", correlation.write_csv())
    update_text(target / "quality_correlation.md", markdown_table(correlation))
    meanings = "; ".join(f"{name}: {what}" for name, what in SIGNALS.items())
    return [
        "## Data quality of the synthetic sets\n",
        f"Audited before training (localsynth audit): {meanings}.\n",
        markdown_table(quality),
        "Spearman's rho of each signal with the real-minus-synthetic Macro-F1 gap across the synthetic sets "
        "(first model and size), with a 95% bootstrap interval over sets and seeds:\n",
        markdown_table(correlation),
    ]
