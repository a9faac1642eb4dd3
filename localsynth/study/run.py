"""The study as one command: generate -> train -> evaluate, one stage after another.

Every unit of work is an ordinary stage with its own config file written by the plan
(localsynth.study.plan), so a cluster job (or a person) can run any one of them with the plain
CLI. A stage whose completion marker exists is skipped, so re-running after a crash redoes
nothing that is done.
"""

from __future__ import annotations

import gc
import os

from localsynth.errors import UserError
from localsynth.progress import log
from localsynth.study.config import Analysis, StudyConfig
from localsynth.study.plan import Cell, Plan
from localsynth.study.quality import audit_runs


def generate_runs(plan: Plan, only: list[str] | None = None, analysis: Analysis | None = None) -> None:
    """Every shard of every generation run the cells need (or `only` those runs), in turn; with
    `analysis.audit`, each finished run is then audited with the same engine as its judge."""
    from localsynth.backends import make_backend
    from localsynth.backends.reused import ReusedBackend, engine_key
    from localsynth.generation.run import generate_shard
    from localsynth.generation.rundir import Shard

    engines: dict[str, ReusedBackend] = {}
    try:
        for run in plan.generate:
            if only is not None and run.id not in only:
                continue
            cfg = run.cfg
            engine = engines.get(key := engine_key(cfg.generator))
            if engine is None:  # loaded on first use: a study whose runs are done loads nothing
                engine = engines[key] = ReusedBackend(make_backend(cfg.generator))
            if run.is_done():
                log(f"generation {run.id}: done, skipped")
            else:
                for index in range(run.shards):
                    shard = Shard(index, run.shards)
                    log(f"generation {run.id}: shard {shard}")
                    generate_shard(cfg, shard, run.run_dir, backend=engine)
            if analysis is not None and analysis.audit:
                audit_runs(plan, analysis, [run], engine)
    finally:
        for engine in engines.values():
            engine.shutdown()
        _free_memory()


def run_cell(plan: Plan, cell: Cell, cfg: StudyConfig) -> None:
    """Train (or resume) and evaluate one cell; nothing when its evaluation is done."""
    name = f"cell {cell.index + 1}/{len(plan.cells)} {cell.id}"
    if cell.is_done():
        log(f"{name}: done, skipped")
        return
    missing = [r.id for r in plan.generate if r.id in cell.needs and not r.is_done()]
    if missing:
        raise UserError(
            f"cell {cell.id} needs the synthetic data of {', '.join(missing)}, which is not finished; "
            f"run the generation first (localsynth experiment {plan.config} --stage generate)"
        )
    from localsynth.training.config import load_train_config
    from localsynth.training.train import run_train

    log(f"{name}: training")
    run_train(load_train_config(cell.train_config))
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch: one process evaluates
        return
    import polars as pl

    from localsynth.training.evaluate import evaluate_model

    test_file = plan.data[cell.task]["test"]
    test_df = pl.read_parquet(test_file)
    ev = cfg.evaluation
    log(f"{name}: evaluating on {test_df.height} real test rows")
    evaluate_model(cell.train_dir, test_df, cell.eval_dir, batch_size=ev.batch_size, max_length=ev.max_length,
                   device=ev.device, progress=cfg.progress,
                   test_source={"path": test_file, "rows": test_df.height, "task": cell.task})
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run_cells(plan: Plan, cfg: StudyConfig, only: Cell | None = None) -> None:
    for cell in [only] if only is not None else plan.cells:
        run_cell(plan, cell, cfg)
