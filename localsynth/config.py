"""Typed configuration: pydantic models, YAML loading, `--set a.b=c` overrides.

Defaults live here and nowhere else, each with a description (a test checks every field has
one). Unknown keys are errors that name the key (with the nearest known key), and every problem
in a file is reported at once: field errors and the cross-field checks together. Things the
paper leaves open (sampling parameters, filters, conversation length) are settings with
documented defaults.
"""

from __future__ import annotations

import difflib
import os
import re
import string
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from localsynth.errors import UserError
from localsynth.secrets import SECRET_NAMES, looks_secret, redact


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigProblems(ValueError):
    """Several cross-field problems found by one model validator, each with its own key."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key}: {msg}" if key else msg for key, msg in problems))
        self.problems = problems


# ----------------------------------------------------------------------------- task


class Label(Strict):
    name: str = Field(min_length=1, description="The class name, as it appears in the data.")
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

    path: str | None = Field(default=None, description="A local CSV / TSV / JSONL / Parquet file.")
    hf_dataset: str | None = Field(default=None, description="A Hugging Face dataset id (needs hub access or its cache).")
    hf_config: str | None = Field(default=None, description="The dataset's configuration name, if it has several.")
    split: str = Field(default="train", description="The dataset split to read (hf_dataset only).")
    text_column: str = Field(default="text", description="The column holding the text.")
    label_column: str = Field(default="label", description="The column holding the label.")
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
    source: DataSource = Field(default_factory=DataSource, description="Where the real examples come from.")


class RealData(Strict):
    train: DataSource = Field(default_factory=DataSource, description="Real training data (baselines, few-shot pools).")
    test: DataSource = Field(
        default_factory=lambda: DataSource(split="test"), description="Real test data for evaluation."
    )


class Subjectivity(Strict):
    """Task-level subjectivity as data: the paper's crowd ranking (1 = most objective)."""

    rank: int = Field(ge=1, description="Position in the paper's objective -> subjective ordering.")
    level: Literal["objective", "mixed", "subjective"] = Field(description="Coarse subjectivity of the task.")


TEMPLATE_BASE_FIELDS = ("label", "label_description", "text_kind", "max_words", "style")


