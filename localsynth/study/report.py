"""The study's report: Table 1, diversity, subjectivity, cost (Markdown, CSV, JSON and PNG).

    report/report.md                     everything below, in reading order
    report/table1.{md,csv,png}           Macro-F1 / accuracy per task x condition x model (x size),
                                         mean and sample standard deviation over seeds
    report/cells.csv                     one row per cell (every seed)
    report/diversity.{md,csv}            Remote-Clique, Chamfer, similarity to real per task and set
    report/subjectivity/<task>-instance_agreement.{md,csv,png}   accuracy against agreement
    report/subjectivity/task_subjectivity.{md,csv}, gap_vs_subjectivity.png
    report/cost.{md,json}                tokens, API dollars, GPU-hours, compute hours
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.analysis.agreement import markdown_table
from localsynth.errors import UserError
from localsynth.generation.rundir import shard_stats
from localsynth.io import (
    update_bytes,
    update_json,
    update_text,
    write_json_atomic,
    write_parquet_atomic,
)
from localsynth.progress import log
from localsynth.study import verdicts
from localsynth.study.config import StudyConfig
from localsynth.study.plan import Plan, size_tag
from localsynth.study.quality import audit_runs, cell_contamination, quality_section


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def cell_results(plan: Plan) -> pl.DataFrame:
    rows = []
    for cell in plan.cells:
        metrics = _read(Path(cell.eval_dir) / "metrics.json")
        training = _read(Path(cell.train_dir) / "training.json")
        rows.append({
            "task": cell.task, "condition": cell.condition, "model": cell.model, "size": size_tag(cell.size),
            "seed": cell.seed, "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"], "test_rows": metrics["n"],
            "train_rows": training["train_rows"], "train_seconds": training["seconds"], "train_gpus": training.get("gpus", 0),
            "eval_seconds": metrics["evaluation"]["seconds"],
            "eval_gpus": 1 if str(metrics["evaluation"]["device"]).startswith("cuda") else 0,
        })
    return pl.DataFrame(rows)


def table1(cells: pl.DataFrame) -> pl.DataFrame:
    """Mean and sample standard deviation over seeds (null with one seed)."""
    keys = ["task", "condition", "model", "size"]
    audited = [pl.col("contaminated_share").max()] if "contaminated_share" in cells.columns else []
    return (cells.group_by(keys, maintain_order=True)
            .agg(pl.len().alias("seeds"),
                 pl.col("macro_f1").mean().alias("macro_f1_mean"), pl.col("macro_f1").std().alias("macro_f1_sd"),
                 pl.col("accuracy").mean().alias("accuracy_mean"), pl.col("accuracy").std().alias("accuracy_sd"),
                 pl.col("train_rows").mean().round(0).cast(pl.Int64).alias("train_rows"), *audited))


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _contaminated(row: dict[str, Any]) -> str:
    share = row.get("contaminated_share")
    return f" CONTAMINATED {100 * share:.1f}%" if share else ""


def table1_markdown(table: pl.DataFrame) -> str:
    """The paper's shape: one row per task, a column per model and condition; each cell
    'Macro-F1 (accuracy)', mean ± sd over seeds."""
    blocks = []
    legend = "; CONTAMINATED: its synthetic rows include real test texts, by the audit" \
        if "contaminated_share" in table.columns else ""
    for (size,), part in table.group_by("size", maintain_order=True):
        columns = list(dict.fromkeys(f"{m} · {c}" for m, c in part.select("model", "condition").iter_rows()))
        lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for (task,), rows in part.group_by("task", maintain_order=True):
            by = {f"{r['model']} · {r['condition']}": r for r in rows.iter_rows(named=True)}
            cells = [f"{_pm(r['macro_f1_mean'], r['macro_f1_sd'])} ({_pm(r['accuracy_mean'], r['accuracy_sd'])}) "
                     f"n={r['train_rows']}{_contaminated(r)}" if (r := by.get(col)) else "" for col in columns]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        title = "all training rows" if size == "all" else f"up to {size.removeprefix('n')} training rows per label and source"
        blocks.append(f"Macro-F1 (accuracy), mean ± sd over seeds; {title} (n: the rows each cell really "
                      f"trained on, mean over seeds; a synthetic set short of its quota shows here{legend}):\n\n"
                      + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def table1_plot(table: pl.DataFrame) -> bytes:
    """Grouped bars: Macro-F1 per task, one bar per model and condition (the first size), with
    the standard deviation over seeds as error bars."""
    import numpy as np

    from localsynth.plots import figure, png

    part = table.filter(pl.col("size") == table["size"][0])
    tasks = list(dict.fromkeys(part["task"]))
    series = list(dict.fromkeys(f"{m} · {c}" for m, c in part.select("model", "condition").iter_rows()))
    fig = figure(max(6.4, 1.2 * len(tasks) * max(1, len(series)) / 3), 4.4)
    ax = fig.subplots()
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        rows = {r["task"]: r for r in part.iter_rows(named=True) if f"{r['model']} · {r['condition']}" == name}
        mean = [rows[t]["macro_f1_mean"] if t in rows else np.nan for t in tasks]
        sd = [(rows[t]["macro_f1_sd"] or 0.0) if t in rows else 0.0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + (i - (len(series) - 1) / 2) * width, mean, width, yerr=sd, capsize=2, label=name)
    ax.set_xticks(np.arange(len(tasks)), labels=tasks, rotation=20 if len(tasks) > 4 else 0)
    ax.set_ylabel("Macro-F1 on the real test data")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return png(fig)


# ----------------------------------------------------------------------------- diversity


def diversity(plan: Plan, cfg: StudyConfig) -> pl.DataFrame | None:
    """Per task: the real training texts and each synthetic set, sampled to one size so the
    numbers compare (Chamfer shrinks as a set grows); cached per task in analysis/diversity/,
    with the sampled texts of each set beside it (<task>/<set>.parquet)."""
    if not cfg.analysis.diversity:
        return None
    from localsynth.analysis import diversity as dv
    frames = []
    for task, data in plan.data.items():
        sets = {"real": pl.read_parquet(data["train"])["text"].to_list()}
        for run in plan.generate:
            if run.task == task:
                sets[run.set_name] = dv.load_text_set(run.run_dir).texts
        size = cfg.analysis.diversity_rows or min(len(t) for t in sets.values())
        sampled = {name: pl.Series(texts).sample(n=min(size, len(texts)), seed=0).to_list() for name, texts in sets.items()}
        settings = {"model": cfg.analysis.embedding_model, "metrics": cfg.analysis.metrics, "rows": size,
                    "sets": {name: len(texts) for name, texts in sets.items()}}
        cache = Path(plan.out_dir) / "analysis" / "diversity" / f"{task}.json"
        if cache.is_file() and _read(cache).get("settings") == settings:
            rows = _read(cache)["rows"]
        else:
            log(f"diversity of {task}: {len(sets)} sets of {size} texts")
            for name, texts in sampled.items():  # the exact texts measured, for anyone to recompute
                write_parquet_atomic(pl.DataFrame({"text": texts}), cache.with_suffix("") / f"{name}.parquet")
            text_sets = [dv.TextSet(name, f"{task}/{name}", texts=texts) for name, texts in sampled.items()]
            rows = dv.analyze(text_sets[1:], text_sets[0], metrics=cfg.analysis.metrics,
                              model_dir=cfg.analysis.embedding_model, device=cfg.evaluation.device)
            write_json_atomic(cache, {"settings": settings, "rows": rows})
        frames.append(pl.DataFrame(rows, infer_schema_length=None).drop("source").rename({"name": "set"})
                      .with_columns(pl.lit(task).alias("task")))
    if not frames:
        return None
    table = pl.concat(frames, how="diagonal_relaxed")
    return table.select("task", *[c for c in table.columns if c != "task"])


# ----------------------------------------------------------------------------- subjectivity


def instance_curves(plan: Plan, cfg: StudyConfig, target: Path) -> dict[str, pl.DataFrame]:
    """Accuracy against agreement for each task with agreement data; one curve per condition
    and model (predictions pooled over seeds). Returns the table of each task (its PNG is
    `<task>-instance_agreement.png`)."""
    from localsynth.analysis import agreement as sj
    written = {}
    for task, data in plan.data.items():
        test_has_column = "agreement" in pl.read_parquet_schema(data["test"])
        if "agreement" not in data and not test_has_column:
            continue
        shared = sj.load_agreement(data["agreement"]) if "agreement" in data else None
        conditions: dict[str, pl.DataFrame] = {}
        for cell in (c for c in plan.cells if c.task == task):
            preds = sj.load_predictions(cell.eval_dir)
            name = f"{cell.condition} · {cell.model}" + ("" if len(plan_sizes(plan)) == 1 else f" · {size_tag(cell.size)}")
            source = shared if shared is not None else sj.agreement_from_column(preds, "agreement", where=data["test"])
            joined = sj.join_agreement(preds, source, name)
            conditions[name] = pl.concat([conditions[name], joined], how="diagonal_relaxed") if name in conditions else joined
        first = next(iter(conditions.values()))
        gammas = cfg.analysis.gammas or sorted(set(first["agreement"].round(4).to_list()))
        if len(gammas) > 12:
            gammas = [i / 10 for i in range(11)]
        table = sj.accuracy_curves(conditions, gammas)
        stem = f"{task}-instance_agreement"
        update_text(target / f"{stem}.csv", table.write_csv())
        update_text(target / f"{stem}.md", markdown_table(table))
        update_bytes(target / f"{stem}.png", sj.plot_curves(table))
        written[task] = table
    return written


def plan_sizes(plan: Plan) -> set[int | None]:
    return {c.size for c in plan.cells}


def task_level(plan: Plan, cfg: StudyConfig, table: pl.DataFrame, target: Path) -> dict[str, Any] | None:
    """The real-minus-synthetic F1 gap per task against its subjectivity: Bradley-Terry scores
    from judgments when given, else the rank each task config carries (1 = most objective)."""
    from localsynth.analysis import taskscores as ts
    synthetic = cfg.analysis.gap_condition
    first_size = table.filter(pl.col("size") == table["size"][0])  # the first of `sizes`
    real = first_size.filter(pl.col("condition") == "real").group_by("task").agg(pl.col("macro_f1_mean").mean().alias("real_f1"))
    synth = first_size.filter(pl.col("condition") == synthetic).group_by("task").agg(pl.col("macro_f1_mean").mean().alias("synthetic_f1"))
    gaps = real.join(synth, on="task").with_columns((pl.col("real_f1") - pl.col("synthetic_f1")).alias("gap"))
    if gaps.height == 0:
        return None
    if cfg.analysis.judgments:
        scores, summary = ts.task_scores(ts.load_judgments(cfg.analysis.judgments, sorted(plan.data)))
        summary["source"] = cfg.analysis.judgments
    else:
        ranks = {task: data["subjectivity_rank"] for task, data in plan.data.items()}
        scores = pl.DataFrame({"task": list(ranks), "score": [-float(r) for r in ranks.values()], "rank": list(ranks.values())})
        summary = {"source": "the subjectivity ranks of the task configs (the paper's ordering)"}
    merged = scores.join(gaps, on="task", how="left").sort("rank")
    update_text(target / "task_subjectivity.csv", merged.write_csv())
    update_text(target / "task_subjectivity.md", markdown_table(merged))
    if gaps.height >= 3:
        both, stats = ts.gap_correlation(scores, gaps.select("task", "gap"))
        summary["correlation"] = stats
    else:
        both = scores.join(gaps.select("task", "gap"), on="task").with_columns((-pl.col("score")).alias("subjectivity"))
        stats = None
        summary["correlation"] = f"not computed: {gaps.height} task(s) with a gap; a rank correlation needs 3"
    update_bytes(target / "gap_vs_subjectivity.png", ts.plot_gap(both, stats))
    summary["gap"] = f"real - {synthetic} Macro-F1"
    update_json(target / "task_subjectivity.json", summary)
    return summary


# ----------------------------------------------------------------------------- cost


def cost(plan: Plan, cells: pl.DataFrame) -> dict[str, Any]:
    """Tokens and dollars of generation; hours of every stage, with GPU-hours (seconds x GPUs
    held) apart from wall-clock hours, so CPU-only runs show what they really used."""
    generation = []
    for run in plan.generate:
        stats = shard_stats(Path(run.run_dir))
        seconds = sum(s["seconds"] + s.get("load_seconds", 0) for s in stats)
        priced = [s["cost_usd"] for s in stats if "cost_usd" in s]
        generation.append({
            "run": run.id, "shards": len(stats), "requests": sum(s["requests"] for s in stats),
            "kept": sum(s["kept"] for s in stats), "prompt_tokens": sum(s["prompt_tokens"] for s in stats),
            "completion_tokens": sum(s["completion_tokens"] for s in stats),
            "api_usd": round(sum(priced), 4) if priced else None, "hours": seconds / 3600,
            "gpu_hours": sum((s["seconds"] + s.get("load_seconds", 0)) * s.get("gpus", 0) for s in stats) / 3600,
        })
    train_h = cells["train_seconds"].sum() / 3600
    eval_h = cells["eval_seconds"].sum() / 3600
    total_usd = [g["api_usd"] for g in generation if g["api_usd"] is not None]
    return {
        "generation": generation,
        "training": {"cells": cells.height, "hours": train_h,
                     "gpu_hours": (cells["train_seconds"] * cells["train_gpus"]).sum() / 3600},
        "evaluation": {"cells": cells.height, "hours": eval_h,
                       "gpu_hours": (cells["eval_seconds"] * cells["eval_gpus"]).sum() / 3600},
        "total": {
            "prompt_tokens": sum(g["prompt_tokens"] for g in generation),
            "completion_tokens": sum(g["completion_tokens"] for g in generation),
            "api_usd": round(sum(total_usd), 4) if total_usd else None,
            "gpu_hours": sum(g["gpu_hours"] for g in generation) + (cells["train_seconds"] * cells["train_gpus"]).sum() / 3600
            + (cells["eval_seconds"] * cells["eval_gpus"]).sum() / 3600,
            "hours": sum(g["hours"] for g in generation) + train_h + eval_h,
        },
    }


def cost_markdown(c: dict[str, Any]) -> str:
    usd = lambda v: "not priced" if v is None else f"${v:,.2f}"  # noqa: E731
    lines = ["| stage | work | prompt tokens | completion tokens | API | hours | GPU-hours |", "|---|---|---|---|---|---|---|"]
    for g in c["generation"]:
        lines.append(f"| generate {g['run']} | {g['requests']:,} requests, {g['kept']:,} kept | {g['prompt_tokens']:,} | "
                     f"{g['completion_tokens']:,} | {usd(g['api_usd'])} | {g['hours']:.3f} | {g['gpu_hours']:.3f} |")
    for stage in ("training", "evaluation"):
        s = c[stage]
        lines.append(f"| {stage} | {s['cells']} cells | | | | {s['hours']:.3f} | {s['gpu_hours']:.3f} |")
    t = c["total"]
    lines.append(f"| **total** | | {t['prompt_tokens']:,} | {t['completion_tokens']:,} | {usd(t['api_usd'])} | "
                 f"{t['hours']:.3f} | {t['gpu_hours']:.3f} |")
    return "\n".join(lines) + "\n\nHours are compute time of each stage (model loading included); GPU-hours count the GPUs each stage held.\n"


# ----------------------------------------------------------------------------- the report


def findings(plan: Plan, cfg: StudyConfig, cells: pl.DataFrame, div: pl.DataFrame | None,
             curves: dict[str, pl.DataFrame]) -> list[verdicts.Verdict]:
    """The paper's four findings as verdicts on this study's numbers (localsynth/verdicts.py)."""
    ranks = {task: data["subjectivity_rank"] for task, data in plan.data.items()}
    return [
        verdicts.f1_order(cells),
        verdicts.gap_vs_subjectivity(cells, ranks, cfg.analysis.gap_condition),
        verdicts.diversity_order(div),
        verdicts.agreement_rise(curves),
    ]


def check_complete(plan: Plan) -> None:
    missing = [c.id for c in plan.missing_cells()]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise UserError(
            f"cannot report: {len(missing)} of {len(plan.cells)} cells are not finished ({shown}); run "
            f"'localsynth experiment {plan.config}' to finish them, or remove them from the config"
        )


def write_report(plan: Plan, cfg: StudyConfig) -> Path:
    check_complete(plan)
    target = Path(plan.report_dir)
    (target / "subjectivity").mkdir(parents=True, exist_ok=True)
    cells = cell_results(plan)
    if cfg.analysis.audit:  # a SLURM study's runs were not audited by their generation jobs
        audit_runs(plan, cfg.analysis)
        cells = cell_contamination(plan, cells)
    table = table1(cells)
    update_text(target / "cells.csv", cells.write_csv())
    update_text(target / "table1.csv", table.write_csv())
    t1 = table1_markdown(table)
    update_text(target / "table1.md", t1)
    update_bytes(target / "table1.png", table1_plot(table))
    sections = [f"# Study: {cfg.name}\n", f"{len(plan.cells)} cells: tasks {', '.join(plan.data)}; conditions "
                f"{', '.join(cfg.conditions)}; models {', '.join(cfg.models)}; seeds {', '.join(map(str, cfg.seeds))}.\n",
                "## Table 1: classifiers on the real test data\n", t1, "![Table 1](table1.png)\n"]
    div = diversity(plan, cfg)
    if div is not None:
        update_text(target / "diversity.csv", div.write_csv())
        update_text(target / "diversity.md", markdown_table(div))
        sections += ["## Diversity and similarity to real\n",
                     "Remote-Clique: mean distance to the other texts; Chamfer: mean distance to the nearest other "
                     "text (higher = more diverse); similarity to real: for each real text, the mean cosine of its 5 "
                     f"most similar texts of the set. Sets sampled to {div['n'][0]} texts.\n", markdown_table(div)]
    if cfg.analysis.audit:
        sections += quality_section(plan, cells, div, target)
    curves = instance_curves(plan, cfg, target / "subjectivity")
    if curves:
        sections.append("## Accuracy against instance agreement\n")
        sections += [f"![{t}](subjectivity/{t}-instance_agreement.png)\n" for t in curves]
    summary = task_level(plan, cfg, table, target / "subjectivity")
    if summary is not None:
        sections += ["## Task subjectivity and the real-synthetic gap\n",
                     f"Gap: {summary['gap']}; subjectivity from {summary['source']}.\n",
                     (target / "subjectivity" / "task_subjectivity.md").read_text(encoding="utf-8")]
        corr = summary["correlation"]
        sections.append(f"Spearman rho {corr['spearman_rho']:.3f} (p = {corr['p_value']:.3g}, {corr['tasks']} tasks)\n"
                        if isinstance(corr, dict) else f"Correlation {corr}.\n")
        sections.append("![gap against subjectivity](subjectivity/gap_vs_subjectivity.png)\n")
    spent = cost(plan, cells)
    update_json(target / "cost.json", spent)
    update_text(target / "cost.md", cost_markdown(spent))
    sections += ["## Cost\n", cost_markdown(spent)]
    found = findings(plan, cfg, cells, div, curves)
    update_json(target / "verdicts.json", [v.to_json() for v in found])
    sections[1:1] = ["## The paper's findings, checked on this study\n", verdicts.markdown(found)]
    update_text(target / "report.md", "\n".join(sections))
    return target / "report.md"
