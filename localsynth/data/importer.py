"""`localsynth data import`: a source (file, folder of split files, Hugging Face id) into
canonical train / test frames plus a report of what it found (empty texts, unknown labels,
duplicates, train/test overlap)."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.data.readers import ImportOptions, Part, check_options, gather
from localsynth.data.sources import (
    apply_class_names,
)
from localsynth.errors import UserError

TEXT_NAMES = ("text", "sentence", "content", "review", "headline", "tweet", "message", "sms", "document", "comment", "body")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "emotion", "relation", "y")
MISSING = "\x00missing"  # stands in for a null label when stratifying


def _columns_message(part: Part, opts: ImportOptions, missing: list[str]) -> str:
    columns = part.df.columns
    fixes = []
    for option, col, guesses in (
        ("--text-column", opts.text_column, TEXT_NAMES),
        ("--label-column", opts.label_column, LABEL_NAMES),
    ):
        if col in missing:
            lower = {c.lower(): c for c in columns}
            guess = lower.get(col.lower()) or next((lower[g] for g in guesses if g in lower), None)
            fixes.append(f"{option} {guess}" if guess else f"{option} COLUMN")
    shown = ", ".join(repr(c) for c in columns[:30]) + (" ..." if len(columns) > 30 else "")
    message = (
        f"{part.where}: column(s) {', '.join(repr(c) for c in missing)} not found; it has: {shown}; "
        f"name the right ones with {' and '.join(fixes)}"
    )
    looks_like_data = re.compile(r"^-?\d+(\.\d+)?$|_duplicated_\d+$")
    if opts.header and any(len(c) > 40 or len(c.split()) > 4 or looks_like_data.search(c) for c in columns):
        message += "; if the file has no header row, pass --no-header and use column_1, column_2, ..."
    return message


def _canonical(part: Part, opts: ImportOptions) -> tuple[pl.DataFrame, dict[str, str]]:
    """`text`, `label` (Utf8; label stripped, '' -> null, ClassLabel ints -> names), then the
    other columns; a source column already called text / label is kept as source_text / ...."""
    df, tc, lc = part.df, opts.text_column, opts.label_column
    missing = [c for c in (tc, lc) if c not in df.columns]
    if missing:
        raise UserError(_columns_message(part, opts, missing))
    if df.height == 0:
        raise UserError(f"{part.where} has a header but no rows; point it at a file with labelled rows")
    df = apply_class_names(df, {c: n for c, n in part.class_names.items() if c == lc})
    for col, what in ((tc, "text"), (lc, "label")):
        dtype = df.schema[col]
        if dtype.is_nested() or dtype == pl.Binary:
            hint = " (a multi-label dataset?); keep one label per row first" if what == "label" else ""
            raise UserError(
                f"{part.where}: the {what} column '{col}' holds {dtype} values, not single values{hint}; "
                f"name another column with --{what}-column COLUMN"
            )
    if df.schema[lc].is_float():
        values = df[lc].drop_nulls()
        if values.len() and (values == values.round()).all():
            df = df.with_columns(pl.col(lc).cast(pl.Int64))
    label = pl.col(lc).cast(pl.Utf8).str.strip_chars()
    extras = [c for c in df.columns if c not in (tc, lc)]
    renamed = {}
    for c in extras:
        if c in ("text", "label"):
            new = f"source_{c}"
            while new in df.columns:
                new += "_"
            renamed[c] = new
    df = df.select(
        pl.col(tc).cast(pl.Utf8).alias("text"),
        pl.when(label == "").then(None).otherwise(label).alias("label"),
        *(pl.col(c).alias(renamed.get(c, c)) for c in extras),
    )
    return df, renamed


def _resolved_map(opts: ImportOptions, parts: list[Part], present: set[str]) -> tuple[dict[str, str], list[str]]:
    """The label map, with ClassLabel indices ('0=negative') turned into the names they stand for;
    and the keys that match no label."""
    names = next((p.class_names[opts.label_column] for p in parts if opts.label_column in p.class_names), None)
    mapping = {}
    for old, new in opts.label_map.items():
        if names and old not in names and old.isdigit() and int(old) < len(names):
            old = names[int(old)]
        mapping[old] = new
    return mapping, [k for k in mapping if k not in present]


# ----------------------------------------------------------------------------- checks and counts


def _key() -> pl.Expr:
    return pl.col("text").str.strip_chars()


def _empty() -> pl.Expr:
    return _key().is_null() | (_key() == "")


def _label_counts(df: pl.DataFrame, labels: list[str] | None) -> dict[str, int]:
    counts = {str(k): int(v) for k, v in df["label"].drop_nulls().value_counts().iter_rows()}
    order = [x for x in labels or [] if x in counts] + sorted(x for x in counts if x not in (labels or []))
    return {x: counts[x] for x in order}


def _stats(df: pl.DataFrame, labels: list[str] | None) -> dict[str, Any]:
    counts = _label_counts(df, labels)
    keyed = df.select(_key().alias("k"), "label").filter(pl.col("k").is_not_null() & (pl.col("k") != ""))
    conflicting = keyed.group_by("k").agg(pl.col("label").n_unique()).filter(pl.col("label") > 1).height
    return {
        "rows": df.height,
        "labels": counts,
        "empty_texts": int(df.select(_empty().sum()).item()),
        "missing_labels": int(df["label"].null_count()),
        "unknown_labels": {x: n for x, n in counts.items() if labels is not None and x not in labels},
        "duplicates": keyed.height - keyed["k"].n_unique(),  # rows repeating an earlier text
        "conflicting_duplicates": conflicting,  # texts that appear with more than one label
    }


def _overlap(train: pl.DataFrame, test: pl.DataFrame) -> dict[str, int]:
    """Texts (stripped, non-empty) in both splits, the rows that hold them, and how many of those
    texts carry a different label in the test split."""
    pairs = [d.select(_key().alias("k"), "label").filter(pl.col("k").is_not_null() & (pl.col("k") != "")) for d in (train, test)]
    common = pairs[0].select("k").unique().join(pairs[1].select("k").unique(), on="k")["k"]
    joined = pairs[0].unique().join(pairs[1].unique(), on="k", suffix="_test")
    return {
        "texts": common.len(),
        "train_rows": int(pairs[0]["k"].is_in(common.implode()).sum()),
        "test_rows": int(pairs[1]["k"].is_in(common.implode()).sum()),
        "different_labels": joined.filter(pl.col("label").ne_missing(pl.col("label_test")))["k"].n_unique(),
    }


def _first_texts(df: pl.DataFrame) -> pl.DataFrame:
    """Drops rows whose (stripped) text repeats an earlier one; empty texts are left alone."""
    return df.filter(_empty() | _key().is_first_distinct())


def stratified_split(df: pl.DataFrame, test_size: float, seed: int, where: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A seeded split that keeps each label's share in both parts; rows stay in source order."""
    y = df["label"].fill_null(MISSING).to_list()
    counts = Counter(y)
    few = sorted((x for x, n in counts.items() if n < 2), key=str)
    if few == [MISSING]:  # --keep-empty kept one row without a label: --label-map cannot name it
        raise UserError(
            f"{where} has no test split, and only {counts[MISSING]} row has no label: too few to stratify a "
            f"train/test split (at least 2 of each label); leave out --keep-empty to drop unlabelled rows, fill "
            f"in its label in the source, or give a test set with --test FILE"
        )
    if few:
        shown = ", ".join(f"'{x}' ({counts[x]} row)" for x in few if x != MISSING)
        unlabelled = "; leave out --keep-empty to drop the row without a label" if MISSING in few else ""
        raise UserError(
            f"{where} has no test split, and label(s) {shown} have too few rows to stratify a train/test "
            f"split (at least 2 each); merge them into another label with --label-map OLD=NEW (e.g. "
            f"--label-map '{next(x for x in few if x != MISSING)}=OTHER'), remove them from the source, or give "
            f"a test set with --test FILE{unlabelled}"
        )
    n_test = math.ceil(test_size * len(y))
    if min(n_test, len(y) - n_test) < len(counts):
        raise UserError(
            f"{where}: --test-size {test_size} of {len(y)} rows gives {n_test} test and {len(y) - n_test} "
            f"train rows, but a stratified split needs at least one row of each of the {len(counts)} labels "
            f"on both sides; choose a test size between {len(counts) / len(y):.3g} and "
            f"{1 - len(counts) / len(y):.3g}, or give a test set with --test FILE"
        )
    from sklearn.model_selection import train_test_split

    try:
        train_idx, test_idx = train_test_split(list(range(len(y))), test_size=test_size, random_state=seed, stratify=y)
    except ValueError as exc:
        raise UserError(f"{where}: cannot split it: {exc}; adjust --test-size or give --test FILE") from None
    return df[sorted(train_idx)], df[sorted(test_idx)]


