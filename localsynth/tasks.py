"""The task model: labels, prompt templates, styles, few-shot and real-data sources, and its
place in the paper's subjectivity ranking; and where task files are found (`task: NAME`).

Every stage reads tasks, so this module sits beside the shared config base."""

from __future__ import annotations

import difflib
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from localsynth.config import ConfigProblems, Strict, has_cross_problems, load, read_yaml
from localsynth.errors import UserError


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



def load_task(path_or_name: str) -> TaskConfig:
    """A task by name (configs/tasks/NAME.yaml) or by path, validated; every problem at once."""
    return load(
        TaskConfig, None, base=resolve_task(path_or_name, None), source=path_or_name,
        more_problems=lambda data, exc: [] if has_cross_problems(exc, ()) else template_problems(data),
    )
