"""`localsynth data import`: real labelled data -> canonical train / test Parquet + a report.

Every row here is invented in the test. The real datasets are read only from the folder named by
LOCALSYNTH_REAL_DATA (the slow test at the end), never copied into the repository."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import polars as pl
import pytest
from helpers import REAL_DATA, assert_user_error, modules_after, run_cli

# ----------------------------------------------------------------------------- helpers


def messages(counts: dict[str, int]) -> list[tuple[str, str]]:
    """Invented (text, label) rows: `counts[label]` distinct texts per label."""
    return [
        (f"{label} message number {i} about topic {i * 7 % 11}", label)
        for label, n in counts.items()
        for i in range(n)
    ]


def write_csv(path: Path, rows, header=("text", "label"), sep=",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def data_import(tmp_path: Path, cli_env, *args: str, out: str = "out"):
    """Runs the real CLI in a fresh process; returns (result, out folder)."""
    target = tmp_path / out
    return run_cli("data", "import", *args, "--out", str(target), env=cli_env), target


def imported(tmp_path: Path, *args: str, out: str = "out") -> tuple[str, Path]:
    """The same command line through the CLI's `main` in this process (no start-up cost per
    call); returns (what it printed, out folder)."""
    from localsynth.cli import main

    target = tmp_path / out
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            main(["data", "import", *args, "--out", str(target)])
            code = 0
        except SystemExit as exc:
            code = exc.code
    assert code == 0, stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    return stdout.getvalue(), target


def outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    report = json.loads((out / "import.json").read_text(encoding="utf-8"))
    return pl.read_parquet(out / "train.parquet"), pl.read_parquet(out / "test.parquet"), report


def ok(result) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def assert_nothing_written(out: Path) -> None:
    left = [p.name for p in out.rglob("*")] if out.exists() else []
    assert not left, left


SPAM = {"ham": 100, "spam": 25}

# ----------------------------------------------------------------------------- splits


def test_stratified_split_keeps_label_shares(tmp_path, cli_env):
    source = write_csv(tmp_path / "all.csv", messages(SPAM))
    result, out = data_import(tmp_path, cli_env, str(source), "--task", "sms_spam", "--seed", "3")
    ok(result)
    train, test, report = outputs(out)
    assert train.columns == ["text", "label"] and train.schema["label"] == pl.Utf8
    assert dict(test["label"].value_counts().iter_rows()) == {"ham": 20, "spam": 5}
    assert dict(train["label"].value_counts().iter_rows()) == {"ham": 80, "spam": 20}
    assert report["split"] == {"method": "stratified", "test_size": 0.2, "seed": 3}
    assert report["splits"]["train"]["labels"] == {"ham": 80, "spam": 20}
    assert report["overlap"]["texts"] == 0
    # every row lands in exactly one split, and each split keeps the source order
    source_order = [t for t, _ in messages(SPAM)]
    assert sorted(train["text"].to_list() + test["text"].to_list()) == sorted(source_order)
    assert train["text"].to_list() == [t for t in source_order if t in set(train["text"])]
    assert "ham" in result.stdout and "80" in result.stdout and "overlap" in result.stdout


def test_split_is_reproducible_and_follows_the_seed(tmp_path):
    source = write_csv(tmp_path / "all.csv", messages(SPAM))
    tests = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        printed, out = imported(
            tmp_path, str(source), "--seed", seed, "--test-size", "0.3", out=name
        )
        tests.append(outputs(out)[1]["text"].to_list())
    assert tests[0] == tests[1]
    assert tests[0] != tests[2]
    assert len(tests[0]) == 38  # ceil(0.3 * 125)


def test_separate_test_file(tmp_path):
    train_file = write_csv(tmp_path / "tr.csv", messages({"ham": 6, "spam": 4}))
    test_file = write_csv(
        tmp_path / "te.csv", [(f"held out text {i}", "ham" if i % 2 else "spam") for i in range(5)]
    )
    printed, out = imported(
        tmp_path, str(train_file), "--test", str(test_file), "--test-size", "0.5"
    )
    train, test, report = outputs(out)
    assert (train.height, test.height) == (10, 5)
    assert test["text"].to_list() == [f"held out text {i}" for i in range(5)]
    assert report["split"]["method"] == "source"
    assert report["test_source"] == str(test_file)
    assert any("--test-size 0.5 not used" in w for w in report["warnings"])


def test_folder_with_train_and_test_files(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_csv(folder / "train.csv", messages({"ham": 8, "spam": 3}))
    write_csv(folder / "test.csv", [("a test message", "spam"), ("another one", "ham")])
    write_csv(folder / "notes.csv", [("ignored", "x")])
    printed, out = imported(tmp_path, str(folder), "--task", "sms_spam")
    train, test, report = outputs(out)
    assert (train.height, test.height) == (11, 2)
    assert report["split"]["method"] == "source"
    assert report["input"]["train"]["from"] == str(folder / "train.csv")


def test_folder_of_hub_shards_without_test_is_split(tmp_path):
    shards = tmp_path / "ds" / "data"
    shards.mkdir(parents=True)
    rows = messages({"ham": 10, "spam": 10})
    for i, chunk in enumerate((rows[::2], rows[1::2])):
        frame = pl.DataFrame({"text": [t for t, _ in chunk], "label": [x for _, x in chunk]})
        frame.write_parquet(shards / f"train-0000{i}-of-00002.parquet")
    printed, out = imported(tmp_path, str(tmp_path / "ds"), "--test-size", "0.25")
    train, test, report = outputs(out)
    assert (train.height, test.height) == (15, 5)
    assert report["split"]["method"] == "stratified"


# ----------------------------------------------------------------------------- formats and mapping


def _same_rows(path: Path, fmt: str) -> Path:
    rows = messages({"ham": 6, "spam": 4})
    if fmt in ("csv", "semicolon", "bom"):
        write_csv(path, rows, sep=";" if fmt == "semicolon" else ",")
        if fmt == "bom":
            path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    elif fmt == "tsv":
        write_csv(path, rows, sep="\t")
    elif fmt in ("jsonl", "json-lines-in-.json"):
        write_jsonl(path, [{"text": t, "label": x} for t, x in rows])
    elif fmt == "json":
        path.write_text(json.dumps([{"text": t, "label": x} for t, x in rows]), encoding="utf-8")
    elif fmt == "parquet":
        pl.DataFrame({"text": [t for t, _ in rows], "label": [x for _, x in rows]}).write_parquet(
            path
        )
    elif fmt == "csv.gz":
        path.write_bytes(gzip.compress(write_csv(path.with_suffix(".plain"), rows).read_bytes()))
    return path


@pytest.mark.parametrize(
    "fmt, name",
    [
        ("csv", "d.csv"),
        ("tsv", "d.tsv"),
        ("jsonl", "d.jsonl"),
        ("parquet", "d.parquet"),
        ("json", "d.json"),
        ("json-lines-in-.json", "d.json"),
        ("csv.gz", "d.csv.gz"),
        ("semicolon", "d.csv"),
        ("bom", "d.csv"),
    ],
)
def test_every_format_gives_the_same_result(tmp_path, fmt, name):
    source = _same_rows(tmp_path / name, fmt)
    printed, out = imported(tmp_path, str(source), "--task", "sms_spam", "--seed", "1")
    train, test, report = outputs(out)
    assert (train.height, test.height) == (8, 2)
    assert set(train["label"]) | set(test["label"]) == {"ham", "spam"}
    assert sorted(train["text"].to_list() + test["text"].to_list()) == sorted(
        t for t, _ in messages({"ham": 6, "spam": 4})
    )


def test_column_mapping_label_renaming_and_extra_columns(tmp_path):
    records = [
        {
            "id": i,
            "sentence": t,
            "category": int(x == "spam"),
            "text": f"raw {i}",
            "meta": {"lang": "en"},
        }
        for i, (t, x) in enumerate(messages({"ham": 6, "spam": 4}))
    ]
    source = write_jsonl(tmp_path / "d.jsonl", records)
    printed, out = imported(tmp_path, str(source), "--task", "sms_spam", "--text-column", "sentence",
        "--label-column", "category", "--label-map", "0=ham", "--label-map", "1=spam",
    )  # fmt: skip
    train, test, report = outputs(out)
    assert train.columns == ["text", "label", "id", "source_text", "meta"]
    assert train.schema["id"] == pl.Int64 and train.schema["label"] == pl.Utf8
    assert set(train["label"]) == {"ham", "spam"}
    row = pl.concat([train, test]).filter(pl.col("id") == 7).row(0, named=True)
    assert (
        row["label"] == "spam" and row["source_text"] == "raw 7" and row["meta"] == {"lang": "en"}
    )
    assert report["columns"] == {
        "text": "sentence", "label": "category", "extra": ["id", "source_text", "meta"], "renamed": {"text": "source_text"},
    }  # fmt: skip
    assert report["label_map"] == {"0": "ham", "1": "spam"}


def test_label_map_in_one_option_and_unused_keys(tmp_path):
    rows = [(t, "neg" if x == "ham" else "pos") for t, x in messages({"ham": 5, "spam": 5})]
    source = write_csv(tmp_path / "d.csv", rows)
    printed, out = imported(
        tmp_path,
        str(source),
        "--task",
        "imdb",
        "--label-map",
        "neg=negative,pos=positive",
        "--label-map",
        "neutral=negative",
    )
    train, test, report = outputs(out)
    assert set(train["label"]) == {"negative", "positive"}
    assert any("neutral" in w and "match no label" in w for w in report["warnings"])


def test_datasets_parquet_class_labels_become_names(tmp_path):
    """A Parquet file written by `datasets` keeps ClassLabel ints plus their names in its
    metadata; -1 (no label) becomes a missing label."""
    datasets = pytest.importorskip("datasets")
    texts = [t for t, _ in messages({"a": 6, "b": 6})]
    labels = [0] * 6 + [1] * 5 + [-1]
    features = datasets.Features(
        {"review": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    path = tmp_path / "train-00000-of-00001.parquet"
    datasets.Dataset.from_dict({"review": texts, "label": labels}, features=features).to_parquet(
        str(path)
    )
    printed, out = imported(tmp_path, str(path), "--task", "imdb", "--text-column", "review",
        "--label-map", "0=negative", "--label-map", "pos=positive",
    )  # fmt: skip
    train, test, report = outputs(out)
    assert report["input"]["source"]["labels"] == {"negative": 6, "positive": 5}
    assert report["input"]["source"]["missing_labels"] == 1
    assert report["dropped"]["missing_labels"] == 1
    assert train.height + test.height == 11


def test_file_without_header_or_suffix(tmp_path):
    source = write_csv(
        tmp_path / "SMSCollection",
        [(x, t) for t, x in messages({"ham": 6, "spam": 4})],
        header=None,
        sep="\t",
    )
    printed, out = imported(tmp_path, str(source), "--format", "tsv", "--no-header", "--task", "sms_spam",
        "--text-column", "column_2", "--label-column", "column_1",
    )  # fmt: skip
    train, test, _ = outputs(out)
    assert train.height + test.height == 10 and set(train["label"]) == {"ham", "spam"}


# ----------------------------------------------------------------------------- the report


def crafted(tmp_path: Path) -> tuple[Path, Path]:
    train = [
        ("alpha", "ham"),
        ("", "ham"),  # empty text
        ("   ", "spam"),  # blank text
        ("beta", None),  # missing label
        ("gamma", "spam"),
        ("gamma", "spam"),  # duplicate
        ("  gamma ", "spam"),  # duplicate up to surrounding whitespace
        ("delta", "ham"),
        ("delta", "spam"),  # duplicate with another label
        ("shared one", "ham"),  # also in test
        ("shared two", "spam"),  # also in test, with another label there
        ("odd", "eggs"),  # not a task label
    ]
    test = [
        ("shared one", "ham"),
        ("shared two", "ham"),
        ("epsilon", "spam"),
        ("zeta", "ham"),
        ("zeta", "ham"),
    ]
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "test.csv", test)


def test_report_counts_on_crafted_data(tmp_path):
    train_file, test_file = crafted(tmp_path)
    printed, out = imported(
        tmp_path,
        str(train_file),
        "--test",
        str(test_file),
        "--task",
        "sms_spam",
        "--allow-unknown-labels",
    )
    train, test, report = outputs(out)
    inp = report["input"]["train"]
    assert inp["rows"] == 12 and inp["empty_texts"] == 2 and inp["missing_labels"] == 1
    assert inp["unknown_labels"] == {"eggs": 1}
    assert inp["duplicates"] == 3 and inp["conflicting_duplicates"] == 1
    assert report["input"]["test"]["duplicates"] == 1
    assert report["dropped"] == {
        "empty_texts": 2,
        "missing_labels": 1,
        "duplicates": 0,
        "overlap": 0,
    }
    assert report["splits"]["train"]["rows"] == train.height == 9
    assert report["splits"]["train"]["labels"] == {"ham": 3, "spam": 5, "eggs": 1}
    assert report["splits"]["test"] == {
        "rows": 5, "labels": {"ham": 4, "spam": 1}, "empty_texts": 0, "missing_labels": 0, "unknown_labels": {},
        "duplicates": 1, "conflicting_duplicates": 0, "absent_labels": [],
    }  # fmt: skip
    assert report["overlap"] == {"texts": 2, "train_rows": 2, "test_rows": 2, "different_labels": 1}
    assert "eggs" in train["label"].to_list()
    assert any("kept labels outside the task: eggs" in w for w in report["warnings"])
    assert "overlap: 2 texts" in printed


def test_dedup_drops_repeats_and_train_texts_that_are_in_test(tmp_path):
    train_file, test_file = crafted(tmp_path)
    printed, out = imported(
        tmp_path,
        str(train_file),
        "--test",
        str(test_file),
        "--allow-unknown-labels",
        "--task",
        "sms_spam",
        "--dedup",
    )
    train, test, report = outputs(out)
    assert report["dropped"] == {
        "empty_texts": 2,
        "missing_labels": 1,
        "duplicates": 4,
        "overlap": 2,
    }
    assert train["text"].to_list() == ["alpha", "gamma", "delta", "odd"]
    assert test["text"].to_list() == ["shared one", "shared two", "epsilon", "zeta"]
    assert report["overlap"]["texts"] == 0 and report["splits"]["train"]["duplicates"] == 0


def test_keep_empty_keeps_and_counts_them(tmp_path):
    rows = messages({"ham": 6, "spam": 4}) + [("", "ham"), ("  ", "spam")]
    printed, out = imported(
        tmp_path, str(write_csv(tmp_path / "d.csv", rows)), "--keep-empty", "--test-size", "0.5"
    )
    train, test, report = outputs(out)
    assert train.height + test.height == 12
    assert report["dropped"]["empty_texts"] == 0
    assert report["splits"]["train"]["empty_texts"] + report["splits"]["test"]["empty_texts"] == 2


def test_hub_dataset_splits_and_class_labels(tmp_path, monkeypatch):
    """The hub path with the download replaced by a dataset built here (the hub is off in tests):
    ClassLabel ints become names, the test split is used, a missing one is split off."""
    datasets = pytest.importorskip("datasets")
    from localsynth.data import importer as data
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    splits = {
        name: datasets.Dataset.from_dict(
            {"text": [f"{name} text {i}" for i in range(n)], "label": [i % 2 for i in range(n)]},
            features=features,
        )
        for name, n in (("train", 20), ("test", 6))
    }
    asked = []

    def load_dataset(name, config=None):
        asked.append((name, config))
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    opts = data.ImportOptions(source="someone/reviews", labels=["negative", "positive"], task="imdb",
                              label_map={"neg": "negative", "1": "positive"})  # fmt: skip
    train, test, report = data.import_data(opts)
    assert asked == [("someone/reviews", None)]
    assert (train.height, test.height) == (20, 6) and report["split"]["method"] == "source"
    assert set(test["label"]) == {"negative", "positive"}
    assert report["input"]["test"]["from"] == "someone/reviews split 'test'"

    del splits["test"]
    train, test, report = data.import_data(opts)
    assert (train.height, test.height) == (16, 4) and report["split"]["method"] == "stratified"
    with pytest.raises(data.UserError, match="has no split 'validation'; its splits: train"):
        data.import_data(data.ImportOptions(source="someone/reviews", test_split="validation"))


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path, cli_env):
    result, out = data_import(tmp_path, cli_env, str(tmp_path / "nowhere.csv"))
    assert_user_error(result, "SOURCE", "file not found", "nowhere.csv", "check the path")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "content", ["", "\n\n", "text,label\n"], ids=["zero-bytes", "blank-lines", "header-only"]
)
def test_empty_file(tmp_path, cli_env, content):
    source = tmp_path / "d.csv"
    source.write_text(content, encoding="utf-8")
    result, out = data_import(tmp_path, cli_env, str(source))
    message = assert_user_error(result, str(source), "point it at a file with")
    assert "empty" in message or "no rows" in message
    assert_nothing_written(out)


def test_wrong_column_names_lists_the_columns(tmp_path, cli_env):
    source = write_csv(
        tmp_path / "d.csv",
        [(x, t, 1) for t, x in messages({"ham": 3})],
        header=("category", "Sentence", "id"),
    )
    result, out = data_import(tmp_path, cli_env, str(source))
    assert_user_error(
        result,
        "'text', 'label' not found",
        "'category', 'Sentence', 'id'",
        "--text-column Sentence",
        "--label-column category",
    )
    assert_nothing_written(out)


def test_headerless_file_hints_at_no_header(tmp_path, cli_env):
    source = write_csv(
        tmp_path / "d.tsv",
        [("ham", "a long message that someone sent to a friend about lunch")] * 3,
        header=None,
        sep="\t",
    )
    result, out = data_import(tmp_path, cli_env, str(source))
    assert_user_error(result, "not found", "--no-header", "column_1")
    assert_nothing_written(out)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_not_utf8(tmp_path, cli_env, suffix):
    source = tmp_path / f"d{suffix}"
    content = {
        ".csv": "text,label\ncaf\u00e9 au lait offer,spam\nsee you,ham\n",
        ".tsv": "text\tlabel\ncaf\u00e9 au lait offer\tspam\nsee you\tham\n",
        ".jsonl": '{"text": "caf\u00e9 au lait offer", "label": "spam"}\n',
    }[suffix]
    source.write_bytes(content.encode("latin-1"))
    result, out = data_import(tmp_path, cli_env, str(source))
    assert_user_error(result, str(source), "UTF-8", "save it as UTF-8")
    assert_nothing_written(out)


def test_unknown_task(tmp_path, cli_env):
    source = write_csv(tmp_path / "d.csv", messages(SPAM))
    result, out = data_import(tmp_path, cli_env, str(source), "--task", "sms_spma")
    assert_user_error(result, "unknown task 'sms_spma'", "did you mean sms_spam", "ag_news")
    assert_nothing_written(out)


def test_labels_outside_the_task(tmp_path, cli_env):
    rows = [(t, "1" if x == "spam" else "0") for t, x in messages(SPAM)]
    result, out = data_import(
        tmp_path, cli_env, str(write_csv(tmp_path / "d.csv", rows)), "--task", "sms_spam"
    )
    assert_user_error(
        result,
        "not in task 'sms_spam'",
        "ham, spam",
        "'0' (100 rows)",
        "'1' (25 rows)",
        "--label-map",
        "--allow-unknown-labels",
    )
    assert_nothing_written(out)


def test_label_with_too_few_rows_to_stratify(tmp_path, cli_env):
    rows = messages({"ham": 10, "spam": 1})
    result, out = data_import(tmp_path, cli_env, str(write_csv(tmp_path / "d.csv", rows)))
    assert_user_error(
        result, "'spam' (1 row)", "too few rows to stratify", "--label-map", "--test FILE"
    )
    assert_nothing_written(out)


@pytest.mark.parametrize("size", ["0", "1", "1.5", "-0.2"])
def test_test_size_out_of_range(tmp_path, cli_env, size):
    source = write_csv(tmp_path / "d.csv", messages(SPAM))
    result, out = data_import(tmp_path, cli_env, str(source), f"--test-size={size}")
    assert_user_error(
        result, "--test-size must be a fraction between 0 and 1", size, "--test-size 0.2"
    )
    assert_nothing_written(out)


def test_test_size_too_small_for_the_labels(tmp_path, cli_env):
    source = write_csv(tmp_path / "d.csv", messages({"a": 20, "b": 20, "c": 20}))
    result, out = data_import(tmp_path, cli_env, str(source), "--test-size", "0.02")
    assert_user_error(result, "gives 2 test", "3 labels", "--test-size")
    assert_nothing_written(out)


@pytest.mark.parametrize("item", ["spam", "=spam", "ham="])
def test_bad_label_map(tmp_path, cli_env, item):
    source = write_csv(tmp_path / "d.csv", messages(SPAM))
    result, out = data_import(tmp_path, cli_env, str(source), "--label-map", item)
    assert_user_error(result, "--label-map expects OLD=NEW", item)
    assert_nothing_written(out)


def test_folder_without_a_train_file(tmp_path, cli_env):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_csv(folder / "dev.csv", messages(SPAM))
    result, out = data_import(tmp_path, cli_env, str(folder))
    assert_user_error(result, "no 'train' file", "dev.csv", "--train-split NAME")
    assert_nothing_written(out)


def test_unknown_file_type(tmp_path, cli_env):
    source = tmp_path / "d.txt"
    source.write_text("text,label\nhello,ham\n", encoding="utf-8")
    result, out = data_import(tmp_path, cli_env, str(source))
    assert_user_error(result, "cannot tell the format", "--format")
    assert_nothing_written(out)


def test_multi_label_column(tmp_path, cli_env):
    source = write_jsonl(
        tmp_path / "d.jsonl", [{"text": t, "labels": [x, "other"]} for t, x in messages(SPAM)]
    )
    result, out = data_import(tmp_path, cli_env, str(source), "--label-column", "labels")
    assert_user_error(result, "'labels'", "multi-label", "one label per row")
    assert_nothing_written(out)


def test_out_is_a_file(tmp_path, cli_env):
    source = write_csv(tmp_path / "d.csv", messages(SPAM))
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")
    result, _ = data_import(tmp_path, cli_env, str(source))
    assert_user_error(result, "--out", "is a file", "give a folder")


def test_hub_id_offline_says_how_to_use_a_local_copy(tmp_path, cli_env):
    assert cli_env.get("HF_HUB_OFFLINE") == "1"  # set by conftest: nothing may reach the network
    result, out = data_import(tmp_path, cli_env, "someone/no-such-dataset", "--task", "imdb")
    assert_user_error(
        result,
        "'someone/no-such-dataset'",
        "offline",
        "not a file or folder here",
        "to_parquet",
        "localsynth data import",
    )
    assert_nothing_written(out)


def test_failure_leaves_a_previous_import_intact(tmp_path, cli_env):
    source = write_csv(tmp_path / "d.csv", messages(SPAM))
    imported(tmp_path, str(source))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    result, out = data_import(tmp_path, cli_env, str(source), "--test-size", "2")
    assert result.returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_help_stays_light():
    code = """
