"""The study as one command: plan the grid, then generate -> train -> evaluate -> report.

Every unit of work is an ordinary stage with its own config file written by the plan, so a
cluster job (or a person) can run any one of them with the plain CLI:

    <out>/experiment.yaml                      the resolved experiment config
    <out>/plan.json                            generation runs and cells, with their paths
    <out>/data/<task>/{train,test}.parquet     the real data every cell uses (data.json: where from)
    <out>/stages/generate/<task>-<mode>.yaml   a `localsynth generate` config
    <out>/generate/<task>-<mode>/              its run directory
    <out>/cells/<task>/<condition>/<model>/<size>/s<seed>/{train.yaml,train/,eval/}
    <out>/report/                              tables, plots, cost (see localsynth.report)

A stage whose completion marker exists is skipped, so re-running after a crash redoes nothing
that is done; a stage whose settings changed since it ran is an error, never silently mixed.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from localsynth.config import GenerateConfig, format_validation_error, load_task
from localsynth.errors import UserError
from localsynth.expdata import prepare_task_data
from localsynth.experimentconfig import ExperimentConfig
from localsynth.io import update_json, update_text
from localsynth.progress import log
from localsynth.trainconfig import resolve_model_path


@dataclass
class GenerationRun:
    id: str
    task: str
    mode: str
    config: str
    run_dir: str
    shards: int


@dataclass
class Cell:
    id: str
    index: int
    task: str
    condition: str
    model: str
    size: int | None
    seed: int
    needs: list[str]
    train_config: str
    train_dir: str
    eval_dir: str


@dataclass
class Plan:
    out_dir: str
    config: str
    generate: list[GenerationRun]
    cells: list[Cell]
    report_dir: str
    data: dict[str, dict[str, Any]]  # per task: train / test Parquet, agreement source, subjectivity rank

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def cell(self, ref: str) -> Cell:
        """A cell by index (as a SLURM array task passes it) or by id."""
        if ref.strip().isdigit() and int(ref) < len(self.cells):
            return self.cells[int(ref)]
        for cell in self.cells:
            if cell.id == ref:
                return cell
        raise UserError(
            f"--cell {ref}: no such cell; give an index 0..{len(self.cells) - 1} or an id like {self.cells[0].id!r}"
        )


def size_tag(size: int | None) -> str:
    return "all" if size is None else f"n{size}"


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def _write_stage_config(path: Path, data: dict[str, Any], outputs: Path, what: str) -> None:
    """Write a stage config; if one exists with other settings and the stage has produced
    anything, stop: its outputs belong to the old settings."""
    text = _dump(data)
    if path.is_file() and path.read_text(encoding="utf-8") != text and outputs.exists() and any(outputs.iterdir()):
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        changed = sorted(k for k in set(old) | set(data) if old.get(k) != data.get(k))
        raise UserError(
            f"{what} already ran with other settings (changed: {', '.join(changed)}; see {path}); "
            f"use a new out_dir, or delete {outputs} to redo it"
        )
    update_text(path, text)


def _generation_config(cfg: ExperimentConfig, task: dict[str, Any], mode: str, train_file: Path,
                       run_dir: Path, source: str) -> dict[str, Any]:
    task = dict(task)
    if mode == "few-shot":  # examples come from the same real training rows as the real condition
        few = dict(task.get("few_shot") or {})
        few["source"] = {"path": str(train_file)}
        task["few_shot"] = few
    gen = cfg.generation.model_dump(mode="json", exclude={"shards"})
    data = {"task": task, "mode": mode, **gen, "run_dir": str(run_dir)}
    try:
        return GenerateConfig.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        where = f"{source} (generation of {task.get('name')} {mode})"
        raise UserError(format_validation_error(exc, where, GenerateConfig)) from None


def _train_config(cfg: ExperimentConfig, task: str, labels: list[str], condition: str, model: str, size: int | None,
                  seed: int, train_file: Path, runs: dict[str, Path], out: Path) -> dict[str, Any]:
    sources = []
    for part in condition.split("+"):
        source: dict[str, Any] = {"path": str(train_file)} if part == "real" else {"run_dir": str(runs[part])}
        sources.append({**source, "name": part, "weight": None, "max_rows_per_label": size})
    return {
        "model": resolve_model_path(cfg.models[model]),
        "task": task,
        "labels": labels,
        "train": sources,
        "out_dir": str(out),
        "training": {**cfg.training.model_dump(mode="json"), "seed": seed},
        "lora": cfg.lora.model_dump(mode="json"),
        "progress": cfg.progress,
    }


def make_plan(cfg: ExperimentConfig, source: str = "experiment config") -> Plan:
    """Resolve the grid, prepare the real data, write every stage config and plan.json."""
    out = Path(os.path.expanduser(cfg.out_dir)).resolve()
    cfg = cfg.model_copy(update={"out_dir": str(out)})
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out_dir: cannot create {out} ({exc.strerror}); choose another out_dir") from None
    tasks = {ref: load_task(ref).model_dump(mode="json") for ref in cfg.tasks}
    names = [t.get("name", ref) for ref, t in tasks.items()]
    if len(set(names)) != len(names):
        raise UserError(f"tasks: two entries name the same task ({names}); list each task once")
    data = {ref: {**prepare_task_data(cfg, ref, task, out / "data" / task["name"]),
                  "subjectivity_rank": task["subjectivity"]["rank"]} for ref, task in tasks.items()}

    runs: list[GenerationRun] = []
    run_dirs: dict[tuple[str, str], Path] = {}
    for ref, task in tasks.items():
        for mode in cfg.modes:
            run_id, run_dir = f"{task['name']}/{mode}", out / "generate" / f"{task['name']}-{mode}"
            stage = out / "stages" / "generate" / f"{task['name']}-{mode}.yaml"
            gen = _generation_config(cfg, task, mode, Path(data[ref]["train"]), run_dir, source)
            _write_stage_config(stage, gen, run_dir / "shards", f"generation run {run_id}")
            runs.append(GenerationRun(run_id, task["name"], mode, str(stage), str(run_dir), cfg.generation.shards))
            run_dirs[(task["name"], mode)] = run_dir

    cells: list[Cell] = []
    for ref, task in tasks.items():
        name, labels = task["name"], [label["name"] for label in task["labels"]]
        for condition in cfg.conditions:
            for model in cfg.models:
                for size in cfg.sizes:
                    for seed in cfg.seeds:
                        cell_id = f"{name}/{condition}/{model}/{size_tag(size)}/s{seed}"
                        home = out / "cells" / cell_id
                        needs = [f"{name}/{p}" for p in condition.split("+") if p != "real"]
                        train = _train_config(cfg, name, labels, condition, model, size, seed, Path(data[ref]["train"]),
                                              {m: run_dirs[(name, m)] for m in cfg.modes}, home / "train")
                        _write_stage_config(home / "train.yaml", train, home / "train", f"cell {cell_id}")
                        cells.append(Cell(cell_id, len(cells), name, condition, model, size, seed, needs,
                                          str(home / "train.yaml"), str(home / "train"), str(home / "eval")))
    config_path = out / "experiment.yaml"
    update_text(config_path, _dump(cfg.model_dump(mode="json")))
    plan = Plan(str(out), str(config_path), runs, cells, str(out / "report"),
                {tasks[ref]["name"]: d for ref, d in data.items()})
    update_json(out / "plan.json", plan.to_json())
    return plan


# ----------------------------------------------------------------------------- stages


def run_is_done(run: GenerationRun) -> bool:
    from localsynth.rundir import Shard, ShardPaths

    return all(ShardPaths(Path(run.run_dir), Shard(i, run.shards)).done.is_file() for i in range(run.shards))


def cell_is_done(cell: Cell) -> bool:
    return (Path(cell.eval_dir) / "eval.done").is_file()


def run_generation(plan: Plan, only: list[str] | None = None) -> None:
    """Every shard of every generation run the cells need (or `only` those runs), in turn."""
    from localsynth.config import load_generate_config
    from localsynth.generate import run_generate
    from localsynth.rundir import Shard

    engines: dict[str, ReusedBackend] = {}
    try:
        for run in plan.generate:
            if only is not None and run.id not in only:
                continue
            if run_is_done(run):
                log(f"generation {run.id}: done, skipped")
                continue
            cfg = load_generate_config(run.config)
            engine = engines.get(key := engine_key(cfg.generator))
            if engine is None:
                from localsynth.backends import make_backend

                engine = engines[key] = ReusedBackend(make_backend(cfg.generator))
            for index in range(run.shards):
                shard = Shard(index, run.shards)
                log(f"generation {run.id}: shard {shard}")
                run_generate(cfg, shard, Path(run.run_dir), backend=engine)
    finally:
        for engine in engines.values():
            engine.shutdown()
        _free_memory()


def engine_key(generator: Any) -> str:
    """Runs whose generators differ only in sampling or pricing can share one loaded engine."""
    return json.dumps(generator.model_dump(mode="json", exclude={"sampling", "pricing"}), sort_keys=True)


class ReusedBackend:
    """One loaded engine for every generation run of a study with the same generator settings:
    starting the vLLM engine costs about a minute on a CPU, once per run otherwise. `close`
    (called by each run) keeps it; `shutdown` frees it."""

    def __init__(self, inner: Any):
        self.inner, self.loaded = inner, False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def gpus(self) -> int:
        return getattr(self.inner, "gpus", 0)

    def load(self) -> None:
        if not self.loaded:
            self.inner.load()
            self.loaded = True

    def generate(self, requests, sampling):
        return self.inner.generate(requests, sampling)

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        if self.loaded:
            self.inner.close()
            self.loaded = False


def run_cell(plan: Plan, cell: Cell, cfg: ExperimentConfig) -> None:
    """Train (or resume) and evaluate one cell; nothing when its evaluation is done."""
    name = f"cell {cell.index + 1}/{len(plan.cells)} {cell.id}"
    if cell_is_done(cell):
        log(f"{name}: done, skipped")
        return
    missing = [r.id for r in plan.generate if r.id in cell.needs and not run_is_done(r)]
    if missing:
        raise UserError(
            f"cell {cell.id} needs the synthetic data of {', '.join(missing)}, which is not finished; "
            f"run the generation first (localsynth experiment {plan.config} --stage generate)"
        )
    from localsynth.train import run_train
    from localsynth.trainconfig import load_train_config

    log(f"{name}: training")
    run_train(load_train_config(cell.train_config))
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch: one process evaluates
        return
    import polars as pl

    from localsynth.evaluate import evaluate_model

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


def run_cells(plan: Plan, cfg: ExperimentConfig, only: Cell | None = None) -> None:
    for cell in [only] if only is not None else plan.cells:
        run_cell(plan, cell, cfg)


def missing_cells(plan: Plan) -> list[Cell]:
    return [c for c in plan.cells if not cell_is_done(c)]
