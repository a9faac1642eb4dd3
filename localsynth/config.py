"""Typed configuration: pydantic models, YAML loading, `--set a.b=c` overrides.

Defaults live here and nowhere else. Unknown keys are errors that name the key, and every
problem in a file is reported at once. Things the paper leaves open (sampling parameters,
filters, conversation length) are settings with documented defaults.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from localsynth.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- task


class Label(Strict):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1, description="What a text of this label is; shown to the generator.")


class Prompts(Strict):
    """Prompt templates. Placeholders: {label}, {label_description}, {text_kind}, {max_words},
    {style} (all style attributes as 'name: value' pairs), any style attribute by name, and in
    the few-shot template {k} and {examples}."""

    context: str = Field(description="System message: the role for the domain (a journalist, a film critic, ...).")
    generation: str = Field(description="Asks for one text with the given label, style and word limit.")
    diversity: str = Field(description="Sent every `conversation.diversity_every` generations: be more diverse.")
    few_shot: str = Field(
        description="Introduces the k real examples and asks to imitate them without copying or rewriting.",
    )
    example: str = Field(default='Example {i}: "{text}"', description="How one real example is shown.")
    example_with_label: str = Field(
        default='Example {i} ({label}): "{text}"',
        description="How one real example is shown when examples come from all labels.",
    )


class Conversation(Strict):
    turns: int = Field(default=5, ge=1, description="Generations in one conversation before it is reset.")
    diversity_every: int = Field(default=2, ge=0, description="Send the diversity prompt every n generations (0: never).")


class DataSource(Strict):
    """Real labelled data: a local CSV / TSV / JSONL / Parquet file or a Hugging Face dataset id."""

    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] = Field(default_factory=dict, description="Rename source labels to task labels.")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if self.path and self.hf_dataset:
            raise ValueError("set either 'path' or 'hf_dataset', not both")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.path or self.hf_dataset)


class FewShot(Strict):
    k: int = Field(default=3, ge=1, description="Real examples shown per request (re-sampled every request).")
    same_label: bool = Field(default=True, description="Examples from the target label only (else from all labels).")
    turns: int = Field(default=1, ge=1, description="Generations per few-shot conversation before reset.")
    source: DataSource = Field(default_factory=DataSource)


class RealData(Strict):
    train: DataSource = Field(default_factory=DataSource)
    test: DataSource = Field(default_factory=lambda: DataSource(split="test"))


class Subjectivity(Strict):
    """Task-level subjectivity as data: the paper's crowd ranking (1 = most objective)."""

    rank: int = Field(ge=1, description="Position in the paper's objective -> subjective ordering.")
    level: Literal["objective", "mixed", "subjective"]


class TaskConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    text_kind: str = Field(description="What one text is, e.g. 'news article', 'SMS message'.")
    max_words: int = Field(default=60, ge=1, description="Word limit given to the generator.")
    labels: list[Label] = Field(min_length=2)
    prompts: Prompts
    styles: dict[str, list[str]] = Field(
        default_factory=dict, description="Attributes that vary per request; one value of each is sampled."
    )
    conversation: Conversation = Field(default_factory=Conversation)
    few_shot: FewShot = Field(default_factory=FewShot)
    real_data: RealData = Field(default_factory=RealData)
    subjectivity: Subjectivity

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[Label]) -> list[Label]:
        names = [label.name for label in labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"label names must be unique; repeated: {', '.join(dupes)}")
        return labels

    @field_validator("styles")
    @classmethod
    def _styles_not_empty(cls, styles: dict[str, list[str]]) -> dict[str, list[str]]:
        empty = [k for k, v in styles.items() if not v]
        if empty:
            raise ValueError(f"style attributes need at least one value; empty: {', '.join(empty)}")
        return styles

    @model_validator(mode="after")
    def _templates_use_known_fields(self) -> TaskConfig:
        base = {"label", "label_description", "text_kind", "max_words", "style", *self.styles}
        allowed = {
            "context": base,
            "generation": base,
            "diversity": base,
            "few_shot": base | {"k", "examples"},
            "example": {"i", "text", "label"},
            "example_with_label": {"i", "text", "label"},
        }
        problems = []
        for name, fields in allowed.items():
            template = getattr(self.prompts, name)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            except ValueError as exc:
                problems.append(f"prompts.{name}: {exc} (write literal braces as {{{{ and }}}})")
                continue
            unknown = sorted(used - fields)
            if unknown:
                problems.append(
                    f"prompts.{name} uses unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                    f"available: {', '.join(sorted(fields))}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


# ----------------------------------------------------------------------------- generator


class Sampling(Strict):
    """Sampling parameters (not published by the paper; these are ours)."""

    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=160, ge=1)
    stop: list[str] = Field(default_factory=list)