# ----------------------------------------------------------------------------- import


def import_data(opts: ImportOptions) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Read, map, check and split; returns (train, test, report). Writes nothing."""
    check_options(opts)
    train_part, test_part = gather(opts)
    parts = {"source": train_part} if test_part is None else {"train": train_part, "test": test_part}
    frames, renamed = {}, {}
    for role, part in parts.items():
        frames[role], cols = _canonical(part, opts)
        renamed.update(cols)
    present = set().union(*(set(df["label"].drop_nulls().unique().to_list()) for df in frames.values()))
    label_map, unused = _resolved_map(opts, list(parts.values()), present)
    if label_map:
        frames = {r: df.with_columns(pl.col("label").replace(label_map)) for r, df in frames.items()}
    inputs = {role: {"from": parts[role].where, **_stats(df, opts.labels)} for role, df in frames.items()}

    unknown: Counter[str] = Counter()
    for stats in inputs.values():
        unknown.update(stats["unknown_labels"])
    if unknown and not opts.allow_unknown_labels:
        shown = ", ".join(f"'{x}' ({n} rows)" for x, n in unknown.most_common(10)) + (" ..." if len(unknown) > 10 else "")
        first = unknown.most_common(1)[0][0]
        raise UserError(
            f"labels not in task '{opts.task}' ({', '.join(opts.labels or [])}): {shown}; rename them with "
            f"--label-map OLD=NEW (e.g. --label-map '{first}=NEW' with NEW one of the task's labels), or keep them "
            f"with --allow-unknown-labels"
        )

    dropped = {"empty_texts": 0, "missing_labels": 0, "duplicates": 0, "overlap": 0}
    if opts.drop_empty:
        for role, df in frames.items():
            dropped["empty_texts"] += int(df.select(_empty().sum()).item())
            dropped["missing_labels"] += int(df.select(~_empty() & pl.col("label").is_null()).to_series().sum())
            frames[role] = df.filter(~_empty() & pl.col("label").is_not_null())
            if frames[role].height == 0:
                unlabelled = df["label"].null_count() == df.height
                raise UserError(
                    f"{parts[role].where}: no rows left after dropping empty texts and missing labels"
                    + ("; no row has a label (an unlabelled split? name a labelled one with --train-split / "
                       "--test-split NAME)" if unlabelled else "")
                    + "; check --text-column / --label-column, or keep such rows with --keep-empty"
                )

    test_size = 0.2 if opts.test_size is None else opts.test_size
    warnings = []
    if test_part is None:
        df = frames["source"]
        if opts.dedup:
            kept = _first_texts(df)
            dropped["duplicates"] += df.height - kept.height
            df = kept
        train, test = stratified_split(df, test_size, opts.seed, train_part.where)
        split = {"method": "stratified", "test_size": test_size, "seed": opts.seed}
    else:
        train, test = frames["train"], frames["test"]
        if opts.dedup:
            kept = [_first_texts(train), _first_texts(test)]
            dropped["duplicates"] += train.height + test.height - kept[0].height - kept[1].height
            train, test = kept
            in_test = test.select(_key()).to_series().drop_nulls().implode()
            kept_train = train.filter(_empty() | ~_key().is_in(in_test))
            dropped["overlap"] = train.height - kept_train.height
            train = kept_train
            if train.height == 0:
                raise UserError("no train rows left: every train text is also in the test set; use --no-dedup")
        split = {"method": "source", "test_size": None, "seed": opts.seed}
        if opts.test_size is not None:
            warnings.append(f"--test-size {opts.test_size} not used: the source has a test split")

    out = {"train": _stats(train, opts.labels), "test": _stats(test, opts.labels)}
    check_label_sets(out, parts, opts)
    overlap = _overlap(train, test)
    for name, stats in out.items():
        absent = [x for x in opts.labels or [] if x not in stats["labels"]]
        stats["absent_labels"] = absent
        if absent:
            warnings.append(f"{name} has no rows of task label(s) {', '.join(absent)}")
        if stats["duplicates"]:
            warnings.append(f"{name} has {stats['duplicates']} duplicate text(s) ({stats['conflicting_duplicates']} with conflicting labels); --dedup drops them")
    if overlap["texts"]:
        warnings.append(f"{overlap['texts']} text(s) are in both train and test; --dedup drops them from train")
    if unused:
        warnings.append(f"--label-map key(s) {', '.join(unused)} match no label in the data")
    if unknown:
        warnings.append(f"kept labels outside the task: {', '.join(unknown)}")
    unlabelled = {name: stats["missing_labels"] for name, stats in out.items() if stats["missing_labels"]}
    if unlabelled:
        shown = ", ".join(f"{n:,} in {name}" for name, n in unlabelled.items())
        warnings.append(f"kept rows without a label ({shown}) as --keep-empty asked; training cannot use them")
    only = {name: sorted(set(out[name]["labels"]) - set(out[other]["labels"]))
            for name, other in (("train", "test"), ("test", "train"))}
    if test_part is not None and not opts.labels and any(only.values()):
        warnings.append(
            "train and test label sets differ: " + "; ".join(f"only in {name}: {', '.join(v)}" for name, v in only.items() if v)
        )
    report = {
        "source": opts.source,
        "test_source": opts.test,
        "hf_config": opts.hf_config,
        "task": opts.task,
        "task_labels": opts.labels,
        "columns": {
            "text": opts.text_column,
            "label": opts.label_column,
            "extra": [c for c in train.columns if c not in ("text", "label")],
            "renamed": renamed,
        },
        "label_map": label_map,
        "split": split,
        "options": {
            "drop_empty": opts.drop_empty,
            "dedup": opts.dedup,
            "allow_unknown_labels": opts.allow_unknown_labels,
            "format": opts.fmt,
            "header": opts.header,
        },
        "input": inputs,
        "dropped": dropped,
        "splits": out,
        "overlap": overlap,
        "warnings": warnings,
        "files": {"train": "train.parquet", "test": "test.parquet"},
    }
    return train, test, report


def _shown(labels: set[str]) -> str:
    return ", ".join(sorted(labels)[:10]) + (" ..." if len(labels) > 10 else "")


def check_label_sets(splits: dict[str, dict[str, Any]], parts: dict[str, Part], opts: ImportOptions) -> None:
    """Train and test labels with nothing in common: a model trained on one cannot score a
    single test row (most often the two files name their classes differently: 0/1, ham/spam)."""
    train, test = (set(splits[s]["labels"]) for s in ("train", "test"))
    if not train or not test or train & test:
        return
    where = {s: parts[s].where if s in parts else "the source" for s in ("train", "test")}
    raise UserError(
        f"the train labels ({_shown(train)}; {where['train']}) and the test labels ({_shown(test)}; "
        f"{where['test']}) have none in common, so no test row could be scored; rename one side's labels "
        f"with --label-map OLD=NEW (e.g. --label-map '{sorted(test)[0]}={sorted(train)[0]}'), or name the "
        f"right column with --label-column"
    )


def write_import(out: Path, train: pl.DataFrame, test: pl.DataFrame, report: dict[str, Any]) -> None:
    """train.parquet and test.parquet, then import.json (last: its presence means complete)."""
    from localsynth.io import write_json_atomic, write_parquet_atomic

    marker = out / "import.json"
    marker.unlink(missing_ok=True)
    write_parquet_atomic(train, out / "train.parquet")
    write_parquet_atomic(test, out / "test.parquet")
    write_json_atomic(marker, report)
