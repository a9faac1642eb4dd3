"""The audit's outputs, beside the rows it audited:

    audit/rows.parquet   one row per audited text (id, label, text) with every signal, so a user
                         filters with polars: pl.read_parquet(...).filter(~pl.col("judge_agrees"))
    audit/report.md      what a person reads: fidelity, confusion, noise, contamination, duplicates
    audit/report.json    the same figures, and the settings and versions; written last, with
                         "complete": true, so it is the audit's completion marker

Each file is written atomically (temp file, fsync, rename): a reader sees the old audit or the
new one. Examples name row ids; their texts appear only with `report_texts` (a report meant for
a repository carries no data rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from localsynth.io import write_json_atomic, write_parquet_atomic, write_text_atomic

ROWS, MARKDOWN, JSON = "rows.parquet", "report.md", "report.json"


def is_complete(out_dir: Path) -> bool:
    import json

    try:
        return bool(json.loads((Path(out_dir) / JSON).read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _example(item: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in item.items() if k != "text"]
    text = item.get("text")
    return "- " + ", ".join(parts) + (f": {text!r}" if text is not None else "")


def _section(title: str, part: dict[str, Any], body) -> list[str]:
    """A report section, or one line saying why it was not measured."""
    if "skipped" in part:
        return [f"## {title}", "", f"Not measured: {part['skipped']}", ""]
    return [f"## {title}", "", *body(part), ""]


def _per_label(per: dict[str, dict[str, Any]], key: str, name: str) -> list[str]:
    return _table(["label", "rows", name, "share"], [[g, v["rows"], v[key], _pct(v["share"])] for g, v in per.items()])


def _fidelity(fid: dict[str, Any]) -> list[str]:
    columns = list(next(iter(fid["confusion"].values())))
    return [f"Judge: {fid['judge']} ({fid['method']}). Agreement with the given label: "
            f"**{_pct(fid['agreement'])}** ({fid['agree']:,} of {fid['rows']:,}); no usable answer: "
            f"{fid['unanswered']:,}.", "",
            *_table(["label", "rows", "judge agrees"],
                    [[g, v["rows"], _pct(v["agreement"])] for g, v in fid["per_label"].items()]),
            "", "Confusion matrix (rows: given label; columns: the judge's label):", "",
            *_table(["given \\ judge", *columns], [[g, *(row[c] for c in columns)] for g, row in fid["confusion"].items()])]


def _noise(noise: dict[str, Any]) -> list[str]:
    lines = [f"Out-of-fold logistic regression on the embeddings ({noise['folds']} folds) into cleanlab's "
             f"find_label_issues: **{_pct(noise['share'])}** flagged ({noise['flagged']:,} rows).", "",
             *_per_label(noise["per_label"], "flagged", "flagged")]
    if noise.get("examples"):
        lines += ["", "Lowest-quality flagged rows:", "", *(_example(e) for e in noise["examples"])]
    return lines


def _contamination(summary: dict[str, Any]) -> list[str]:
    lines = ["## Contamination", ""]
    for name, title in (("test", "real test set"), ("few_shot_pool", "few-shot pool")):
        c = summary["contamination"][name]
        if "skipped" in c:
            lines += [f"- Against the {title}: not checked ({c['skipped']})."]
            continue
        checks = ", ".join(f"{k} {_pct(c[k]['share'])} ({c[k]['count']:,})" for k in ("exact", "near", "cosine")
                           if k in c)
        lines += [f"- Against the {title} ({c['reference_rows']:,} rows): **{_pct(c['contaminated']['share'])}** "
                  f"contaminated ({c['contaminated']['count']:,}); {checks}."]
        lines += ["  " + _example(e) for e in c["examples"]]
    th = summary["settings"]["contamination"]
    return lines + ["", f"Thresholds: word-set Jaccard >= {th['near_jaccard']} (MinHash LSH, exact Jaccard decides), "
                    f"embedding cosine >= {th['cosine']}.", ""]


def markdown(summary: dict[str, Any]) -> str:
    threshold = summary["settings"]["semdup"]["threshold"]
    lines = [f"# Audit of {summary['input']}", "",
             f"{summary['rows']:,} labelled rows, labels: {', '.join(summary['labels'])}. "
             f"Per-row signals: `{ROWS}` (filter with polars).", ""]
    lines += _section("Label fidelity (LLM judge)", summary["fidelity"], _fidelity)
    lines += _section("Noisy labels (confident learning)", summary["noise"], _noise)
    lines += _contamination(summary)
    lines += _section("Semantic duplicates within a label", summary["semantic_duplicates"], lambda dup: [
        f"Rows within cosine {threshold} of an earlier row of their label: **{_pct(dup['share'])}** "
        f"({dup['count']:,}); a keep-first filter removes these.", "",
        *_per_label(dup["per_label"], "duplicates", "duplicates")])
    lines += ["## Run", "", f"Seconds per stage: {summary['seconds']}. Versions: {summary['versions']}.", ""]
    return "\n".join(lines)


def write(out_dir: Path, rows: pl.DataFrame, summary: dict[str, Any]) -> None:
    """rows.parquet, report.md, then report.json (the completion marker) last."""
    out_dir = Path(out_dir)
    (out_dir / JSON).unlink(missing_ok=True)  # a crash below must not leave an old marker over new rows
    write_parquet_atomic(rows, out_dir / ROWS)
    write_text_atomic(out_dir / MARKDOWN, markdown(summary))
    write_json_atomic(out_dir / JSON, {**summary, "complete": True})