from localsynth.cli import main
try:
    main(["data", "import", "--help"])
except SystemExit:
    pass
"""
    assert modules_after(code) == set()


# ----------------------------------------------------------------------------- the real datasets

REAL = {  # the README table of the shared data folder: (train rows, test rows)
    "sms_spam": (4460, 1114),
    "ag_news": (5000, 7600),
    "financial_phrasebank": (3876, 970),
    "tweet_irony": (2862, 784),
    "fewrel4": (665, 166),
    "sarcasm_headlines": (22895, 5724),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(REAL))
def test_real_datasets(tmp_path, cli_env, task):
    if not REAL_DATA or not (Path(REAL_DATA) / task).is_dir():
        pytest.skip("set LOCALSYNTH_REAL_DATA to the shared data folder")
    from localsynth.tasks import load_task

    result, out = data_import(tmp_path, cli_env, os.path.join(REAL_DATA, task), "--task", task)
    ok(result)
    train, test, report = outputs(out)
    assert (train.height, test.height) == REAL[task]
    assert (report["splits"]["train"]["rows"], report["splits"]["test"]["rows"]) == REAL[task]
    labels = load_task(task).label_names
    assert set(train["label"]) == set(test["label"]) == set(labels)
    assert report["dropped"] == {
        "empty_texts": 0,
        "missing_labels": 0,
        "duplicates": 0,
        "overlap": 0,
    }
    if task == "fewrel4":
        assert train.columns == ["text", "label", "head", "tail"]
