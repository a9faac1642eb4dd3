"""`localsynth audit`: the settings (defaults live here only) and the orchestration.

Order: read the rows -> judge (the slow stage; its verdicts are saved under the audit folder
keyed by judge, labels and texts, so a re-run after a crash or with other thresholds does not
ask again) -> embed once (cached on disk by `analysis.embeddings`) -> noise, contamination,
semantic duplicates -> rows.parquet, report.md, report.json (last: the completion marker).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from localsynth.analysis.settings import EmbedSettings
from localsynth.audit.inputs import AuditInput, load_input, load_reference
from localsynth.backends.settings import GeneratorConfig
from localsynth.config import Strict
from localsynth.progress import log
from localsynth.secrets import redact_data


class JudgeSettings(Strict):
    enabled: bool = Field(default=True, description="Ask an LLM judge for each text's label (label fidelity).")
    generator: GeneratorConfig | None = Field(
        default=None, description="The judge's backend, model and settings; None: the run's generator (a file: "
        "the hf backend with the embedded default model).")
    backend: Literal["hf", "vllm", "openai"] | None = Field(default=None, description="Override the judge's backend.")
    model: str | None = Field(default=None, description="Override the judge's model.")


class NoiseSettings(Strict):
    enabled: bool = Field(default=True, description="Confident learning over out-of-fold probabilities.")
    folds: int = Field(default=5, ge=2, description="Stratified folds for the out-of-fold probabilities.")
    c: float = Field(default=1.0, gt=0, description="Inverse regularisation of the logistic regression.")
    seed: int = Field(default=0, description="Seed of the fold split.")
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                       "predicted_neq_given"] = Field(default="prune_by_noise_rate", description="cleanlab's filter_by.")


class ContaminationSettings(Strict):
    near_jaccard: float = Field(default=0.8, gt=0, le=1, description="Word-set Jaccard of a near duplicate.")
    cosine: float = Field(default=0.95, gt=0, le=1, description="Embedding cosine of a semantic match.")
    block_size: int = Field(default=4096, ge=1, description="Rows per block of cosines (memory ~ block^2 floats).")


class SemdupSettings(Strict):
    enabled: bool = Field(default=True, description="Flag rows close to an earlier row of the same label.")
    threshold: float = Field(default=0.95, gt=0, le=1, description="Embedding cosine of a semantic duplicate.")


class EmbeddingSettings(EmbedSettings):
    """The analyses' embedding settings, with the encoder, a shorter text limit and the cache switch."""

    model: str | None = Field(default=None, description="Local sentence encoder folder; None: all-MiniLM-L6-v2.")
    max_length: int = Field(default=128, ge=1, description="Tokens per text.")
    cache: bool = Field(default=True, description="Reuse embeddings cached in $LOCALSYNTH_CACHE/embeddings.")


