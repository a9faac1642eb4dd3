"""`localsynth models`: the models that ship with localsynth, and the folder behind a name."""

from __future__ import annotations

import typer

from localsynth.cli.groups import command_group

app = command_group("Packaged and GGUF models: list them, or print the local folder a name resolves to.")
app.info.no_args_is_help = False
app.info.invoke_without_command = True


@app.callback()
def models(ctx: typer.Context) -> None:
    """List the packaged models: name, source package, licence, size and cache state."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from localsynth.backends.models import model_table

    table = Table("name", "source", "licence", "size", "state", "description")
    for row in model_table():
        table.add_row(*row.values())
    console = Console()
    console.width = max(console.width, 160)  # the cache paths are long; wrapping them helps nobody
    console.print(table)


@app.command("path")
def path(
    model: str = typer.Argument(..., help="A packaged name, a .gguf file, tiny-random or a model folder."),
) -> None:
    """Print the local folder that MODEL resolves to, building it first if needed (a GGUF is
    dequantized once). Useful for `vllm serve "$(localsynth models path NAME)"`."""
    from localsynth.backends.models import resolve_model

    typer.echo(resolve_model(model, "MODEL"))
