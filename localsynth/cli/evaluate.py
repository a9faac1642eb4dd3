"""`localsynth evaluate`: a trained classifier on a real test split -> metrics, predictions, plot."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    model: Path = typer.Argument(
        ..., help="A training output folder (model/ + training.json) or a folder saved with save_pretrained."
    ),
    test: Path = typer.Option(..., "--test", help="Real test data: a CSV, TSV, JSONL or Parquet file."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, predictions.parquet, confusion.png."),
    text_column: str = typer.Option("text", "--text-column", help="The test file's text column."),
    label_column: str = typer.Option("label", "--label-column", help="The test file's label column."),
    label_map: list[str] = typer.Option(
        [], "--label-map", help="Rename a test label to the model's: --label-map 0=ham (repeatable)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts per forward pass."),
    max_length: int = typer.Option(256, "--max-length", min=1, help="Tokens per text; longer texts are truncated."),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when there is one), cpu, cuda or cuda:N."),
) -> None:
    """Evaluate a classifier on real test data: Macro-F1, accuracy, per-class scores, confusion matrix."""
    from localsynth.evaluate import evaluate_model, file_sha256, load_test, parse_label_map, summary
    from localsynth.io import output_dir

    mapping = parse_label_map(label_map)
    output_dir(out, "--out")
    test_df = load_test(test, text_column, label_column, mapping)
    source = {
        "path": str(test.resolve()),
        "sha256": file_sha256(test),
        "text_column": text_column,
        "label_column": label_column,
        "label_map": mapping,
        "rows": test_df.height,
    }
    metrics = evaluate_model(
        model, test_df, out, batch_size=batch_size, max_length=max_length, device=device, test_source=source
    )
    typer.echo(summary(metrics, out))