class AuditConfig(Strict):
    input: str = Field(description="A generation run directory or a labelled CSV / TSV / JSONL / Parquet file.")
    out: str | None = Field(default=None, description="Output folder; None: <run>/audit, or <file stem>.audit beside a file.")
    test: str | None = Field(default=None, description="The real test set (file, or a data folder with test.parquet); "
                             "None: the run's task real_data.test.path, else not checked.")
    few_shot_pool: str | None = Field(default=None, description="The few-shot pool; None: the run's (few-shot runs).")
    text_column: str = Field(default="text", description="Text column of a labelled file.")
    label_column: str = Field(default="label", description="Label column of a labelled file.")
    reference_text_column: str = Field(default="text", description="Text column of the test set and the pool.")
    labels: list[str] | None = Field(default=None, description="The label set; None: the run's task, or those present.")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    noise: NoiseSettings = Field(default_factory=NoiseSettings)
    contamination: ContaminationSettings = Field(default_factory=ContaminationSettings)
    semdup: SemdupSettings = Field(default_factory=SemdupSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    examples: int = Field(default=5, ge=0, description="Example rows per finding in the report.")
    report_texts: bool = Field(default=True, description="Show example texts in report.md / report.json (ids always).")


def load_audit_config(path: str | Path | None, overrides: list[str] | None = None,
                      base: dict[str, Any] | None = None) -> AuditConfig:
    from localsynth.config import load

    return load(AuditConfig, path, overrides, base=base, what="audit config")


def out_dir(cfg: AuditConfig) -> Path:
    if cfg.out:
        return Path(os.path.expanduser(cfg.out))
    given = Path(os.path.expanduser(cfg.input))
    return given / "audit" if given.is_dir() else given.with_name(f"{given.stem}.audit")


def judge_config(cfg: AuditConfig, info: AuditInput) -> GeneratorConfig:
    """The judge: its own settings, else the run's generator, else the defaults; then the
    backend / model overrides."""
    gen = cfg.judge.generator or (GeneratorConfig.model_validate(info.generator) if info.generator else GeneratorConfig())
    update = {k: v for k, v in (("backend", cfg.judge.backend), ("model", cfg.judge.model)) if v is not None}
    return gen.model_copy(update=update) if update else gen


def _judge_key(gen: GeneratorConfig, info: AuditInput) -> str:
    from localsynth.audit.judge import PROMPT_VERSION

    digest = hashlib.sha256(json.dumps([PROMPT_VERSION, gen.model_dump(mode="json"), info.labels, info.descriptions,
                                        info.title, info.text_kind], sort_keys=True).encode())
    for text in info.rows["text"].to_list():
        digest.update(len(text.encode()).to_bytes(8, "little") + text.encode())
    return digest.hexdigest()[:16]


def _judge(cfg: AuditConfig, info: AuditInput, target: Path, judge: Any) -> tuple[pl.DataFrame, dict[str, Any]]:
    from localsynth.audit import judge as jd
    from localsynth.io import write_json_atomic, write_parquet_atomic

    gen = judge.cfg if judge is not None else judge_config(cfg, info)
    cached = target / f".judge-{_judge_key(gen, info)}.parquet"
    if cached.is_file() and (meta := cached.with_suffix(".json")).is_file():
        verdicts = jd.Verdicts(**{**json.loads(meta.read_text(encoding="utf-8")),
                                  **pl.read_parquet(cached).select("labels", "confidence").to_dict(as_series=False)})
        log(f"judge: reusing {cached.name} ({verdicts.method})")
    else:
        own = judge is None
        judge = judge or jd.Judge(gen)
        try:
            verdicts = judge.judge(info.rows["text"].to_list(), info.labels, info.descriptions, info.title,
                                   info.text_kind)
        finally:
            if own:
                judge.close()
        write_parquet_atomic(pl.DataFrame({"labels": pl.Series(verdicts.labels, dtype=pl.Utf8),
                                           "confidence": pl.Series(verdicts.confidence, dtype=pl.Float64)}), cached)
        write_json_atomic(cached.with_suffix(".json"), {"method": verdicts.method, "errors": verdicts.errors})
    given = info.rows["label"].to_list()
    signals = pl.DataFrame({
        "judge_label": pl.Series(verdicts.labels, dtype=pl.Utf8),
        "judge_agrees": [j == g for j, g in zip(verdicts.labels, given)],
        "judge_confidence": pl.Series(verdicts.confidence, dtype=pl.Float64),
    })
    summary = jd.summary(given, verdicts.labels, info.labels, verdicts.method)
    summary["judge"] = f"{gen.backend} {gen.model or 'smollm2-135m-instruct'}"
    return signals, summary


def _embed(cfg: AuditConfig, texts: list[str]) -> np.ndarray:
    from localsynth.analysis.embeddings import embed

    e = cfg.embeddings
    return embed(texts, e.model, batch_size=e.batch_size, max_length=e.max_length, device=e.device, cache=e.cache)


def _versions() -> dict[str, str]:
    from importlib import metadata

    from localsynth.runinfo import package_versions

    versions = package_versions()
    for name in ("cleanlab", "scikit-learn", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_audit(cfg: AuditConfig, judge: Any = None) -> dict[str, Any]:
    """Audit one set and write its outputs; returns the summary (report.json's content).
    `judge`: an already loaded `audit.judge.Judge` to reuse across sets (else one is loaded
    and closed here, when the judge is enabled)."""
    from localsynth.audit import contamination, noise, report, semdup
    from localsynth.io import output_dir

    info = load_input(cfg.input, cfg.text_column, cfg.label_column, cfg.labels)
    test_path, pool_path = cfg.test or info.test, cfg.few_shot_pool or info.few_shot_pool
    refs = {name: load_reference(path, key, cfg.reference_text_column, split) if path else None
            for name, path, key, split in (("test", test_path, "--test", "test"),
                                           ("few_shot_pool", pool_path, "--few-shot-pool", "train"))}
    target = output_dir(out_dir(cfg), "--out")
    rows, labels, texts = info.rows, info.labels, info.rows["text"]
    log(f"auditing {rows.height:,} rows of {info.source} ({len(labels)} labels) into {target}")
    seconds: dict[str, float] = {}
    parts = [rows.select("id", "label", "text")]
    skipped = "disabled (judge.enabled: false)"
    fidelity: dict[str, Any] = {"skipped": skipped}
    started = time.monotonic()
    if cfg.judge.enabled:
        signals, fidelity = _judge(cfg, info, target, judge)
        parts.append(signals)
        seconds["judge"] = round(time.monotonic() - started, 2)
    emb, ref_emb = None, dict.fromkeys(refs)
    if cfg.noise.enabled or cfg.semdup.enabled or any(r is not None for r in refs.values()):
        started = time.monotonic()
        emb = _embed(cfg, texts.to_list())
        ref_emb = {k: _embed(cfg, v["text"].to_list()) if v is not None else None for k, v in refs.items()}
        seconds["embed"] = round(time.monotonic() - started, 2)
    noise_summary: dict[str, Any] = {"skipped": "disabled (noise.enabled: false)"}
    if cfg.noise.enabled:
        started = time.monotonic()
        n = cfg.noise
        signals = noise.label_issues(emb, rows["label"].to_list(), labels, folds=n.folds, seed=n.seed, c=n.c,
                                     filter_by=n.filter_by)
        parts.append(signals)
        noise_summary = {**noise.summary(signals, labels, rows["label"], rows["id"], cfg.examples), "folds": n.folds}
        seconds["noise"] = round(time.monotonic() - started, 2)
    contamination_summary: dict[str, Any] = {}
    started = time.monotonic()
    c = cfg.contamination
    for name, prefix in (("test", "test"), ("few_shot_pool", "pool")):
        ref = refs[name]
        if ref is None:
            why = "no test set given; pass --test FILE" if name == "test" else "no few-shot pool (not a few-shot run); pass --few-shot-pool FILE"
            contamination_summary[name] = {"skipped": why}
            if name == "test":
                log(f"warning: contamination against the test set not checked: {why}")
            continue
        signals = contamination.check(texts, emb, ref, ref_emb[name], prefix, near_threshold=c.near_jaccard,
                                      cosine_threshold=c.cosine, block=c.block_size)
        parts.append(signals)
        contamination_summary[name] = {**contamination.summary(signals, rows, prefix, cfg.examples, cfg.report_texts),
                                       "reference": str(test_path if name == "test" else pool_path),
                                       "reference_rows": ref.height}
    seconds["contamination"] = round(time.monotonic() - started, 2)
    dup_summary: dict[str, Any] = {"skipped": "disabled (semdup.enabled: false)"}
    if cfg.semdup.enabled:
        started = time.monotonic()
        signals = semdup.semantic_duplicates(emb, rows["label"].to_list(), cfg.semdup.threshold, c.block_size)
        ids = rows["id"]
        parts.append(signals.with_columns(pl.col("semdup_of").map_elements(lambda i: ids[i], return_dtype=pl.Utf8)
                                          .alias("semdup_of_id")).drop("semdup_of"))
        dup_summary = semdup.summary(signals, labels, rows["label"])
        seconds["semdup"] = round(time.monotonic() - started, 2)
    summary = {
        "input": info.source, "kind": "run" if info.is_run else "file", "rows": rows.height, "labels": labels,
        "out": str(target), "fidelity": fidelity, "noise": noise_summary, "contamination": contamination_summary,
        "semantic_duplicates": dup_summary, "seconds": seconds, "versions": _versions(),
        "settings": redact_data(cfg.model_dump(mode="json")),
    }
    report.write(target, pl.concat(parts, how="horizontal"), summary)
    log(f"wrote {target / report.MARKDOWN}")
    return summary
