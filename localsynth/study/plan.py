"""The plan of a study: its generation runs and its cells (task x condition x model x size x
seed), each an ordinary stage config written to the study folder, and plan.json listing them.

    <out>/experiment.yaml                      the resolved study config
    <out>/plan.json                            generation runs and cells, with their paths
    <out>/data/<task>/{train,test}.parquet     the real data every cell uses (data.json: where from)
    <out>/stages/generate/<task>-<mode>.yaml   a `localsynth generate` config
    <out>/generate/<task>-<mode>/              its run directory
    <out>/cells/<task>/<condition>/<model>/<size>/s<seed>/{train.yaml,train/,eval/}
    <out>/report/                              tables, plots, cost (see localsynth.study.report)

A stage config that exists with other settings, once its stage has produced anything, is an
error: outputs are never silently mixed across settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from localsynth.config import format_validation_error
from localsynth.errors import UserError
from localsynth.generation.config import GenerateConfig, GenerationRun
from localsynth.io import update_json, update_text
from localsynth.study.config import StudyConfig, generation_mode, sources
from localsynth.study.data import prepare_task_data
from localsynth.tasks import FewShot, TaskConfig, load_task
from localsynth.training.config import resolve_model_path


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

    def is_done(self) -> bool:
        """Trained and evaluated: the evaluation's marker is written last."""
        return (Path(self.eval_dir) / "eval.done").is_file()


@dataclass
class Plan:
    out_dir: str
    config: str
    generate: list[GenerationRun]
    cells: list[Cell]
    report_dir: str
    data: dict[str, dict[str, Any]]  # per task: train / test Parquet, agreement source, subjectivity rank

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "generate": [run.to_json() for run in self.generate]}

    @classmethod
    def load(cls, path: Path) -> Plan:
        """The plan a `make_plan` wrote (plan.json)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["out_dir"], data["config"], [GenerationRun.from_json(r) for r in data["generate"]],
                   [Cell(**c) for c in data["cells"]], data["report_dir"], data["data"])

    def missing_cells(self) -> list[Cell]:
        return [c for c in self.cells if not c.is_done()]

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


def _generation_config(cfg: StudyConfig, task: TaskConfig, synthetic_set: str, train_file: Path,
                       run_dir: Path, source: str) -> GenerateConfig:
    mode = generation_mode(synthetic_set)
    if mode == "few-shot":  # examples come from the same real training rows as the real condition
        few = task.few_shot.model_dump() | {"source": {"path": str(train_file)}}
        task = task.model_copy(update={"few_shot": FewShot.model_validate(few)})
    gen = cfg.generation.model_dump(exclude={"shards"})
    if synthetic_set.endswith("+audited"):  # the generator judges every text; mismatches are replaced
        gen["filters"] = {**gen["filters"], "judge": "drop"}
    try:
        return GenerateConfig.model_validate({"task": task, "mode": mode, **gen, "run_dir": str(run_dir)})
    except ValidationError as exc:
        where = f"{source} (generation of {task.name} {synthetic_set})"
        raise UserError(format_validation_error(exc, where, GenerateConfig)) from None


def _train_config(cfg: StudyConfig, task: str, labels: list[str], condition: str, model: str, size: int | None,
                  seed: int, train_file: Path, runs: dict[str, Path], out: Path) -> dict[str, Any]:
    train = []
    for part in sources(condition):
        source: dict[str, Any] = {"path": str(train_file)} if part == "real" else {"run_dir": str(runs[part])}
        train.append({**source, "name": part, "weight": None, "max_rows_per_label": size})
    return {
        "model": resolve_model_path(cfg.models[model]),
        "task": task,
        "labels": labels,
        "train": train,
        "out_dir": str(out),
        "training": {**cfg.training.model_dump(mode="json"), "seed": seed},
        "lora": cfg.lora.model_dump(mode="json"),
        "progress": cfg.progress,
    }


def make_plan(cfg: StudyConfig, source: str = "study config") -> Plan:
    """Resolve the grid, prepare the real data, write every stage config and plan.json."""
    out = Path(os.path.expanduser(cfg.out_dir)).resolve()
    cfg = cfg.model_copy(update={"out_dir": str(out)})
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out_dir: cannot create {out} ({exc.strerror}); choose another out_dir") from None
    tasks = {ref: load_task(ref) for ref in cfg.tasks}
    names = [task.name for task in tasks.values()]
    if len(set(names)) != len(names):
        raise UserError(f"tasks: two entries name the same task ({names}); list each task once")
    data = {ref: {**prepare_task_data(cfg, ref, task, out / "data" / task.name),
                  "subjectivity_rank": task.subjectivity.rank} for ref, task in tasks.items()}

    runs: list[GenerationRun] = []
    run_dirs: dict[tuple[str, str], Path] = {}
    for ref, task in tasks.items():
        for name in cfg.synthetic_sets:
            run_id, run_dir = f"{task.name}/{name}", out / "generate" / f"{task.name}-{name}"
            stage = out / "stages" / "generate" / f"{task.name}-{name}.yaml"
            gen = _generation_config(cfg, task, name, Path(data[ref]["train"]), run_dir, source)
            _write_stage_config(stage, gen.model_dump(mode="json"), run_dir / "shards", f"generation run {run_id}")
            runs.append(GenerationRun(run_id, task.name, gen.mode, stage, run_dir, cfg.generation.shards, loaded=gen))
            run_dirs[(task.name, name)] = run_dir

    cells: list[Cell] = []
    for ref, task in tasks.items():
        for condition in cfg.conditions:
            for model in cfg.models:
                for size in cfg.sizes:
                    for seed in cfg.seeds:
                        cell_id = f"{task.name}/{condition}/{model}/{size_tag(size)}/s{seed}"
                        home = out / "cells" / cell_id
                        needs = [f"{task.name}/{p}" for p in sources(condition) if p != "real"]
                        train = _train_config(cfg, task.name, task.label_names, condition, model, size, seed,
                                              Path(data[ref]["train"]), {s: run_dirs[(task.name, s)] for s in cfg.synthetic_sets},
                                              home / "train")
                        _write_stage_config(home / "train.yaml", train, home / "train", f"cell {cell_id}")
                        cells.append(Cell(cell_id, len(cells), task.name, condition, model, size, seed, needs,
                                          str(home / "train.yaml"), str(home / "train"), str(home / "eval")))
    config_path = out / "experiment.yaml"
    update_text(config_path, _dump(cfg.model_dump(mode="json")))
    plan = Plan(str(out), str(config_path), runs, cells, str(out / "report"),
                {tasks[ref].name: d for ref, d in data.items()})
    update_json(out / "plan.json", plan.to_json())
    return plan


def current_plan(cfg: StudyConfig, source: str) -> Plan:
    """The plan already in the study folder when it was made from this very config (what one
    SLURM array task of training reads: it does not plan the whole grid again), else a new one."""
    out = Path(os.path.expanduser(cfg.out_dir)).resolve()
    written, config = out / "plan.json", out / "experiment.yaml"
    resolved = _dump(cfg.model_copy(update={"out_dir": str(out)}).model_dump(mode="json"))
    if written.is_file() and config.is_file() and config.read_text(encoding="utf-8") == resolved:
        return Plan.load(written)
    return make_plan(cfg, source)
