"""Typed configuration of a study: tasks x data conditions x classifier models x sizes x seeds.

A study config names everything the paper's grid varies and reuses the stage configs for
the rest: `generation` holds the keys of a generation config (generator, quota, filters, ...)
and `training` / `lora` those of a training config, so one vocabulary serves every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from localsynth.backends.settings import GeneratorConfig
from localsynth.config import (
    ConfigProblems,
    Progress,
    Strict,
    load,
)
from localsynth.generation.config import Filters, Quota, secret_problems, shard_quota_problem
from localsynth.tasks import DataSource
from localsynth.training.config import PACKAGED_MINILM, EvalSettings, Hyperparameters, LoraSettings

CONDITIONS = ("real", "zero-shot", "few-shot", "real+zero-shot", "real+few-shot")


class TaskData(Strict):
    """Real data of one task, when it is not `<data_dir>/<task>/{train,test}.*`."""

    train: DataSource | None = Field(default=None, description="Real training data (also the few-shot pool).")
    test: DataSource | None = Field(default=None, description="Real test data for every evaluation.")


class Generation(Strict):
    """The keys of a generation config that the grid does not vary (task and mode it does)."""

    seed: int = Field(default=0, description="Run seed; every request derives its own seed from it.")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="Backend, model and sampling.")
    quota: Quota = Field(default_factory=Quota, description="Kept rows per label for every synthetic set.")
    filters: Filters = Field(default_factory=Filters, description="Which generated texts to drop.")
    shards: int = Field(default=1, ge=1, description="Shards per generation run (SLURM array tasks; run in turn locally).")
    progress: Progress = Field(default="auto", description="How progress is shown.")
    log_every_s: float = Field(default=30.0, gt=0, description="Seconds between progress log lines.")

    @model_validator(mode="after")
    def _safe(self) -> Generation:
        problems = secret_problems(self.generator.model_dump(), "generator")
        too_many = shard_quota_problem(self.quota.per_label, self.shards, "set generation.shards={n}")
        if too_many:
            problems.append(("shards", too_many))
        if problems:
            raise ConfigProblems(problems)
        return self


class Evaluation(EvalSettings):
    """The evaluation settings of `localsynth evaluate`, and how many real test rows to use."""

    max_test_rows: int | None = Field(
        default=None, ge=2, description="Evaluate on a stratified sample of this many test rows (None: all)."
    )


class Analysis(Strict):
    diversity: bool = Field(default=True, description="Diversity and similarity to real of each task's text sets.")
    embedding_model: str | None = Field(default=None, description="Sentence encoder folder (default: all-MiniLM-L6-v2).")
    diversity_rows: int | None = Field(
        default=None, ge=2, description="Texts per set for diversity (sampled; None: the smallest set's size)."
    )
    metrics: list[Literal["cosine", "euclidean"]] = Field(default_factory=lambda: ["cosine"], min_length=1)
    agreement: dict[str, str] = Field(
        default_factory=dict,
        description="Per task: instance agreement (a folder of sentences_*agree files or a file with an agreement "
        "column). A test split with an 'agreement' column needs no entry.",
    )
    gammas: list[float] | None = Field(default=None, description="Agreement thresholds (default: the levels present).")
    judgments: str | None = Field(
        default=None, description="CSV of pairwise 'more objective' judgments -> Bradley-Terry task scores "
        "(default: the tasks' subjectivity ranks from their configs).",
    )
    gap_condition: Literal["zero-shot", "few-shot"] = Field(
        default="zero-shot", description="The synthetic condition of the real-minus-synthetic F1 gap."
    )
    audit: bool = Field(
        default=True, description="Audit every synthetic set before training (localsynth audit); the report "
        "correlates each signal with the F1 gap.",
    )
    audit_judge: bool = Field(
        default=True, description="In the audit, the generator judges each text's label (with SmolLM2 on a "
        "2-core CPU about 3 texts/s).",
    )

    @field_validator("gammas")
    @classmethod
    def _unit_interval(cls, value: list[float] | None) -> list[float] | None:
        bad = [g for g in value or [] if not 0.0 <= g <= 1.0]
        if bad:
            raise ValueError(f"agreement thresholds must lie in [0, 1]; got {bad}")
        return value


class StudyConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Name of the study, for the report.")
    out_dir: str = Field(description="Folder of the whole study: data, runs, models, evaluations, report.")
    tasks: list[str] = Field(min_length=1, description="Task names (configs/tasks) or task YAML paths.")
    conditions: list[Literal["real", "zero-shot", "few-shot", "few-shot+audited", "real+zero-shot", "real+few-shot"]] = Field(
        min_length=1, description="Training data of each cell: real, synthetic, or real + synthetic (all rows of both). "
        "few-shot+audited: a few-shot set whose texts the generator, as judge, labels otherwise are dropped and "
        "topped up to the same quota (filters.judge: drop).",
    )
    models: dict[str, str] = Field(
        min_length=1, description=f"Classifier name -> local encoder folder ('{PACKAGED_MINILM}': the packaged MiniLM)."
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Training seeds per cell.")
    sizes: list[int | None] = Field(
        default_factory=lambda: [None], min_length=1,
        description="Training rows per label taken from each source (None: all): one grid axis.",
    )
    data_dir: str | None = Field(
        default=None, description="Folder with <task>/train.* and <task>/test.* (CSV or Parquet, text,label)."
    )
    data: dict[str, TaskData] = Field(default_factory=dict, description="Per-task real data, overriding data_dir.")
    generation: Generation = Field(default_factory=Generation, description="Generation settings shared by all runs.")
    training: Hyperparameters = Field(default_factory=Hyperparameters, description="Fine-tuning settings.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Optional LoRA through peft.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation on the real test split.")
    analysis: Analysis = Field(default_factory=Analysis, description="Diversity and subjectivity analyses.")
    slurm: dict[str, Any] | None = Field(default=None, description="Cluster settings for 'localsynth slurm'.")
    progress: Progress = Field(default="auto", description="How progress is shown.")

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [n for n in value if not n or "/" in n or n.startswith(".")]
        if bad:
            raise ValueError(f"model names {bad} cannot be folder names; use short names like 'bert' or 'roberta'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        for key, items in (("tasks", self.tasks), ("conditions", self.conditions), ("seeds", self.seeds), ("sizes", self.sizes)):
            if len(set(items)) != len(items):
                raise ValueError(f"{key} lists a value twice: {items}")
        largest = max((s for s in self.sizes if s is not None), default=None)
        synthetic = any(c != "real" for c in self.conditions)
        if synthetic and largest is not None and largest > self.generation.quota.per_label:
            raise ValueError(
                f"sizes asks for {largest} rows per label but generation.quota.per_label is "
                f"{self.generation.quota.per_label}; raise the quota or lower the size"
            )
        if any(s is not None and s < 1 for s in self.sizes):
            raise ValueError(f"sizes must be positive (or null for all rows); got {self.sizes}")
        return self

    @property
    def synthetic_sets(self) -> list[str]:
        """The synthetic sets (one generation run per task each) the conditions need, in a fixed order."""
        return [s for s in SYNTHETIC_SETS if any(s in sources(c) for c in self.conditions)]


SYNTHETIC_SETS = ("zero-shot", "few-shot", "few-shot+audited")


def sources(condition: str) -> list[str]:
    """The training sets a condition names: 'real', a synthetic set, or real + one synthetic set."""
    return ["real", condition.removeprefix("real+")] if condition.startswith("real+") else [condition]


def generation_mode(synthetic_set: str) -> str:
    """The generation mode behind a synthetic set (the audited set is a filtered few-shot run)."""
    return synthetic_set.removesuffix("+audited")


def load_study_config(path: str | Path, overrides: list[str] | None = None,
                           out_dir: str | Path | None = None) -> StudyConfig:
    """A study config from YAML plus `--set` overrides (and the --out folder); every problem
    reported at once."""
    base = {"out_dir": str(out_dir)} if out_dir is not None else None
    return load(StudyConfig, path, overrides, base=base)
