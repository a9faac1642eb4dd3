"""The `localsynth` command: one module per subcommand; parse -> load config -> call the stage.

Errors: bad input exits 2 with one message (no traceback unless --verbose); any other failure
exits 1. `--verbose` is accepted anywhere on the command line, before or after the subcommand.
Everything printed here passes through `redact`: a key typed on the command line or into a
config is never echoed back.
"""

from __future__ import annotations

import sys
import traceback

import typer

from localsynth.errors import UserError
from localsynth.secrets import redact

app = typer.Typer(
    name="localsynth",
    help="Synthetic training data for text classifiers: generate, train, and measure it honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

VERBOSE_FLAGS = ("--verbose", "-v")


@app.callback()
def root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show tracebacks and debug details (accepted anywhere on the line)."
    ),
) -> None:
    """localsynth: LLM-written training data for text classifiers (Li et al., EMNLP 2023)."""


def _register() -> None:
    """Commands in the order of the work: tasks and models, generate, import real data, audit,
    train, evaluate, analyses, the whole study, and SLURM jobs of any of them."""
    from localsynth.cli import (
        analyze,
        audit,
        data,
        evaluate,
        experiment,
        generate,
        models,
        slurm,
        tasks,
        train,
    )

    app.command("tasks")(tasks.tasks)
    app.add_typer(models.app, name="models")
    app.command("generate")(generate.generate)
    app.add_typer(data.app, name="data")
    app.command("audit")(audit.audit)
    app.command("train")(train.train)
    app.command("evaluate")(evaluate.evaluate)
    app.add_typer(analyze.app, name="analyze")
    app.command("experiment")(experiment.experiment)
    app.add_typer(slurm.app, name="slurm")


_register()


def _cli_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts) of the click that typer uses: recent typer releases vendor
    their own copy of click, whose exceptions are not `click.ClickException`."""
    usage: list[type] = []
    exits: list[type] = []
    aborts: list[type] = []
    try:
        from typer import exceptions as tex

        usage += [c for c in (getattr(tex, "TyperException", None),) if c]
        exits += [c for c in (getattr(tex, "Exit", None),) if c]
        aborts += [c for c in (getattr(tex, "Abort", None),) if c]
    except ImportError:  # older typer: plain click
        pass
    try:
        import click

        usage.append(click.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(usage), tuple(exits), tuple(aborts)


def split_verbose(args: list[str]) -> tuple[list[str], bool]:
    """Remove --verbose / -v wherever it stands (not as the value of an option)."""
    from typer.main import get_command

    from localsynth.cli.options import value_options

    takes_value = value_options(get_command(app)) if any(a in VERBOSE_FLAGS for a in args) else set()
    out, verbose = [], False
    for i, arg in enumerate(args):
        if arg == "--":
            out += args[i:]
            break
        if arg in VERBOSE_FLAGS and not (out and out[-1] in takes_value):
            verbose = True
            continue
        out.append(arg)
    return out, verbose


def _traceback() -> None:
    print(redact(traceback.format_exc()), end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args, verbose = split_verbose(sys.argv[1:] if argv is None else list(argv))
    if verbose:
        args = ["--verbose", *args]
    usage_errors, exits, aborts = _cli_exceptions()
    try:
        code = app(args=args, prog_name="localsynth", standalone_mode=False)
    except UserError as exc:
        if verbose:
            _traceback()
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except exits as exc:
        sys.exit(exc.exit_code)
    except usage_errors as exc:  # bad command line: click's usage message (it may quote an argument)
        show = getattr(exc, "show", None)
        if callable(show):
            import io

            buffer = io.StringIO()
            show(file=buffer)
            sys.stderr.write(redact(buffer.getvalue()))
        else:
            print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except aborts:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        from localsynth.io import os_error_message

        message = os_error_message(exc, "output folder (--out, --run-dir, out_dir or run_dir)")
        if verbose:
            _traceback()
        if message is None:  # a runtime failure (a full disk, a lost mount): exit 1
            if not verbose:
                print(f"error: {type(exc).__name__}: {redact(str(exc))} (run with --verbose for the traceback)",
                      file=sys.stderr)
            sys.exit(1)
        print(f"error: {redact(message)}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except Exception as exc:
        if verbose:
            _traceback()
            sys.exit(1)
        print(f"error: {type(exc).__name__}: {redact(str(exc))} (run with --verbose for the traceback)", file=sys.stderr)
        sys.exit(1)
    # Without standalone mode, typer turns Ctrl-C into a returned 130 and typer.Exit(n) into n.
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == 130:
            print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(code)
