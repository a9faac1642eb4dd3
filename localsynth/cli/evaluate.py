"""`localsynth evaluate`: a trained classifier on a real test split -> metrics, predictions, plot."""

from __future__ import annotations

from pathlib import Path

import typer

from localsynth.cli.options import BatchSizeOption, DeviceOption, MaxLengthOption, TextColumnOption
from localsynth.training.config import EVAL_DEFAULTS


def evaluate(
    model: Path = typer.Argument(
        ..., help="A training output folder (model/ + training.json) or a folder saved with save_pretrained."
    ),
    test: Path = typer.Option(..., "--test", help="Real test data: a CSV, TSV, JSONL or Parquet file."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, predictions.parquet, confusion.png."),
    text_column: TextColumnOption = "text",
    label_column: str = typer.Option("label", "--label-column", help="The test file's label column."),
    label_map: list[str] = typer.Option(
        [], "--label-map", help="Rename a test label to the model's: --label-map 0=ham (repeatable)."
    ),
    batch_size: BatchSizeOption = EVAL_DEFAULTS.batch_size,
    max_length: MaxLengthOption = EVAL_DEFAULTS.max_length,
    device: DeviceOption = EVAL_DEFAULTS.device,
) -> None:
    """Evaluate a classifier on real test data: Macro-F1, accuracy, per-class scores, confusion matrix."""
    from localsynth.cli.options import parse_label_map
    from localsynth.io import output_dir
    from localsynth.training.evaluate import evaluate_model, file_sha256, load_test, summary

    mapping = parse_label_map(label_map, "TEST_LABEL=MODEL_LABEL", "0=ham")
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
