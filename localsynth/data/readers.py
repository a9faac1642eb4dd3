"""Reading what `localsynth data import` is pointed at: a file, a folder of split files, or a
Hugging Face dataset id, as raw frames (`Part`s) with where they came from."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.data.sources import (
    FORMATS,
    file_kind,
    parquet_class_names,
    read_table,
)
from localsynth.errors import UserError, require

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class ImportOptions:
    """What `localsynth data import` was asked to do: the CLI options, parsed."""

    source: str
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] = field(default_factory=dict)
    hf_config: str | None = None
    train_split: str = "train"
    test_split: str | None = None  # None: "test" when the source has one, else a stratified split
    test_size: float | None = None  # None: 0.2
    seed: int = 0
    drop_empty: bool = True
    dedup: bool = False
    task: str | None = None
    labels: list[str] | None = None  # the task's label set; None: any labels
    allow_unknown_labels: bool = False
    fmt: str | None = None
    header: bool = True


@dataclass
class Part:
    """One input split as read: the raw frame, where it came from, its ClassLabel names."""

    df: pl.DataFrame
    where: str
    class_names: dict[str, list[str]] = field(default_factory=dict)


def check_options(opts: ImportOptions) -> None:
    if opts.test_size is not None and not 0 < opts.test_size < 1:
        raise UserError(
            f"--test-size must be a fraction between 0 and 1 (the share of rows held out for testing); "
            f"got {opts.test_size}; for example --test-size 0.2"
        )
    if not 0 <= opts.seed < 2**32:
        raise UserError(f"--seed must be a whole number from 0 to {2**32 - 1}; got {opts.seed}")
    if opts.fmt is not None and opts.fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got '{opts.fmt}'")
    if opts.text_column == opts.label_column:
        raise UserError(
            f"--text-column and --label-column both name '{opts.text_column}'; the text and the label "
            f"must be two different columns"
        )


# ----------------------------------------------------------------------------- reading the inputs


def _locate(source: str, flag: str, fmt: str | None) -> tuple[str, Any]:
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return "folder", path
    if path.is_file():
        return "file", path
    if not fmt and file_kind(path) is None and HF_ID.match(source):
        return "hf", source
    raise UserError(
        f"{flag}: file not found: {path}; check the path ({flag} is a CSV / TSV / JSONL / Parquet file, "
        f"a folder with train / test files, or a Hugging Face dataset id)"
    )


def _read_file(path: Path, flag: str, opts: ImportOptions) -> Part:
    if file_kind(path, opts.fmt) is None:
        raise UserError(
            f"{flag}: cannot tell the format of {path} from its name (CSV, TSV, JSONL, JSON or Parquet, "
            f"optionally .gz); if it is one of them, name it with --format {'|'.join(FORMATS)}; "
            f"otherwise save it as CSV or Parquet"
        )
    return Part(read_table(path, flag, opts.fmt, opts.header), str(path), parquet_class_names(path))


def _split_files(folder: Path, split: str) -> list[Path]:
    """`split.csv` (any supported suffix), `split-00000-of-00002.parquet` shards, in the folder,
    its `data/` subfolder (the hub's layout) or a subfolder named after the split."""
    found = []
    for d in (folder, folder / "data", folder / split):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            stem = p.name.split(".")[0]
            named = stem == split or stem.startswith(f"{split}-") or (d != folder and d.name == split)
            if named and p.is_file() and not p.name.startswith(".") and file_kind(p) and p not in found:
                found.append(p)
    return found


def _read_folder(folder: Path, split: str, flag: str, opts: ImportOptions, option: str, required: bool) -> Part | None:
    files = _split_files(folder, split)
    if not files:
        if not required:
            return None
        shown = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        listing = ", ".join(shown[:20]) + (" ..." if len(shown) > 20 else "")
        raise UserError(
            f"{flag}: no '{split}' file in the folder {folder} (looked for {split}.csv / .tsv / .jsonl / "
            f".parquet and {split}-*.parquet shards); it has: {listing or 'nothing'}; give the file's "
            f"path instead, or name the split with {option} NAME"
        )
    kinds = sorted({str(file_kind(p)) for p in files})
    if len(kinds) > 1:
        raise UserError(
            f"{flag}: the folder {folder} has '{split}' files in several formats ({', '.join(p.name for p in files)}); "
            f"give the path of the one to use"
        )
    parts = [_read_file(p, flag, opts) for p in files]
    if len(parts) == 1:
        return parts[0]
    try:
        df = pl.concat([p.df for p in parts], how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{flag}: the '{split}' files in {folder} do not share a schema ({exc}); import one file") from None
    return Part(df, f"{folder} ({len(files)} '{split}' files)", parts[0].class_names)


def _hub_message(name: str, config: str | None, flag: str, exc: Exception) -> str:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    flags = [os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")]
    offline = any(v in ("1", "true", "yes", "on") for v in flags)
    why = f"'{name}' is not a file or folder here, so it was read as a Hugging Face dataset id"
    if offline or isinstance(exc, (ConnectionError, TimeoutError)) or "reach" in detail or "offline" in detail.lower():
        state = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else "the hub is unreachable"
        args = f"'{name}'" + (f", '{config}'" if config else "")
        return (
            f"{flag}: cannot load the Hugging Face dataset '{name}': {state} and it is not in the local "
            f"cache ({why}). Download it on a machine with hub access: python -c \"from datasets import "
            f"load_dataset; d = load_dataset({args}); [d[s].to_parquet(f'{{s}}.parquet') for s in d]\"; "
            f"copy the .parquet files into a folder here and import that instead: localsynth data import "
            f"FOLDER --out DIR (or: localsynth data import train.parquet --test test.parquet --out DIR)"
        )
    if "config" in detail.lower():
        return f"{flag}: cannot load the Hugging Face dataset '{name}': {detail}; pass --hf-config NAME"
    return (
        f"{flag}: cannot load the Hugging Face dataset '{name}' ({why}): {type(exc).__name__}: {detail}; "
        f"check the id and --hf-config, or give the path of a local file"
    )


def _load_hub(name: str, opts: ImportOptions, flag: str) -> Any:
    datasets = require("datasets")
    try:
        return datasets.load_dataset(name, opts.hf_config)
    except Exception as exc:  # the hub client raises many types
        raise UserError(_hub_message(name, opts.hf_config, flag, exc)) from None


def _hub_part(dsd: Any, name: str, split: str, flag: str, option: str, config: str | None) -> Part:
    if split not in dsd:
        raise UserError(
            f"{flag}: the Hugging Face dataset '{name}' has no split '{split}'; its splits: "
            f"{', '.join(dsd)}; name one with {option} NAME"
        )
    ds = dsd[split]
    names = {c: [str(n) for n in f.names] for c, f in ds.features.items() if type(f).__name__ == "ClassLabel"}
    where = f"{name}{f' ({config})' if config else ''} split '{split}'"
    return Part(ds.to_polars(), where, names)


def gather(opts: ImportOptions) -> tuple[Part, Part | None]:
    """The train input and the test input (None: split the train input)."""
    test_split = opts.test_split or "test"
    kind, loc = _locate(opts.source, "SOURCE", opts.fmt)
    test: Part | None = None
    if kind == "file":
        train = _read_file(loc, "SOURCE", opts)
    elif kind == "folder":
        train = _read_folder(loc, opts.train_split, "SOURCE", opts, "--train-split", required=True)
        if not opts.test:
            test = _read_folder(loc, test_split, "SOURCE", opts, "--test-split", required=bool(opts.test_split))
    else:
        dsd = _load_hub(loc, opts, "SOURCE")
        train = _hub_part(dsd, loc, opts.train_split, "SOURCE", "--train-split", opts.hf_config)
        if not opts.test and (opts.test_split or test_split in dsd):
            test = _hub_part(dsd, loc, test_split, "SOURCE", "--test-split", opts.hf_config)
    if opts.test:
        kind, loc = _locate(opts.test, "--test", opts.fmt)
        if kind == "file":
            test = _read_file(loc, "--test", opts)
        elif kind == "folder":
            test = _read_folder(loc, test_split, "--test", opts, "--test-split", required=True)
        else:
            test = _hub_part(_load_hub(loc, opts, "--test"), loc, test_split, "--test", "--test-split", opts.hf_config)
    return train, test  # type: ignore[return-value]


# ----------------------------------------------------------------------------- canonical frames


