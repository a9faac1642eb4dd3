"""The generation stage's config: task, mode, generator, quota, filters; and its loader.

Cross-field checks (`runnable_problems`) also run on the raw mapping, so one attempt reports
field errors and cross-field problems together."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_serializer, model_validator

from localsynth.backends.settings import GeneratorConfig
from localsynth.config import ConfigProblems, Progress, Strict, has_cross_problems, load
from localsynth.errors import UserError
from localsynth.secrets import SECRET_NAMES, looks_secret, redact
from localsynth.tasks import (
    TaskConfig,
    available_tasks,
    configs_root,
    resolve_task,
    template_problems,
)

# A shard is processed in waves of at most 16,384 requests, but its duplicate index holds every
# kept text (about 0.5 KB per kept row, bench/README.md "Pipeline overhead"). These bounds keep
# one shard's index under about 0.5 GB per label and refuse typos such as 1e12 before any work.
MAX_PER_LABEL = 10_000_000
MAX_PER_SHARD = 1_000_000


def shard_quota_problem(per_label: int, shards: int, fix: str) -> str | None:
    """Why `per_label` rows per label are too many for `shards` shards (None: they are not).
    `fix` names the setting to raise, with {n} for the smallest shard count that fits."""
    share = -(-per_label // max(shards, 1))
    if share <= MAX_PER_SHARD:
        return None
    n = -(-per_label // MAX_PER_SHARD)
    return (
        f"quota.per_label {per_label:,} leaves {share:,} rows per label to one shard, more than one shard "
        f"plans at once (at most {MAX_PER_SHARD:,}; memory grows with it); split the run into at least {n} "
        f"shards: {fix.format(n=n)}"
    )


class Quota(Strict):
    per_label: int = Field(default=100, ge=1, description="Kept rows per label, after parsing, filters and dedup.")
    labels: list[str] | None = Field(default=None, description="Generate only these labels (default: all).")
    overgenerate: float = Field(default=1.2, ge=1.0, le=10.0, description="Requests planned per missing row.")
    max_topup_rounds: int = Field(default=5, ge=0, description="Further rounds to fill a shortfall.")

    @field_validator("per_label")
    @classmethod
    def _bounded(cls, value: int) -> int:
        if value > MAX_PER_LABEL:
            raise ValueError(
                f"{value:,} rows per label is more than one run produces (at most {MAX_PER_LABEL:,}); "
                f"generate them in several runs, each with its own seed and run_dir, and train on all of them"
            )
        return value


class Filters(Strict):
    min_words: int = Field(default=3, ge=0, description="Drop texts with fewer words.")
    max_words: int | None = Field(default=None, ge=1, description="None: twice the task's max_words.")
    drop_truncated: bool = Field(default=True, description="Drop outputs cut off by max_tokens.")
    drop_refusals: bool = Field(default=True, description="Drop outputs that open like a refusal ('I'm sorry, ...').")
    cut_at_sentence: bool = Field(
        default=True,
        description="Shorten outputs cut off by max_tokens or over max_words to their last complete sentence inside "
        "the word bounds (recorded in the row's cut_at_sentence) instead of dropping them.",
    )
    max_repeated_share: float = Field(
        default=0.3, gt=0.0, le=1.0,
        description="Drop texts in which more than this share of word pairs repeat an earlier pair (model loops); 1: off.",
    )
    drop_prompt_echoes: bool = Field(
        default=True, description="Drop outputs that repeat six or more consecutive words of their own prompt."
    )
    dedup: bool = Field(default=True, description="Drop exact duplicates after normalisation.")
    near_duplicate_jaccard: float | None = Field(
        default=0.8, gt=0.0, le=1.0, description="Drop texts whose word-set Jaccard with a kept text reaches this."
    )
    copy_jaccard: float = Field(
        default=0.7, gt=0.0, le=1.0, description="Drop few-shot outputs this close to one of their examples."
    )
    judge: Literal["off", "drop"] = Field(
        default="off",
        description="drop: the generator, as a judge, picks a label for every text that passed the other filters "
        "(constrained to the label names on vllm, exact log-likelihoods on hf); texts it labels otherwise are "
        "dropped (judge_mismatch) and topped up. Relabelling instead: `localsynth audit` and audit.filter_rows.",
    )

    @model_serializer(mode="wrap")
    def _omit_judge_when_off(self, handler) -> dict[str, Any]:
        # Added after runs and job scripts were written: at its default it is left out of every
        # dump, so their config.yaml still compares equal and their scripts render the same.
        data = handler(self)
        if data.get("judge") == "off":
            data.pop("judge")
        return data

    @model_validator(mode="after")
    def _word_range(self) -> Filters:
        if self.max_words is not None and self.min_words > self.max_words:
            raise ConfigProblems([(
                "min_words",
                f"is {self.min_words} but max_words is {self.max_words}, so every text would be dropped; "
                f"lower filters.min_words or raise filters.max_words",
            )])
        return self


def runnable_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Cross-field checks of a generation config. Works on the raw mapping too (skipping what
    is malformed, which field validation reports), so they are reported with field errors."""
    fields = GenerateConfig.model_fields
    gen_fields = GeneratorConfig.model_fields
    task = data.get("task") if isinstance(data.get("task"), Mapping) else {}
    generator = data.get("generator") if isinstance(data.get("generator"), Mapping) else {}
    quota = data.get("quota") if isinstance(data.get("quota"), Mapping) else {}
    problems = []

    few_shot = task.get("few_shot") if isinstance(task.get("few_shot"), Mapping) else {}
    source = few_shot.get("source") if isinstance(few_shot.get("source"), Mapping) else {}
    if data.get("mode", fields["mode"].default) == "few-shot" and not (source.get("path") or source.get("hf_dataset")):
        problems.append((
            "task.few_shot.source",
            "few-shot mode needs real examples, but none are configured; set "
            "task.few_shot.source.path=FILE (CSV/TSV/JSONL/Parquet with text and label columns) "
            "or task.few_shot.source.hf_dataset=ID, or use --mode zero-shot",
        ))

    labels = task.get("labels")
    names = [x.get("name") for x in labels if isinstance(x, Mapping)] if isinstance(labels, list) else None
    wanted = quota.get("labels")
    if isinstance(wanted, list) and names is not None:
        unknown = sorted({str(w) for w in wanted} - {str(n) for n in names})
        if unknown or not wanted:
            problems.append((
                "quota.labels",
                f"names unknown label(s) {unknown or '[]'}; task labels: {', '.join(map(str, names))} "
                f"(or remove quota.labels to generate all)",
            ))

    backend = generator.get("backend", gen_fields["backend"].default)
    if backend == "openai" and not generator.get("model"):
        problems.append(("generator.model", "is required with the openai backend: set it to the served model name"))

    # filters.max_words null means twice the task's max_words: only here are both known.
    filters = data.get("filters") if isinstance(data.get("filters"), Mapping) else {}
    min_words = filters.get("min_words", Filters.model_fields["min_words"].default)
    task_max = task.get("max_words", TaskConfig.model_fields["max_words"].default)
    if filters.get("max_words") is None and all(type(v) is int for v in (min_words, task_max)) and min_words > 2 * task_max:
        problems.append((
            "filters.min_words",
            f"is {min_words} but the longest text kept is {2 * task_max} words (filters.max_words is unset: twice "
            f"task.max_words {task_max}), so every text would be dropped; lower filters.min_words or set "
            f"filters.max_words",
        ))
    return problems + secret_problems(generator, "generator")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def secret_problems(generator: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    """API keys come from the environment: a key typed into the generator settings is refused
    (the messages never repeat it), before it can reach config.yaml, logs or a SLURM script."""
    openai = generator.get("openai") if isinstance(generator.get("openai"), Mapping) else {}
    fix = "put the key in an environment variable and name that variable in generator.openai.api_key_env"
    problems = []
    env = openai.get("api_key_env")
    if isinstance(env, str) and (looks_secret(env) or not _ENV_NAME.fullmatch(env)):
        what = "looks like an API key itself" if looks_secret(env) else f"'{redact(env)}' is not a variable name"
        problems.append((
            f"{prefix}.openai.api_key_env",
            f"names the environment variable that holds the key, but {what}; {fix} (for example "
            f"export OPENAI_API_KEY=... and api_key_env: OPENAI_API_KEY)",
        ))
    url = openai.get("base_url")
    if isinstance(url, str) and looks_secret(url):
        problems.append((
            f"{prefix}.openai.base_url",
            f"holds a credential ({redact(url)}); give only the server address (http://HOST:PORT/v1) and {fix}",
        ))

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(v, str) and v and SECRET_NAMES.fullmatch(str(k)):
                    problems.append((f"{key}.{k}", f"holds a secret; remove it and {fix}"))
                else:
                    walk(v, f"{key}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and looks_secret(value):
            problems.append((key, f"holds what looks like an API key ({redact(value)}); remove it and {fix}"))

    walk(openai.get("extra_body"), f"{prefix}.openai.extra_body")
    return problems


class GenerateConfig(Strict):
    task: TaskConfig = Field(description="The task: a name from configs/tasks, a path to a task YAML, or inline.")
    mode: Literal["zero-shot", "few-shot"] = Field(
        default="zero-shot", description="zero-shot (prompts only) or few-shot (k real examples per request)."
    )
    seed: int = Field(default=0, description="Run seed; every request derives its own seed from it.")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="Backend, model and sampling.")
    quota: Quota = Field(default_factory=Quota, description="How many kept rows to produce per label.")
    filters: Filters = Field(default_factory=Filters, description="Which generated texts to drop.")
    run_dir: str | None = Field(
        default=None, description="Where the run's files go; unset: runs/<task>-<mode>, filled in when the config is read."
    )
    progress: Progress = Field(
        default="auto", description="auto: a bar on a terminal, periodic log lines elsewhere."
    )
    log_every_s: float = Field(default=30.0, gt=0, description="Seconds between progress log lines.")
    flush_every_s: float = Field(
        default=10.0, ge=0,
        description="Seconds between fsyncs of the completion log. Every chunk of finished requests is written to it "
        "as it arrives, so a killed process loses none; this bounds what a node crash or a power loss can lose "
        "(0: fsync every chunk).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_run_dir(cls, data: Any) -> Any:
        """The run directory is decided here, once: every stage after reads `cfg.run_dir`."""
        if not isinstance(data, Mapping) or data.get("run_dir") is not None:
            return data
        task = data.get("task")
        name = task.name if isinstance(task, TaskConfig) else task.get("name") if isinstance(task, Mapping) else None
        mode = data.get("mode", "zero-shot")
        if isinstance(name, str) and isinstance(mode, str):
            return {**data, "run_dir": f"runs/{name}-{mode}"}
        return data

    @model_validator(mode="after")
    def _runnable(self) -> GenerateConfig:
        problems = runnable_problems(self.model_dump(include={"task", "mode", "generator", "quota", "filters"}))
        if problems:
            raise ConfigProblems(problems)
        return self

    @property
    def labels(self) -> list[str]:
        return self.quota.labels or self.task.label_names

    @property
    def max_words(self) -> int:
        return self.filters.max_words or 2 * self.task.max_words



def load_generate_config(path: str | Path | None, overrides: list[str] | None = None) -> GenerateConfig:
    """A generation config from YAML (None: the embedded default) plus overrides; every problem
    found is in one UserError."""
    cfg_path = Path(path) if path is not None else configs_root() / "experiments" / "default.yaml"

    def resolve(data: dict[str, Any]) -> None:
        if "task" not in data:
            if "labels" in data and "prompts" in data:
                raise UserError(
                    f"{cfg_path} is a task file, not a generation config; run "
                    f"'localsynth generate --set task={cfg_path}' or name it in a config (task: {cfg_path.stem})"
                )
            raise UserError(
                f"{cfg_path}: missing key 'task'; add 'task: NAME' with one of: "
                f"{', '.join(available_tasks(cfg_path.parent))}"
            )
        data["task"] = resolve_task(data["task"], cfg_path.parent)

    def more_problems(data: dict[str, Any], exc: ValidationError) -> list[tuple[str, str]]:
        problems = []
        if isinstance(data.get("task"), dict) and not has_cross_problems(exc, ("task",)):
            problems += [(f"task.{key}", msg) for key, msg in template_problems(data["task"])]
        if not has_cross_problems(exc, ()):
            problems += runnable_problems(data)
        return problems

    source = str(cfg_path) if path is not None else f"{cfg_path} (the embedded default)"
    return load(GenerateConfig, cfg_path, overrides, source=source, resolve=resolve, more_problems=more_problems)


@dataclass
class GenerationRun:
    """One generation run: a `localsynth generate` config file, split into `shards` that run
    one at a time here or as the tasks of a SLURM array. The study plans them; the SLURM
    planner renders their jobs from the same objects."""

    id: str
    task: str
    mode: str
    config: Path  # the config file every shard of the run reads
    run_dir: Path
    shards: int = 1
    loaded: GenerateConfig | None = field(default=None, repr=False, compare=False)

    @property
    def cfg(self) -> GenerateConfig:
        if self.loaded is None:
            self.loaded = load_generate_config(self.config)
        return self.loaded

    @property
    def set_name(self) -> str:
        """The synthetic set a study's run makes ('few-shot', 'few-shot+audited'): its id after the task."""
        return self.id.rpartition("/")[2]

    @property
    def slug(self) -> str:
        """The id as a file and job name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.id).strip("-")

    def markers(self) -> list[Path]:
        """The completion marker of each shard."""
        from localsynth.generation.rundir import Shard, ShardPaths

        return [ShardPaths(self.run_dir, Shard(i, self.shards)).done for i in range(self.shards)]

    def is_done(self) -> bool:
        return all(marker.is_file() for marker in self.markers())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "mode": self.mode, "config": str(self.config),
                "run_dir": str(self.run_dir), "shards": self.shards}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GenerationRun:
        return cls(data["id"], data["task"], data["mode"], Path(data["config"]), Path(data["run_dir"]), int(data["shards"]))
