"""From a config file to a plan of SLURM jobs: a generation config (one job array), a training
config (one training job) or an experiment config (generation arrays -> training arrays ->
report). The kind is told by the keys: `tasks` + `conditions` (experiment), `task`
(generation), `model` + `train` (training).

Each job reads a resolved config written beside its script (absolute paths), so the job does
not depend on the folder or the overrides it was submitted with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from localsynth.config import load_generate_config, read_yaml, shard_quota_problem
from localsynth.errors import UserError
from localsynth.io import output_dir, write_text_atomic
from localsynth.slurm import (
    GenRun,
    Job,
    check_script_paths,
    experiment_jobs,
    generation_jobs,
    one_line,
    stage_train_jobs,
)
from localsynth.slurmconfig import SlurmSettings, load_slurm_settings


@dataclass
class Built:
    kind: str  # generate | train | experiment
    jobs: list[Job]
    settings: SlurmSettings
    slurm_dir: Path
    source: str


def config_kind(path: Path) -> str:
    data = read_yaml(path)
    if "conditions" in data or "tasks" in data:
        return "experiment"
    if "task" in data:
        return "generate"
    if "model" in data and "train" in data:
        return "train"
    raise UserError(
        f"{path}: not a generation config (key 'task'), a training config (keys 'model' and 'train') or an "
        f"experiment config (keys 'tasks' and 'conditions'); give one of those"
    )


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(`slurm.*` overrides without the prefix, the rest)."""
    ours = [o.removeprefix("slurm.") for o in overrides if o.startswith("slurm.")]
    return ours, [o for o in overrides if not o.startswith("slurm.")]


def slurm_dir_of(path: Path, site: Path | None = None, overrides: list[str] | None = None) -> Path:
    """Where a config's scripts, logs and job record go, without rendering anything."""
    kind = config_kind(path)
    _, rest = split_overrides(overrides or [])
    if kind == "generate":
        from localsynth.generate import default_run_dir

        return default_run_dir(load_generate_config(path, rest)).resolve() / "slurm"
    if kind == "train":
        from localsynth.trainconfig import load_train_config

        return Path(load_train_config(path, rest).out_dir).resolve() / "slurm"
    from localsynth.experimentconfig import load_experiment_config

    return Path(load_experiment_config(path, rest).out_dir).expanduser().resolve() / "slurm"


def build(path: Path, overrides: list[str], site: Path | None, shards: int | None) -> Built:
    """The plan of jobs for a config (writes the resolved stage configs; submits nothing)."""
    kind = config_kind(path)
    if shards is not None and shards < 1:
        raise UserError(
            f"--shards must be at least 1 (the array tasks of each generation run); got {shards}; "
            f"for example --shards 4"
        )
    ours, rest = split_overrides(overrides)
    chdir = Path.cwd().resolve()
    if kind == "generate":
        from localsynth.generate import default_run_dir

        cfg = load_generate_config(path, rest)
        settings = load_slurm_settings(site, None, ours)
        too_many = shard_quota_problem(cfg.quota.per_label, shards or 1, "--shards {n}")
        if too_many:
            raise UserError(too_many)
        run_dir = default_run_dir(cfg).resolve()
        cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
        one_line(str(run_dir), "run_dir", quoted=True)
        check_script_paths(run_dir / "slurm", chdir)
        slurm_dir = output_dir(run_dir / "slurm", "run_dir (--set run_dir=DIR)")
        resolved = slurm_dir / "generate.yaml"
        write_text_atomic(resolved, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
        run = GenRun(f"{cfg.task.name}-{cfg.mode}", resolved, run_dir, shards or 1, cfg)
        return Built(kind, generation_jobs(run, settings, slurm_dir, chdir), settings, slurm_dir, str(path))
    if kind == "train":
        from localsynth.trainconfig import load_train_config

        if shards is not None:
            raise UserError("--shards goes with a generation or experiment config; a training job is not sharded")
        cfg = load_train_config(path, rest)
        settings = load_slurm_settings(site, None, ours)
        out_dir = Path(cfg.out_dir).resolve()
        cfg = cfg.model_copy(update={"out_dir": str(out_dir)})
        one_line(str(out_dir), "out_dir", quoted=True)
        check_script_paths(out_dir / "slurm", chdir)
        slurm_dir = output_dir(out_dir / "slurm", "out_dir (--set out_dir=DIR)")
        resolved = slurm_dir / "train.yaml"
        write_text_atomic(resolved, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
        return Built(kind, stage_train_jobs(resolved, out_dir, settings, slurm_dir, chdir), settings, slurm_dir, str(path))
    return _build_experiment(path, ours, rest, site, shards, chdir)


def _build_experiment(path: Path, ours: list[str], rest: list[str], site: Path | None, shards: int | None,
                      chdir: Path) -> Built:
    from localsynth.experiment import make_plan
    from localsynth.experimentconfig import load_experiment_config

    if shards is not None:
        rest = [*rest, f"generation.shards={shards}"]
    cfg = load_experiment_config(path, rest)
    settings = load_slurm_settings(site, cfg.slurm, ours, source=f"{path} (slurm)")
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    one_line(str(out_dir), "out_dir", quoted=True)
    check_script_paths(out_dir / "slurm", chdir)
    output_dir(out_dir / "slurm", "out_dir (--set out_dir=DIR)")
    plan = make_plan(cfg, str(path))
    data = json.loads((Path(plan.out_dir) / "plan.json").read_text(encoding="utf-8"))
    runs = [
        GenRun(r["id"], Path(r["config"]), Path(r["run_dir"]), int(r["shards"]), load_generate_config(r["config"]))
        for r in data["generate"]
    ]
    jobs = experiment_jobs(data, runs, cfg.name, settings, chdir)
    return Built("experiment", jobs, settings, Path(data["out_dir"]) / "slurm", str(path))
