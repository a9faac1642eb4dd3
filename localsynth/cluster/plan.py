"""From a config file to a plan of SLURM jobs: a generation config (one job array), a training
config (one training job) or a study config (generation arrays -> training arrays ->
report). The kind is told by the keys: `tasks` + `conditions` (experiment), `task`
(generation), `model` + `train` (training).

Each job reads a resolved config written beside its script (absolute paths), so the job does
not depend on the folder or the overrides it was submitted with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from localsynth.cluster.render import (
    Job,
    check_script_paths,
    generation_jobs,
    one_line,
    stage_train_jobs,
    study_jobs,
)
from localsynth.cluster.settings import SlurmSettings, load_slurm_settings
from localsynth.config import read_yaml
from localsynth.errors import UserError
from localsynth.generation.config import GenerationRun, load_generate_config, shard_quota_problem
from localsynth.io import output_dir, write_text_atomic


@dataclass
class Built:
    kind: str  # generate | train | study
    jobs: list[Job]
    settings: SlurmSettings
    slurm_dir: Path
    source: str


def config_kind(path: Path) -> str:
    data = read_yaml(path)
    if "conditions" in data or "tasks" in data:
        return "study"
    if "task" in data:
        return "generate"
    if "model" in data and "train" in data:
        return "train"
    raise UserError(
        f"{path}: not a generation config (key 'task'), a training config (keys 'model' and 'train') or an "
        f"study config (keys 'tasks' and 'conditions'); give one of those"
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
        return Path(load_generate_config(path, rest).run_dir).resolve() / "slurm"
    if kind == "train":
        from localsynth.training.config import load_train_config

        return Path(load_train_config(path, rest).out_dir).resolve() / "slurm"
    from localsynth.study.config import load_study_config

    return Path(load_study_config(path, rest).out_dir).expanduser().resolve() / "slurm"


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
        cfg = load_generate_config(path, rest)
        settings = load_slurm_settings(site, None, ours)
        too_many = shard_quota_problem(cfg.quota.per_label, shards or 1, "--shards {n}")
        if too_many:
            raise UserError(too_many)
        run_dir = Path(cfg.run_dir).resolve()
        cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
        slurm_dir = _slurm_dir(run_dir, "run_dir", chdir)
        resolved = _write_resolved(slurm_dir / "generate.yaml", cfg)
        run = GenerationRun(f"{cfg.task.name}-{cfg.mode}", cfg.task.name, cfg.mode, resolved, run_dir, shards or 1, cfg)
        return Built(kind, generation_jobs(run, settings, slurm_dir, chdir), settings, slurm_dir, str(path))
    if kind == "train":
        from localsynth.training.config import load_train_config

        if shards is not None:
            raise UserError("--shards goes with a generation or study config; a training job is not sharded")
        cfg = load_train_config(path, rest)
        settings = load_slurm_settings(site, None, ours)
        out_dir = Path(cfg.out_dir).resolve()
        cfg = cfg.model_copy(update={"out_dir": str(out_dir)})
        slurm_dir = _slurm_dir(out_dir, "out_dir", chdir)
        resolved = _write_resolved(slurm_dir / "train.yaml", cfg)
        return Built(kind, stage_train_jobs(resolved, out_dir, settings, slurm_dir, chdir), settings, slurm_dir, str(path))
    return _build_study(path, ours, rest, site, shards, chdir)


def _build_study(path: Path, ours: list[str], rest: list[str], site: Path | None, shards: int | None,
                      chdir: Path) -> Built:
    from localsynth.study.config import load_study_config
    from localsynth.study.plan import make_plan

    if shards is not None:
        rest = [*rest, f"generation.shards={shards}"]
    cfg = load_study_config(path, rest)
    settings = load_slurm_settings(site, cfg.slurm, ours, source=f"{path} (slurm)")
    _slurm_dir(Path(cfg.out_dir).expanduser().resolve(), "out_dir", chdir)
    plan = make_plan(cfg, str(path))
    jobs = study_jobs(plan, cfg.name, settings, chdir)
    return Built("study", jobs, settings, Path(plan.out_dir) / "slurm", str(path))


def _slurm_dir(home: Path, key: str, chdir: Path) -> Path:
    """`home`/slurm, created, once every path a script will hold has passed the checks."""
    one_line(str(home), key, quoted=True)
    check_script_paths(home / "slurm", chdir)
    return output_dir(home / "slurm", f"{key} (--set {key}=DIR)")


def _write_resolved(path: Path, cfg) -> Path:
    """The config a job reads, resolved (absolute paths, overrides applied)."""
    write_text_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    return path
