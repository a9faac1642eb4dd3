"""Audit every synthetic set of the CPU study (runs/study-smol-cpu) with one judge engine, then
relate each audit signal to the study's real-minus-synthetic Macro-F1 gap.

Each set is audited exactly as `localsynth audit RUN_DIR --test DATA/TASK/test.parquet
--set report_texts=false` audits it (the same `run_audit`, the run's own generator as judge);
loading the judge once saves eleven vLLM engine starts. Outputs: RUN_DIR/audit/ per set (rows
with texts stay there, outside the repository) and, here, quality.{md,csv},
correlation.{md,csv} and audits/<set>.json|md (no texts: report_texts=false).

    nice .venv/bin/python docs/results/audit-smol-cpu/run_audits.py [STUDY_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import polars as pl

from localsynth.analysis.agreement import markdown_table
from localsynth.audit import study
from localsynth.audit.inputs import load_input
from localsynth.audit.judge import Judge
from localsynth.audit.run import AuditConfig, judge_config, run_audit

HERE = Path(__file__).resolve().parent


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study-smol-cpu")
    plan = json.loads((root / "plan.json").read_text(encoding="utf-8"))
    started = time.monotonic()
    judge = None
    audits = {}
    for run in plan["generate"]:
        cfg = AuditConfig.model_validate({"input": run["run_dir"], "test": plan["data"][run["task"]]["test"],
                                          "report_texts": False})
        if judge is None:
            judge = Judge(judge_config(cfg, load_input(cfg.input)))
            judge.load()
        run_audit(cfg, judge=judge)
        out = HERE / "audits"
        out.mkdir(exist_ok=True)
        name = f"{run['task']}-{run['mode']}"
        shutil.copyfile(Path(run["run_dir"]) / "audit" / "report.json", out / f"{name}.json")
        shutil.copyfile(Path(run["run_dir"]) / "audit" / "report.md", out / f"{name}.md")
        audits[(run["task"], run["mode"])] = Path(run["run_dir"]) / "audit"
    judge.close()
    diversity = pl.read_csv(root / "report" / "diversity.csv")
    quality = study.audit_quality_table(audits, diversity)
    cells = pl.read_csv(root / "report" / "cells.csv")
    correlation = study.signal_gap_correlation(quality, cells, resamples=2000, seed=0)
    for stem, table in (("quality", quality), ("correlation", correlation)):
        table.write_csv(HERE / f"{stem}.csv")
        (HERE / f"{stem}.md").write_text(markdown_table(table), encoding="utf-8")
    print(markdown_table(quality))
    print(markdown_table(correlation))
    print(f"wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
