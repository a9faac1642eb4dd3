"""Options that several commands share, declared once (typer's `Annotated` form); their
defaults come from the settings models, never from here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from localsynth.errors import UserError

SetOption = Annotated[
    list[str], typer.Option("--set", help="Override a config key: --set KEY=VALUE, a dotted key (repeatable).")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (a GPU when there is one), cpu, cuda or cuda:N.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Texts per forward pass.")]
MaxLengthOption = Annotated[int, typer.Option("--max-length", min=1, help="Tokens per text; longer texts are truncated.")]
TextColumnOption = Annotated[str, typer.Option("--text-column", help="The column holding the text.")]
SiteOption = Annotated[
    Path | None, typer.Option("--site", help="YAML of SLURM settings (partition, account, time, gpus, setup, ...).")
]


def value_options(command) -> set[str]:
    """Every option of `command` and its sub-commands that takes a value (so `--set -v` is a
    value, not the verbose flag), read from the command tree rather than kept by hand."""
    names: set[str] = set()
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") == "option" and not getattr(param, "is_flag", False) \
                and not getattr(param, "count", False):
            names.update(param.opts)
    for sub in (getattr(command, "commands", None) or {}).values():
        names |= value_options(sub)
    return names


def parse_label_map(items: list[str], form: str, example: str, empty_label: str = "") -> dict[str, str]:
    """`--label-map` items `old=new` (also `a=x,b=y` in one item) -> {old: new}; `form`,
    `example` and `empty_label` (what happens to rows without a label) word the message for the
    command at hand."""
    mapping: dict[str, str] = {}
    for item in items:
        pieces = item.split(",") if all("=" in p for p in item.split(",")) else [item]
        for piece in pieces:
            old, sep, new = (s.strip() for s in piece.partition("="))
            if not sep or not old or not new:
                empty = f" (an empty label cell has no name to map{empty_label})" if sep and not old else ""
                raise UserError(f"--label-map expects {form} (for example --label-map {example}); got '{item}'{empty}")
            if mapping.get(old, new) != new:
                raise UserError(f"--label-map maps '{old}' twice ({mapping[old]}, {new}); keep one of them")
            mapping[old] = new
    return mapping