class VllmSettings(Strict):
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.90, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=16)
    dtype: str = "auto"
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(default=None, ge=1)
    submit_chunk: int = Field(
        default=0, ge=0, description="Requests per engine call; 0 sends every request of a round at once."
    )
    use_n: bool = Field(default=True, description="Merge identical prompts of a round into one request with n > 1.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for vllm.LLM.")


class OpenAISettings(Strict):
    base_url: str | None = Field(default=None, description="None: the OpenAI API; else any compatible server.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(default=16, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=8, ge=0)
    use_n: bool = False
    extra_body: dict[str, Any] = Field(default_factory=dict)


class HFSettings(Strict):
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=16, ge=1)


class Pricing(Strict):
    input_per_million: float | None = Field(default=None, ge=0, description="Dollars per 1M prompt tokens.")
    output_per_million: float | None = Field(default=None, ge=0, description="Dollars per 1M completion tokens.")


class GeneratorConfig(Strict):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    model: str | None = Field(
        default=None,
        description="Local model folder (or served model name for openai). None with hf: a tiny smoke-test model.",
    )
    sampling: Sampling = Field(default_factory=Sampling)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    hf: HFSettings = Field(default_factory=HFSettings)
    pricing: Pricing = Field(default_factory=Pricing)


# ----------------------------------------------------------------------------- generation run


class Quota(Strict):
    per_label: int = Field(default=100, ge=1, description="Kept rows per label, after parsing, filters and dedup.")
    labels: list[str] | None = Field(default=None, description="Generate only these labels (default: all).")
    overgenerate: float = Field(default=1.2, ge=1.0, description="Requests planned per missing row.")
    max_topup_rounds: int = Field(default=5, ge=0, description="Further rounds to fill a shortfall.")


class Filters(Strict):
    min_words: int = Field(default=3, ge=0)
    max_words: int | None = Field(default=None, ge=1, description="None: twice the task's max_words.")
    drop_truncated: bool = Field(default=True, description="Drop outputs cut off by max_tokens.")
    drop_refusals: bool = True
    dedup: bool = Field(default=True, description="Drop exact duplicates after normalisation.")
    near_duplicate_jaccard: float | None = Field(
        default=0.8, gt=0.0, le=1.0, description="Drop texts whose word-set Jaccard with a kept text reaches this."
    )
    copy_jaccard: float = Field(
        default=0.7, gt=0.0, le=1.0, description="Drop few-shot outputs this close to one of their examples."
    )


