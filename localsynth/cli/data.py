"""`localsynth data import`: real labelled data -> canonical train / test Parquet and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from localsynth.cli.groups import command_group

app = command_group("Real labelled data: import it into canonical Parquet.")


@app.callback()
def data() -> None:
    """Real labelled data: import it into canonical Parquet."""


@app.command("import")
def import_(
    source: str = typer.Argument(
        ...,
        help="A CSV / TSV / JSONL / Parquet file, a folder with train and test files, or a Hugging Face dataset id.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for train.parquet, test.parquet and import.json."
    ),
    task: str | None = typer.Option(
        None, "--task", help="Check labels against this task's label set."
    ),
    test: str | None = typer.Option(
        None, "--test", help="A separate test set (file, folder or dataset id)."
    ),
    text_column: str = typer.Option(
        "text", "--text-column", help="The source column holding the text."
    ),
    label_column: str = typer.Option(
        "label", "--label-column", help="The source column holding the label."
    ),
    label_map: list[str] = typer.Option(
        [], "--label-map", help="Rename a label: OLD=NEW, e.g. 0=negative (repeatable, or a=x,b=y)."
    ),
    hf_config: str | None = typer.Option(
        None, "--hf-config", help="The Hugging Face dataset's configuration."
    ),
    train_split: str = typer.Option(
        "train", "--train-split", help="The split (or file name in a folder) to train on."
    ),
    test_split: str | None = typer.Option(
        None,
        "--test-split",
        help="The split (or file name) to test on. Default: test, when there is one.",
    ),
    test_size: float | None = typer.Option(
        None,
        "--test-size",
        help="Share held out for testing when the source has no test split. Default: 0.2.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the stratified split."),
    drop_empty: bool = typer.Option(
        True,
        "--drop-empty/--keep-empty",
        help="Drop rows with an empty text or no label (counted either way).",
    ),
    dedup: bool = typer.Option(
        False,
        "--dedup/--no-dedup",
        help="Drop repeated texts within a split (first kept) and train texts that are also in test. "
        "Default: only count them.",
    ),
    allow_unknown_labels: bool = typer.Option(
        False,
        "--allow-unknown-labels",
        help="Keep labels outside the task's label set instead of failing.",
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="csv, tsv, jsonl, json or parquet, when the name does not tell."
    ),
    header: bool = typer.Option(
        True, "--header/--no-header", help="--no-header: columns are column_1, column_2, ..."
    ),
) -> None:
    """Import real labelled data into OUT/train.parquet and OUT/test.parquet (text, label, other
    columns kept) with a report of empty texts, unknown labels, duplicates and train/test overlap."""
    from localsynth.cli.options import parse_label_map
    from localsynth.data.importer import ImportOptions, import_data, write_import
    from localsynth.io import output_dir
    from localsynth.tasks import load_task

    output_dir(out, "--out")  # a file or a read-only folder: refused before the work
    labels = load_task(task).label_names if task else None
    opts = ImportOptions(
        source=source,
        test=test,
        text_column=text_column,
        label_column=label_column,
        label_map=parse_label_map(
            label_map, "OLD=NEW", "0=negative",
            ": rows without a label are dropped, or kept as they are with --keep-empty",
        ),
        hf_config=hf_config,
        train_split=train_split,
        test_split=test_split,
        test_size=test_size,
        seed=seed,
        drop_empty=drop_empty,
        dedup=dedup,
        task=task,
        labels=labels,
        allow_unknown_labels=allow_unknown_labels,
        fmt=fmt.lower() if fmt else None,
        header=header,
    )
    train, test_df, report = import_data(opts)
    write_import(out, train, test_df, report)
    summary(report, out)


def summary(report: dict[str, Any], out: Path) -> None:
    """Label counts per split, then the checks, then warnings."""
    from rich.console import Console
    from rich.table import Table

    splits = report["splits"]
    method = (
        "split from the source"
        if report["split"]["method"] == "source"
        else (
            f"stratified {1 - report['split']['test_size']:.0%}/{report['split']['test_size']:.0%} split, "
            f"seed {report['split']['seed']}"
        )
    )
    console = Console()
    console.print(f"imported {report['source']} -> {out} ({method})", highlight=False)
    table = Table()
    table.add_column("")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    labels = list(dict.fromkeys([*splits["train"]["labels"], *splits["test"]["labels"]]))
    for label in labels:
        table.add_row(label, *(f"{splits[s]['labels'].get(label, 0):,}" for s in ("train", "test")))
    table.add_section()
    table.add_row("rows", *(f"{splits[s]['rows']:,}" for s in ("train", "test")))
    table.add_row("duplicate texts", *(f"{splits[s]['duplicates']:,}" for s in ("train", "test")))
    table.add_row("empty texts", *(f"{splits[s]['empty_texts']:,}" for s in ("train", "test")))
    console.print(table)
    overlap, dropped = report["overlap"], report["dropped"]
    console.print(
        f"train/test overlap: {overlap['texts']:,} texts ({overlap['train_rows']:,} train rows, "
        f"{overlap['test_rows']:,} test rows, {overlap['different_labels']:,} with a different label)",
        highlight=False,
    )
    gone = ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in dropped.items() if n)
    if gone:
        console.print(f"dropped: {gone}", highlight=False)
    for warning in report["warnings"]:
        console.print(f"warning: {warning}", highlight=False)
