"""`localsynth analyze`: diversity of text sets; subjectivity at instance and task level."""

from __future__ import annotations

import math
import time
from pathlib import Path

import typer

from localsynth.analysis.settings import EMBED_DEFAULTS
from localsynth.cli.groups import command_group
from localsynth.cli.options import BatchSizeOption, DeviceOption, MaxLengthOption, TextColumnOption
from localsynth.errors import UserError

app = command_group("Analyses: diversity of text sets, accuracy against agreement, task subjectivity.")
subjectivity_app = command_group("Subjectivity: accuracy against instance agreement; Bradley-Terry task scores.")
app.add_typer(subjectivity_app, name="subjectivity")


@app.callback()
def analyze() -> None:
    """Analyses: diversity of text sets, accuracy against agreement, task subjectivity."""


@subjectivity_app.callback()
def subjectivity() -> None:
    """Subjectivity: accuracy against instance agreement (instances); task scores (tasks)."""


def _out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out} ({exc.strerror}); choose another --out") from None
    return out


MAX_BOOTSTRAP = 100_000  # each resample is one Bradley-Terry fit; 1,000 give stable 95% intervals


def check_score_options(confidence: float, bootstrap: int, prior: float) -> None:
    """Each out-of-range option named with its value and what it may be."""
    if not (math.isfinite(confidence) and 0 < confidence < 1):
        raise UserError(f"--confidence must lie strictly between 0 and 1 (the interval's coverage); got {confidence}; "
                        f"for example --confidence 0.95")
    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise UserError(f"--bootstrap must be from 0 (no intervals) to {MAX_BOOTSTRAP:,} resamples; got {bootstrap}; "
                        f"for example --bootstrap 1000")
    if not (math.isfinite(prior) and prior >= 0):
        raise UserError(f"--prior must be 0 or more (virtual wins each way per pair); got {prior}; for example --prior 0.5")


def _write_table(out: Path, stem: str, table, extra: dict | None = None) -> list[str]:
    from localsynth.analysis.agreement import markdown_table
    from localsynth.io import write_json_atomic, write_text_atomic

    write_text_atomic(out / f"{stem}.csv", table.write_csv())
    write_text_atomic(out / f"{stem}.md", markdown_table(table))
    write_json_atomic(out / f"{stem}.json", {**(extra or {}), "rows": table.to_dicts()})
    return [f"{stem}.csv", f"{stem}.md", f"{stem}.json"]


