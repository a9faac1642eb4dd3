"""Command groups (`localsynth data ...`, `analyze ...`, `slurm ...`) built one way."""

from __future__ import annotations

import typer


def command_group(help: str) -> typer.Typer:
    """A sub-command group with the root's settings: plain help text, no pretty tracebacks
    (errors are reported by `localsynth.cli.main`)."""
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)