def template_problems(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Placeholders a task's templates use but cannot be filled. Works on the raw mapping too,
    so it is reported along with field errors."""
    prompts = task.get("prompts")
    styles = task.get("styles") or {}
    if not isinstance(prompts, Mapping):
        return []
    base = {*TEMPLATE_BASE_FIELDS, *(styles if isinstance(styles, Mapping) else ())}
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
        template = prompts.get(name, Prompts.model_fields[name].default)
        if not isinstance(template, str):
            continue
        key = f"prompts.{name}"
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            problems.append((key, f"{exc} (write literal braces as {{{{ and }}}})"))
            continue
        unknown = sorted(used - fields)
        if unknown:
            shown = ", ".join("{" + u + "}" for u in unknown)
            problems.append((key, f"uses unknown placeholder(s) {shown}; available: {', '.join(sorted(fields))}"))
    return problems


class TaskConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="Identifier: lower case letters, digits and '_'.")
    title: str = Field(description="Human-readable name, for tables and plots.")
    text_kind: str = Field(description="What one text is, e.g. 'news article', 'SMS message'.")
    max_words: int = Field(default=60, ge=1, description="Word limit given to the generator.")
    labels: list[Label] = Field(min_length=2, description="At least two classes, each a name and a description.")
    prompts: Prompts = Field(description="Prompt templates: context, generation, diversity, few_shot.")
    styles: dict[str, list[str] | dict[str, list[str]]] = Field(
        default_factory=dict,
        description="Attributes that vary per request; one value of each is sampled. An attribute given as a "
        "mapping {label: [values]} is drawn from its label's own values (a spam sender is not a family member).",
    )
    conversation: Conversation = Field(default_factory=Conversation, description="Zero-shot conversation shape.")
    few_shot: FewShot = Field(default_factory=FewShot, description="Few-shot settings and the real example source.")
    real_data: RealData = Field(default_factory=RealData, description="Real train / test data of the task.")
    subjectivity: Subjectivity = Field(description="The task's place in the paper's subjectivity ranking.")

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
    def _styles_not_empty(cls, styles: dict[str, list[str] | dict[str, list[str]]]) -> dict:
        empty = [k for k, v in styles.items() if not v]
        empty += [f"{k}.{label}" for k, v in styles.items() if isinstance(v, dict) for label, values in v.items() if not values]
        if empty:
            raise ValueError(f"style attributes need at least one value; empty: {', '.join(empty)}")
        return styles

    @model_validator(mode="after")
    def _per_label_styles_cover_labels(self) -> TaskConfig:
        names = set(self.label_names)
        problems = []
        for attribute, values in self.styles.items():
            if isinstance(values, dict) and set(values) != names:
                missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
                problems.append((
                    f"styles.{attribute}",
                    f"per-label values must name every label exactly: missing {missing}, unknown {unknown}; "
                    f"task labels: {', '.join(self.label_names)}",
                ))
        if problems:
            raise ConfigProblems(problems)
        return self

    @model_validator(mode="after")
    def _templates_use_known_fields(self) -> TaskConfig:
        problems = template_problems({"prompts": self.prompts.model_dump(), "styles": self.styles})
        if problems:
            raise ConfigProblems(problems)
        return self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


# ----------------------------------------------------------------------------- generator


class Sampling(Strict):
    """Sampling parameters (not published by the paper; these are ours)."""

    temperature: float = Field(default=1.0, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=160, ge=1, description="Most tokens generated per request.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a generation.")
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, le=2.0,
        description="Penalty on tokens already in the prompt or output (1: none; vllm, hf, and OpenAI-compatible "
        "servers that accept it, such as vLLM's; the OpenAI API does not). Small models loop without it.",
    )


class VllmSettings(Strict):
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one engine spans.")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Share of GPU memory vLLM may take (weights and KV cache); None: 0.90 on GPUs. On a CPU build "
        "vLLM reads it as a share of the RAM, so None there sizes the KV cache by cpu_kv_cache_gib instead.",
    )
    cpu_kv_cache_gib: float = Field(
        default=2.0, gt=0.0, description="KV cache of a CPU-only vLLM build, in GiB (when gpu_memory_utilization is None)."
    )
    max_model_len: int | None = Field(default=None, ge=16, description="Context length; None: the model's own.")
    dtype: str = Field(default="auto", description="Weight dtype passed to vLLM ('auto', 'bfloat16', ...).")
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of shared prompt prefixes (system prompt, history)."
    )
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs (faster start, slower decoding).")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Most sequences per engine step; None: vLLM's default.")
    submit_chunk: int = Field(
        default=0, ge=0, description="Requests per engine call; 0 sends every request of a round at once."
    )
    use_n: bool = Field(
        default=False,
        description="Merge identical prompts of a round into one request with n > 1 (vLLM then samples member i "
        "with the first member's seed + i, not its own).",
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for vllm.LLM.")


class OpenAISettings(Strict):
    base_url: str | None = Field(default=None, description="None: the OpenAI API; else any compatible server.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(default=16, ge=1, description="Most HTTP requests in flight, retries included.")
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Average request rate limit (bursts of at most one second's worth); None: none."
    )
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Token rate limit (prompt estimate + max_tokens per request); None: none."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds before one HTTP attempt times out.")
    max_retries: int = Field(
        default=8, ge=0, description="Retries of a request on 408/409/429/5xx/timeouts (Retry-After honoured)."
    )
    use_n: bool = Field(default=False, description="Merge identical prompts into one request with n > 1.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra JSON fields sent with every request.")


class HFSettings(Strict):
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, mps, cuda or cuda:N."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight dtype; auto is float32 on CPU and the model's own on GPU."
    )
    batch_size: int = Field(default=16, ge=1, description="Requests per generate() call.")


class Pricing(Strict):
    input_per_million: float | None = Field(default=None, ge=0, description="Dollars per 1M prompt tokens.")
    output_per_million: float | None = Field(default=None, ge=0, description="Dollars per 1M completion tokens.")


class GeneratorConfig(Strict):
    backend: Literal["hf", "vllm", "openai"] = Field(
        default="hf", description="hf (transformers), vllm (offline engine) or openai (any compatible server)."
    )
    model: str | None = Field(
        default=None,
        description="A local model folder, a .gguf file, a packaged model name (`localsynth models`), tiny-random "
        "(a random smoke-test model), or the served model name (openai). None: smollm2-135m-instruct (hf, vllm).",
    )
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling parameters.")
    vllm: VllmSettings = Field(default_factory=VllmSettings, description="Settings of the vllm backend.")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="Settings of the openai backend.")
    hf: HFSettings = Field(default_factory=HFSettings, description="Settings of the hf backend.")
    pricing: Pricing = Field(default_factory=Pricing, description="Token prices, for cost estimates and stats.")


# ----------------------------------------------------------------------------- generation run


# A round plans every request of a shard at once, about 0.7 KB per planned row (measured with
# `generate --dry-run`: 100,000 rows per label on sms_spam took 170 MB). These bounds keep one
# shard under about 1.5 GB per label and refuse typos such as 1e12 before anything allocates.
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
    run_dir: str | None = Field(default=None, description="Default: runs/<task>-<mode>.")
    progress: Literal["auto", "bar", "log", "off"] = Field(
        default="auto", description="auto: a bar on a terminal, periodic log lines elsewhere."
    )
    log_every_s: float = Field(default=30.0, gt=0, description="Seconds between progress log lines.")
    flush_every_s: float = Field(
        default=10.0, ge=0,
        description="Seconds between fsyncs of the completion log. Every chunk of finished requests is written to it "
        "as it arrives, so a killed process loses none; this bounds what a node crash or a power loss can lose "
        "(0: fsync every chunk).",
    )

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

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


def _is_task_file(path: Path) -> bool:
    if not path.is_file():  # a FIFO or device named *.yaml would block the read (and Ctrl-C) forever
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "labels" in data and "task" not in data


def available_tasks(config_dir: Path | None = None) -> list[str]:
    """Task names that `task: NAME` resolves to. Folders named `tasks` hold only tasks; in the
    config's own folder (experiments), only files that look like tasks count."""
    names = set()
    for d in task_search_path(config_dir):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml") if p.is_file() and (d.name == "tasks" or _is_task_file(p)))
    return sorted(names)


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the path of a YAML file")
    if not path.is_file():
        if path.exists():  # a FIFO, socket or device: reading it could block forever
            raise UserError(
                f"{what} {path} is not a regular file (a named pipe, socket or device); give the path of a YAML file"
            )
        raise UserError(f"{what} not found: {path}; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {what} {path} ({exc.strerror or exc}); check its permissions") from None
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
        if candidate.is_file() and (d.name == "tasks" or _is_task_file(candidate)):
            return read_yaml(candidate, "task file")
    known = available_tasks(config_dir)
    close = difflib.get_close_matches(ref, known, n=1)
    raise UserError(
        f"unknown task '{ref}'{f' (did you mean {close[0]}?)' if close else ''}; known tasks: "
        f"{', '.join(known) or 'none'}; set task=NAME or give a path to a task YAML"
    )


# ----------------------------------------------------------------------------- overrides


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a union / Optional annotation (itself otherwise)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _annotation_at(root: type[BaseModel], path: list[str]) -> Any | None:
    """The annotation of the field at `path` below `root` (None where unknown)."""
    model: type[BaseModel] | None = root
    annotation = None
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        models = [a for a in _unwrap(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = models[0] if models else None
    return annotation


def _is_text_field(annotation: Any) -> bool:
    options = [a for a in _unwrap(annotation) if a is not type(None)]
    return options == [str]


def parse_override(item: str, root: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], value). The value is read as YAML (numbers, booleans, null,
    [lists], {maps}), except for text fields, which take it verbatim (so model=007 stays '007')
    unless it is quoted."""
    key, sep, raw = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise UserError(f"--set expects KEY=VALUE (for example quota.per_label=500); got '{item}'")
    annotation = _annotation_at(root or GenerateConfig, keys)
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    if annotation is not None and _is_text_field(annotation) and not quoted:
        nullable = type(None) in _unwrap(annotation)
        return keys, None if nullable and raw.strip() in ("", "null", "~", "None") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


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


# ----------------------------------------------------------------------------- error messages


def _suggest(root: type[BaseModel], loc: tuple) -> str:
    parent: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if parent is None or part not in parent.model_fields:
            return ""
        annotation = parent.model_fields[part].annotation
        candidates = [a for a in _unwrap(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        for arg in typing.get_args(annotation):  # list[Label]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                candidates.append(arg)
        parent = candidates[0] if candidates else None
    if parent is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys here: {', '.join(parent.model_fields)}"


_HINTS = {
    ("labels", "too_short"): "list at least two labels, each with a name and a description",
    ("task", "missing"): "name a task (task: sms_spam), give a path to a task YAML, or write it inline",
}


def validation_lines(exc: ValidationError, root: type[BaseModel] = BaseModel) -> list[str]:
    """One '  - key: problem' line per error; cross-field problems each get their own line."""
    lines = []
    for err in exc.errors():
        loc_parts = tuple(err["loc"])
        loc = ".".join(str(p) for p in loc_parts) or "(top level)"
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, ConfigProblems):
            for key, msg in original.problems:
                lines.append(f"  - {'.'.join(p for p in (loc if loc_parts else '', key) if p)}: {msg}")
            continue
        if err["type"] == "extra_forbidden":
            hint = "unknown key; remove it or check its spelling"
            if str(loc_parts[-1]) in {"api_key", "key", "token"}:
                hint = (
                    "unknown key; remove it: API keys are read only from the environment variable "
                    "named by generator.openai.api_key_env"
                )
            elif root is not BaseModel:
                hint += _suggest(root, loc_parts)
            lines.append(f"  - {loc}: {hint}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing; this key is required"
        given = err.get("input")
        shown = "" if isinstance(given, (dict, list)) or err["type"] == "missing" else f" (got {redact(repr(given))})"
        hint = _HINTS.get((str(loc_parts[-1]) if loc_parts else "", err["type"]))
        lines.append(f"  - {loc}: {msg}{shown}" + (f"; {hint}" if hint else ""))
    return lines


def mark_overrides(lines: list[str], overrides: list[str]) -> tuple[list[str], list[str]]:
    """Point each problem that a `--set KEY=VALUE` flag caused at that flag, not at the YAML file.
    Returns the lines and the flags that caused problems."""
    keys = [(item.partition("=")[0].strip(), item) for item in overrides]
    out, used = [], []
    for line in lines:
        loc = line.removeprefix("  - ").split(":", 1)[0]
        hits = [item for key, item in keys if key and (loc == key or loc.startswith(key + "."))]
        if hits:
            line = line.replace(f"  - {loc}:", f"  - {loc} (from --set {shown_flag(hits[-1])}):", 1)
            used += [h for h in hits[-1:] if h not in used]
        out.append(line)
    return out, used


def shown_flag(item: str) -> str:
    """A --set item as a message shows it: secrets masked, on one line."""
    text = redact(item)
    return text if text.isprintable() else repr(text)[1:-1]


def format_problems(lines: list[str], source: str, overrides: list[str] | None = None) -> str:
    """The one message for a config's problems. With `overrides` (the --set items), problems
    they caused name the flag, and so does the heading when they caused them all."""
    count = len(lines)
    if overrides:
        lines, used = mark_overrides(lines, overrides)
        if used and all("(from --set " in line for line in lines):
            source = f"--set {', '.join(shown_flag(u) for u in used)} (on {source})"
    head = f"{source}: {count} problem{'s' if count != 1 else ''} in the configuration:"
    return "\n".join([head, *lines])


def format_validation_error(
    exc: ValidationError, source: str, root: type[BaseModel] = BaseModel, overrides: list[str] | None = None
) -> str:
    return format_problems(validation_lines(exc, root), source, overrides)


def _has_cross_problems(exc: ValidationError, loc: tuple) -> bool:
    return any(
        tuple(err["loc"]) == loc and isinstance((err.get("ctx") or {}).get("error"), ConfigProblems)
        for err in exc.errors()
    )


# ----------------------------------------------------------------------------- loading


def load_generate_config(path: str | Path | None, overrides: list[str] | None = None) -> GenerateConfig:
    """Load a generation config from YAML (None: the embedded default) and apply overrides.
    Raises UserError listing every problem found."""
    cfg_path = Path(path) if path is not None else configs_root() / "experiments" / "default.yaml"
    data = read_yaml(cfg_path)
    parsed = [(parse_override(item), item) for item in overrides or []]
    for (keys, value), _ in parsed:
        if keys == ["task"]:
            data["task"] = value
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
    for (keys, value), item in parsed:
        if keys != ["task"]:
            apply_override(data, keys, value, item)
    try:
        return GenerateConfig.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc, GenerateConfig)
        # Model validators run only when every field is valid: run their checks on the raw data
        # so that one attempt reports everything.
        if isinstance(data.get("task"), dict) and not _has_cross_problems(exc, ("task",)):
            lines += [f"  - task.{key}: {msg}" for key, msg in template_problems(data["task"])]
        if not _has_cross_problems(exc, ()):
            lines += [f"  - {key}: {msg}" for key, msg in runnable_problems(data)]
        source = str(cfg_path) if path is not None else f"{cfg_path} (the embedded default)"
        raise UserError(format_problems(lines, source, overrides)) from None


def load_task(path_or_name: str) -> TaskConfig:
    data = resolve_task(path_or_name, None)
    try:
        return TaskConfig.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc, TaskConfig)
        if not _has_cross_problems(exc, ()):
            lines += [f"  - {key}: {msg}" for key, msg in template_problems(data)]
        raise UserError(format_problems(lines, path_or_name)) from None
