"""The config base every stage shares: the strict pydantic base, one loader for any config
model (`load`), YAML reading, `--set a.b=c` overrides, and the one message for a config's
problems.

Defaults live in the models and nowhere else, each with a description (a test checks every
field has one). Unknown keys are errors that name the key (with the nearest known key), and
every problem in a file is reported at once: field errors and the cross-field checks together.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from localsynth.errors import UserError
from localsynth.secrets import redact

M = TypeVar("M", bound=BaseModel)

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigProblems(ValueError):
    """Several cross-field problems found by one model validator, each with its own key."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key}: {msg}" if key else msg for key, msg in problems))
        self.problems = problems


# YAML 1.1 reads a bare `off` as false: every `progress` setting takes it back as "off".
Progress = Annotated[
    Literal["auto", "bar", "log", "off"], BeforeValidator(lambda value: "off" if value is False else value)
]




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


def parse_override(item: str, root: type[BaseModel]) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], value). The value is read as YAML (numbers, booleans, null,
    [lists], {maps}), except for text fields, which take it verbatim (so model=007 stays '007')
    unless it is quoted."""
    key, sep, raw = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise UserError(f"--set expects KEY=VALUE (for example quota.per_label=500); got '{item}'")
    annotation = _annotation_at(root, keys)
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


def has_cross_problems(exc: ValidationError, loc: tuple) -> bool:
    """Whether the model validator at `loc` ran and reported its problems already."""
    return any(
        tuple(err["loc"]) == loc and isinstance((err.get("ctx") or {}).get("error"), ConfigProblems)
        for err in exc.errors()
    )



# ----------------------------------------------------------------------------- loading


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def load(
    model: type[M],
    path: str | Path | None,
    overrides: list[str] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    what: str = "config file",
    source: str | None = None,
    prefix: str = "",
    resolve: Callable[[dict[str, Any]], None] | None = None,
    more_problems: Callable[[dict[str, Any], ValidationError], list[tuple[str, str]]] | None = None,
) -> M:
    """The one way a config is read: the YAML file at `path` (if any), `base` over it (settings
    from command-line flags or an enclosing config), then the `--set` overrides; validated
    against `model`, with every problem in one UserError.

    Overrides of a whole top-level key apply first, then `resolve` (which may expand a reference
    such as `task: NAME` in place), then the overrides inside sections, so `--set task=imdb
    --set task.max_words=40` edits the task it picked. `more_problems` runs the model's
    cross-field checks on the raw mapping when field validation failed (pydantic runs model
    validators only on valid fields; `has_cross_problems` tells whether they ran), so one attempt
    reports everything. `prefix` is where the
    model sits in a larger config (`slurm.`), for the message."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path), what)
    data = merge(data, base or {})
    source = source or (str(path) if path is not None else "command line")
    parsed = [(parse_override(item, model), item) for item in overrides or []]
    whole = [p for p in parsed if len(p[0][0]) == 1]
    for (keys, value), item in whole:
        apply_override(data, keys, value, item)
    if resolve is not None:
        resolve(data)
    for (keys, value), item in parsed:
        if len(keys) > 1:
            apply_override(data, keys, value, item)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc, model)
        if more_problems is not None:
            lines += [f"  - {key}: {msg}" for key, msg in more_problems(data, exc)]
        if prefix:
            lines = [line.replace("  - ", f"  - {prefix}", 1) for line in lines]
        shown = [f"{prefix}{item}" for item in overrides or []]
        raise UserError(format_problems(lines, source, shown)) from None