@app.command("diversity")
def diversity(
    texts: list[Path] = typer.Option(
        ..., "--texts", help="A text set: generation run dir, imported data folder, CSV/Parquet file or .npy embeddings (repeatable)."
    ),
    real: Path | None = typer.Option(None, "--real", help="Real data to measure similarity to (same kinds of input)."),
    model: Path | None = typer.Option(None, "--model", help="Local sentence encoder folder. Default: all-MiniLM-L6-v2."),
    metric: str = typer.Option("cosine", "--metric", help="cosine, euclidean or both."),
    block_size: int = typer.Option(4096, "--block-size", help="Rows per block of distances: memory ~ block_size^2 floats."),
    device: DeviceOption = EMBED_DEFAULTS.device,
    top_k: int = typer.Option(5, "--top-k", help="Synthetic neighbours per real text for similarity to real."),
    normalize: bool = typer.Option(True, "--normalize/--raw", help="L2-normalise embeddings (Euclidean measures)."),
    text_column: TextColumnOption = "text",
    batch_size: BatchSizeOption = EMBED_DEFAULTS.batch_size,
    max_length: MaxLengthOption = EMBED_DEFAULTS.max_length,
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse embeddings cached in $LOCALSYNTH_CACHE/embeddings."),
    out: Path | None = typer.Option(None, "--out", help="Write the table: a .json or .csv file."),
) -> None:
    """Remote-Clique and Chamfer diversity of each text set, and similarity to real data."""
    from localsynth.analysis import diversity as dv
    from localsynth.analysis.embeddings import default_model_dir

    metrics = {"cosine": ["cosine"], "euclidean": ["euclidean"], "both": ["cosine", "euclidean"]}.get(metric)
    if metrics is None:
        raise UserError(f"--metric must be cosine, euclidean or both; got '{metric}'")
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise UserError(f"--out {out}: give a .json or .csv file")
    for flag, value in (("--block-size", block_size), ("--top-k", top_k)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1; got {value}")
    sets = [dv.load_text_set(p, text_column) for p in texts]
    real_set = dv.load_text_set(real, text_column, "--real") if real is not None else None
    started = time.monotonic()
    rows = dv.analyze(sets, real_set, metrics=metrics, model_dir=model, batch_size=batch_size, max_length=max_length,
                      device=device, block_size=block_size, k=top_k, normalize=normalize, cache=cache)
    import polars as pl

    from localsynth.analysis.agreement import markdown_table

    table = pl.DataFrame(rows, infer_schema_length=None)
    typer.echo(markdown_table(table.drop("source")), nl=False)
    if out is not None:
        from localsynth.io import write_json_atomic, write_text_atomic

        if out.suffix.lower() == ".csv":
            write_text_atomic(out, table.write_csv())
        else:
            settings = {"model": str(model or default_model_dir()), "metrics": metrics, "normalize": normalize,
                        "block_size": block_size, "device": device, "top_k": top_k, "max_length": max_length,
                        "seconds": round(time.monotonic() - started, 3)}
            write_json_atomic(out, {"settings": settings, "rows": rows})
        typer.echo(f"wrote {out}")


@subjectivity_app.command("instances")
def instances(
    predictions: list[str] = typer.Option(
        ..., "--predictions", help="NAME=PATH: a 'localsynth evaluate --out' folder or its predictions.parquet (repeatable)."
    ),
    agreement: Path | None = typer.Option(
        None, "--agreement", help="Agreement per text: a folder of sentences_*agree files, or a file with an agreement "
        "column or annotator columns. Default: a column of the predictions (kept from the test file).",
    ),
    agreement_column: str = typer.Option("agreement", "--agreement-column", help="The column of shares in [0, 1]."),
    annotators: list[str] = typer.Option([], "--annotators", help="Annotator label columns (repeatable or a,b,c)."),
    gamma: list[float] = typer.Option([], "--gamma", help="Agreement threshold in [0, 1] (repeatable). Default: the levels present."),
    out: Path = typer.Option(..., "--out", help="Folder for instance_agreement.csv/.md/.json and .png."),
) -> None:
    """Accuracy and Macro-F1 on test instances with agreement >= gamma, one curve per condition."""
    import polars as pl

    from localsynth.analysis import agreement as sj
    from localsynth.io import write_bytes_atomic

    columns = [c.strip() for item in annotators for c in item.split(",") if c.strip()]
    gammas = sj.check_gammas(gamma) if gamma else None
    conditions: dict[str, pl.DataFrame] = {}
    for item in predictions:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem if item.endswith(".parquet") else Path(item).name, item
        if name in conditions:
            raise UserError(f"--predictions: the name '{name}' is given twice; name each condition: --predictions NAME=PATH")
        conditions[name] = sj.load_predictions(path)
    shared = sj.load_agreement(agreement, agreement_column, columns) if agreement is not None else None
    for name, df in conditions.items():
        if shared is None:
            source = sj.agreement_from_annotators(df, columns, where=f"the predictions file of '{name}'") if columns else \
                sj.agreement_from_column(df, agreement_column, where=f"the predictions file of '{name}'")
        else:
            source = shared
        conditions[name] = sj.join_agreement(df, source, name)
    if gammas is None:
        levels = sorted(set().union(*(set(df["agreement"].round(4).to_list()) for df in conditions.values())))
        gammas = levels if len(levels) <= 12 else [i / 10 for i in range(11)]
    table = sj.accuracy_curves(conditions, gammas)
    target = _out_dir(out)
    files = _write_table(target, "instance_agreement", table)
    write_bytes_atomic(target / "instance_agreement.png", sj.plot_curves(table))
    typer.echo(sj.markdown_table(table), nl=False)
    typer.echo(f"wrote {target / files[0]}, {', '.join(files[1:])}, instance_agreement.png")


@subjectivity_app.command("tasks")
def tasks(
    judgments: Path = typer.Option(..., "--judgments", help="CSV: more_objective,less_objective (or winner,loser)[,count]."),
    gaps: Path | None = typer.Option(None, "--gaps", help="CSV: task and gap (or real_f1 and synthetic_f1) per task."),
    method: str = typer.Option("mm", "--method", help="mm (Hunter's MM algorithm) or logistic (logistic regression)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals (0: none)."),
    confidence: float = typer.Option(0.95, "--confidence", help="Interval coverage."),
    prior: float = typer.Option(0.0, "--prior", help="Virtual wins each way per pair (shrinkage; makes scores finite)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    task: list[str] = typer.Option([], "--task", help="Known task names (repeatable). Default: the task configs."),
    out: Path = typer.Option(..., "--out", help="Folder for task_subjectivity.csv/.md/.json and PNGs."),
) -> None:
    """Bradley-Terry subjectivity score and rank per task; with --gaps, its rank correlation with
    the real-minus-synthetic F1 gap."""
    from localsynth.analysis import agreement as sj
    from localsynth.analysis import taskscores as ts
    from localsynth.io import write_bytes_atomic
    from localsynth.tasks import available_tasks

    if method not in ("mm", "logistic"):
        raise UserError(f"--method must be mm or logistic; got '{method}'")
    check_score_options(confidence, bootstrap, prior)
    known = sorted(task) if task else available_tasks()
    table, summary = ts.task_scores(ts.load_judgments(judgments, known), method=method, bootstrap=bootstrap,
                                    seed=seed, confidence=confidence, prior=prior)
    gap_table = ts.load_gaps(gaps, known) if gaps is not None else None
    target = _out_dir(out)
    written = ["task_scores.png"]
    if gap_table is not None:
        both, stats = ts.gap_correlation(table, gap_table)
        summary["correlation"] = stats
        table = table.join(gap_table, on="task", how="left")
        write_bytes_atomic(target / "gap_vs_subjectivity.png", ts.plot_gap(both, stats))
        written.append("gap_vs_subjectivity.png")
    files = _write_table(target, "task_subjectivity", table, {"summary": summary})
    write_bytes_atomic(target / "task_scores.png", ts.plot_scores(table, confidence))
    typer.echo(sj.markdown_table(table), nl=False)
    if "correlation" in summary:
        c = summary["correlation"]
        typer.echo(f"Spearman rho (gap vs subjectivity) {c['spearman_rho']:.3f}, p = {c['p_value']:.3g}, {c['tasks']} tasks")
    typer.echo(f"wrote {target / files[0]}, {', '.join(files[1:] + written)}")
