"""The `localsynth` command: one module per subcommand; parse -> load config -> call the stage.

Errors: bad input exits 2 with one message (no traceback unless --verbose); any other failure
exits 1.
"""

from __future__ import annotations

import sys

import click
import typer

from localsynth.errors import UserError

app = typer.Typer(
    name="localsynth",
    help="Synthetic training data for text classifiers: generate, train, and measure it honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug details."),
) -> None:
    """localsynth: LLM-written training data for text classifiers (Li et al., EMNLP 2023)."""


def _register() -> None:
    from localsynth.cli import generate, tasks

    app.command("generate")(generate.generate)
    app.command("tasks")(tasks.tasks)


_register()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args
    try:
        app(args=args, prog_name="localsynth", standalone_mode=False)
    except UserError as exc:
        if verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)", file=sys.stderr)
        sys.exit(1)