class GenerateConfig(Strict):
    task: TaskConfig
    mode: Literal["zero-shot", "few-shot"] = "zero-shot"
    seed: int = 0
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    quota: Quota = Field(default_factory=Quota)
    filters: Filters = Field(default_factory=Filters)
    run_dir: str | None = Field(default=None, description="Default: runs/<task>-<mode>.")
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    log_every_s: float = Field(default=30.0, gt=0)
    flush_every_s: float = Field(default=10.0, ge=0, description="Write finished requests to disk this often.")

    @model_validator(mode="after")
    def _runnable(self) -> GenerateConfig:
        problems = []
        if self.mode == "few-shot" and not self.task.few_shot.source.configured:
            problems.append(
                "few-shot mode needs real examples, but task.few_shot.source names none; set "
                "task.few_shot.source.path=FILE (CSV/TSV/JSONL/Parquet with text and label columns) "
                "or task.few_shot.source.hf_dataset=ID"
            )
        if self.quota.labels is not None:
            unknown = sorted(set(self.quota.labels) - set(self.task.label_names))
            if unknown or not self.quota.labels:
                problems.append(
                    f"quota.labels names unknown label(s) {unknown or '[]'}; task labels: {', '.join(self.task.label_names)}"
                )
        if self.generator.backend in ("vllm", "openai") and not self.generator.model:
            problems.append(
                f"generator.model is required with the {self.generator.backend} backend: "
                + ("a local model folder" if self.generator.backend == "vllm" else "the served model name")
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def labels(self) -> list[str]:
        return self.quota.labels or self.task.label_names

    @property
    def max_words(self) -> int:
        return self.filters.max_words or 2 * self.task.max_words


# ----------------------------------------------------------------------------- loading


def configs_root() -> Path:
    """The shipped configs: `configs/` of a source checkout, or the copy inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "_configs"):
        if candidate.is_dir():
            return candidate
    return here.parent / "configs"


def task_search_path(config_dir: Path | None) -> list[Path]:
    dirs = [Path.cwd() / "configs" / "tasks"]
    if config_dir is not None:
        dirs += [config_dir.parent / "tasks", config_dir]
    dirs.append(configs_root() / "tasks")
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def available_tasks(config_dir: Path | None = None) -> list[str]:
    names = set()
    for d in task_search_path(config_dir):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{what} {path} is not valid YAML{where}: {problem}; fix the syntax there") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a YAML mapping (key: value lines), got a {type(data).__name__}")
    return data


def resolve_task(ref: Any, config_dir: Path | None) -> dict[str, Any]:
    """A task given by name (configs/tasks/NAME.yaml), by path, or inline as a mapping."""
    if isinstance(ref, dict):
        return ref
    if not isinstance(ref, str) or not ref:
        raise UserError(f"task must be a task name, a path to a task YAML, or a mapping; got {ref!r}")
    as_path = Path(os.path.expanduser(ref))
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        for base in ([config_dir] if config_dir else []) + [Path.cwd()]:
            candidate = as_path if as_path.is_absolute() else base / as_path
            if candidate.is_file():
                return read_yaml(candidate, "task file")
        raise UserError(f"task file not found: {ref}; give a path relative to the config file or the current folder")
    for d in task_search_path(config_dir):
        candidate = d / f"{ref}.yaml"
        if candidate.is_file():
            return read_yaml(candidate, "task file")
    raise UserError(
        f"unknown task '{ref}'; known tasks: {', '.join(available_tasks(config_dir)) or 'none'} "
        f"(or give a path to a task YAML)"
    )


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (for example quota.per_label=500); got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: '{'.'.join(path[: i + 1])}' is a value, not a section; set it directly")
        node = child
    node[path[-1]] = value


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            hint = "unknown key; remove it or check its spelling"
            if loc.rsplit(".", 1)[-1] in {"api_key", "key", "token"}:
                hint += " (API keys are read only from the environment variable named by generator.openai.api_key_env)"
            lines.append(f"  - {loc}: {hint}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        shown = "" if isinstance(given, (dict, list)) or err["type"] == "missing" else f" (got {given!r})"
        lines.append(f"  - {loc}: {msg}{shown}")
    count = len(lines)
    head = f"{source}: {count} problem{'s' if count > 1 else ''} in the configuration:"
    return "\n".join([head, *lines])


def load_generate_config(path: str | Path | None, overrides: list[str] | None = None) -> GenerateConfig:
    """Load a generation config from YAML (None: the embedded smoke default) and apply overrides."""
    cfg_path = Path(path) if path is not None else configs_root() / "experiments" / "smoke.yaml"
    data = read_yaml(cfg_path)
    parsed = [(parse_override(item), item) for item in overrides or []]
    for (keys, value), item in parsed:
        if keys == ["task"]:
            data["task"] = value
    if "task" not in data:
        raise UserError(f"{cfg_path}: missing key 'task'; name one of: {', '.join(available_tasks(cfg_path.parent))}")
    data["task"] = resolve_task(data["task"], cfg_path.parent)
    for (keys, value), item in parsed:
        if keys != ["task"]:
            apply_override(data, keys, value, item)
    try:
        return GenerateConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(cfg_path))) from None


def load_task(path_or_name: str) -> TaskConfig:
    data = resolve_task(path_or_name, None)
    try:
        return TaskConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, path_or_name)) from None
