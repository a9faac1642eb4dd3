"""`localsynth audit`: label fidelity, noisy labels, contamination and semantic duplicates of a
labelled set, before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from localsynth.cli.options import SetOption


def audit(
    target: Path = typer.Argument(..., metavar="RUN_DIR_OR_FILE", help="A generation run directory, or a labelled CSV / TSV / JSONL / Parquet file."),
    config: Path | None = typer.Option(None, "--config", help="Audit config YAML (optional; flags and --set override it)."),
    test: Path | None = typer.Option(None, "--test", help="The real test set: a file, or a data folder with test.parquet."),
    few_shot_pool: Path | None = typer.Option(None, "--few-shot-pool", help="The few-shot pool (default: the run's)."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="The judge's model (default: the generator's)."),
    judge_backend: str | None = typer.Option(None, "--judge-backend", help="hf, vllm or openai (default: the generator's)."),
    no_judge: bool = typer.Option(False, "--no-judge", help="Skip the LLM judge (the other checks need no LLM)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/audit, or FILE_STEM.audit beside a file)."),
    set_: SetOption = None,
) -> None:
    """Audit a synthetic set: judge agreement, confident-learning label issues, test-set and
    few-shot-pool contamination, within-label semantic duplicates; writes report.md,
    report.json and a per-row rows.parquet."""
    from localsynth.audit.run import load_audit_config, run_audit

    base: dict[str, Any] = {"input": str(target)}
    for key, value in (("test", test), ("few_shot_pool", few_shot_pool), ("out", out)):
        if value is not None:
            base[key] = str(value)
    judge: dict[str, Any] = {}
    if judge_model is not None:
        judge["model"] = judge_model
    if judge_backend is not None:
        judge["backend"] = judge_backend
    if no_judge:
        judge["enabled"] = False
    if judge:
        base["judge"] = judge
    cfg = load_audit_config(config, list(set_ or []), base)
    summary = run_audit(cfg)
    fid = summary["fidelity"]
    shown = [f"{summary['rows']:,} rows"]
    if "agreement" in fid:
        shown.append(f"judge agrees {100 * fid['agreement']:.1f}%")
    if "share" in summary["noise"]:
        shown.append(f"label issues {100 * summary['noise']['share']:.1f}%")
    test_part = summary["contamination"]["test"]
    if "contaminated" in test_part:
        shown.append(f"test contamination {100 * test_part['contaminated']['share']:.1f}%")
    if "share" in summary["semantic_duplicates"]:
        shown.append(f"semantic duplicates {100 * summary['semantic_duplicates']['share']:.1f}%")
    typer.echo(f"{'; '.join(shown)} -> {Path(summary['out']) / 'report.md'}")
