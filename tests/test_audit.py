"""The audit (localsynth/audit): each signal against hand-computed values on small fixtures;
flipped labels found by confident learning; planted test rows found by the contamination check;
the judge's constrained answers on transformers (exact log-likelihoods) and on the real vLLM CPU
engine; bad inputs (labels outside the judge's answer space, a judge without a chat template, no
test set); the study helpers (quality table, correlation with the F1 gap, filters)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from helpers import REPO, assert_user_error, run_cli, run_in_process

from localsynth.audit import contamination, judge, nearest, noise, semdup, study
from localsynth.audit.run import AuditConfig, run_audit
from localsynth.errors import UserError

# ----------------------------------------------------------------------------- fixtures


def _words(rng: np.random.Generator, n: int) -> str:
    vocab = [f"w{i}" for i in range(400)]
    return " ".join(rng.choice(vocab, n, replace=False))


def write_run(folder: Path, rows: pl.DataFrame, labels: dict[str, str], mode: str = "zero-shot",
              pool: str | None = None) -> Path:
    """A finished one-shard generation run as the run-directory contract lays it out."""
    (folder / "shards").mkdir(parents=True)
    task = {"name": "toy", "title": "Toy task", "text_kind": "message",
            "labels": [{"name": k, "description": v} for k, v in labels.items()],
            "few_shot": {"source": {"path": pool}}, "real_data": {"test": {"path": None}}}
    (folder / "config.yaml").write_text(yaml.safe_dump({"task": task, "mode": mode,
                                                        "generator": {"backend": "hf", "model": "tiny-random"}}))
    rows.with_columns(pl.lit(True).alias("kept")).write_parquet(folder / "shards" / "00000-of-00001.parquet")
    (folder / "shards" / "00000-of-00001.done").write_text("")
    return folder


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSYNTH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- nearest / semdup


def test_max_cosine_matches_hand_computed_values():
    q = np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32)
    r = np.array([[0, 1], [1, 0], [-1, 0]], dtype=np.float32)
    for block in (1, 2, 4096):
        best, arg = nearest.max_cosine(q, r, block=block)
        assert arg.tolist() == [1, 0, 0]
        np.testing.assert_allclose(best, [1.0, 1.0, np.sqrt(0.5)], rtol=1e-6)
    best, arg = nearest.max_cosine(np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32), block=2,
                                   earlier_only=True)
    assert arg.tolist() == [-1, 0, 0, 0]  # row 3 ties rows 0 and 1 (cos 0.707) and row 2: the first wins
    assert best[0] == -np.inf
    np.testing.assert_allclose(best[1:], [1.0, 0.0, np.sqrt(0.5)], rtol=1e-6)


def test_semantic_duplicates_within_a_label_only():
    emb = np.array([[1, 0], [0.99, 0.141], [0, 1], [1, 0], [0.5, 0.5]], dtype=np.float32)
    out = semdup.semantic_duplicates(emb, ["a", "a", "a", "b", "a"], threshold=0.95, block=2)
    # row 1: cos(1,0)-(0.99,0.141) = 0.99 / |(0.99, 0.141)| = 0.9900; row 3 is alone in label b;
    # row 4 is nearest to row 1 (cos 0.5655 / (0.7071 * 1.0000) = 0.7997), below the threshold
    assert out["semdup"].to_list() == [False, True, False, False, False]
    assert out["semdup_of"].to_list() == [None, 0, None, None, None]
    assert out["semdup_cosine"][1] == pytest.approx(0.99 / np.hypot(0.99, 0.141), rel=1e-5)
    assert out["semdup_cosine"][3] is None and out["semdup_cosine"][4] == pytest.approx(
        (0.5 * 0.99 + 0.5 * 0.141) / (np.sqrt(0.5) * np.hypot(0.99, 0.141)), rel=1e-5)
    s = semdup.summary(out, ["a", "b"], pl.Series(["a", "a", "a", "b", "a"]))
    assert s["count"] == 1 and s["share"] == pytest.approx(0.2) and s["per_label"]["a"]["share"] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- contamination


def test_exact_and_near_matches_hand_computed():
    texts = pl.Series(["Hello, World!", "the cat sat on the mat today", "nothing like it", "!!!"])
    ref = pl.Series(["something else", "hello world", "the cat sat on the mat", "???"])
    assert contamination.exact_matches(texts, ref).tolist() == [1, -1, -1, -1]  # "!!!" normalises to nothing
    match, score = contamination.near_matches(texts, ref, 0.8)
    # {the, cat, sat, on, mat, today} vs {the, cat, sat, on, mat}: Jaccard 5/6
    assert match.tolist() == [1, 2, -1, -1]
    assert score.tolist() == pytest.approx([1.0, 5 / 6, 0.0, 0.0])
    match, _ = contamination.near_matches(texts, ref, 0.9)
    assert match.tolist() == [1, -1, -1, -1]


def test_planted_test_rows_are_found_and_nothing_else():
    rng = np.random.default_rng(0)
    test = pl.DataFrame({"id": [f"t{i}" for i in range(300)], "text": [_words(rng, 12) for _ in range(300)]})
    synthetic = [_words(rng, 12) for _ in range(500)]
    emb_test = rng.normal(size=(300, 24)).astype(np.float32)
    emb = rng.normal(size=(500, 24)).astype(np.float32)
    planted = {}
    for k, pos in enumerate(range(0, 500, 50)):  # 10 plants: exact copies, one word changed, paraphrases
        source = 7 * k + 3
        words = test["text"][source].split()
        if k % 3 == 0:
            synthetic[pos] = test["text"][source].upper() + "!"
        elif k % 3 == 1:
            synthetic[pos] = " ".join(words[:-1] + ["changed"])  # Jaccard 11/13 = 0.846
        else:
            synthetic[pos] = _words(rng, 12)  # other words, same meaning: the embedding says so
        emb[pos] = emb_test[source] + rng.normal(scale=0.01, size=24)
        planted[pos] = (f"t{source}", k % 3)
    signals = contamination.check(pl.Series(synthetic), emb, test, emb_test, "test", near_threshold=0.8,
                                  cosine_threshold=0.95, block=64)
    hits = set(np.flatnonzero(signals["test_contaminated"].to_numpy()).tolist())
    assert hits == set(planted)
    for pos, (source, kind) in planted.items():
        row = signals.row(pos, named=True)
        assert row["test_match_id"] == source and row["test_cosine_hit"]
        assert row["test_exact"] == (kind == 0) and row["test_near"] == (kind in (0, 1))
    rows = pl.DataFrame({"id": [f"s{i}" for i in range(500)], "label": ["x"] * 500, "text": synthetic})
    s = contamination.summary(signals, rows, "test", examples=3, texts=False)
    assert s["contaminated"] == {"count": 10, "share": 0.02} and s["exact"]["count"] == 4 and s["near"]["count"] == 7
    assert len(s["examples"]) == 3 and "text" not in s["examples"][0]


# ----------------------------------------------------------------------------- noise


def test_flipped_labels_are_found_by_confident_learning():
    """3 separable Gaussian classes, 20% of labels flipped to another class: recall >= 0.8."""
    rng = np.random.default_rng(1)
    labels = ["a", "b", "c"]
    centres = rng.normal(size=(3, 32)) * 4
    truth = np.repeat(np.arange(3), 200)
    emb = (centres[truth] + rng.normal(size=(600, 32))).astype(np.float32)
    flipped = rng.choice(600, 120, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, 3, 120)) % 3
    out = noise.label_issues(emb, [labels[i] for i in given], labels, folds=5, seed=0)
    found = set(np.flatnonzero(out["noise_issue"].to_numpy()).tolist())
    recall = len(found & set(flipped.tolist())) / 120
    precision = len(found & set(flipped.tolist())) / max(len(found), 1)
    print(f"confident learning at 20% flips: recall {recall:.3f}, precision {precision:.3f}, flagged {len(found)}")
    assert recall >= 0.8
    assert precision >= 0.5  # reported above; a floor so that flagging everything cannot pass
    assert (out["noise_predicted"].to_numpy()[flipped] == np.array(labels)[truth[flipped]]).mean() > 0.9


def test_noise_needs_two_rows_per_label():
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(UserError, match="at least 2 rows per label"):
        noise.label_issues(emb, ["a", "a", "b"], ["a", "b"])


# ----------------------------------------------------------------------------- judge (no model)


def test_match_label_and_fidelity_summary():
    labels = ["irony", "non_irony"]
    assert judge.match_label(" Irony.", labels) == "irony"
    assert judge.match_label("The label is non_irony", labels) == "non_irony"
    assert judge.match_label("non irony", labels) == "non_irony"
    assert judge.match_label("irony or non_irony", labels) == "non_irony"  # irony inside non_irony: one name
    assert judge.match_label("positive", labels) is None and judge.match_label(None, labels) is None
    s = judge.summary(["a", "a", "a", "b"], ["a", "b", None, "b"], ["a", "b"], "m")
    assert s["agree"] == 2 and s["agreement"] == 0.5 and s["unanswered"] == 1
    assert s["per_label"]["a"] == {"rows": 3, "agree": 1, "agreement": pytest.approx(1 / 3)}
    assert s["confusion"] == {"a": {"a": 1, "b": 1, "none": 1}, "b": {"a": 0, "b": 1, "none": 0}}


# ----------------------------------------------------------------------------- judge on transformers


def _hf_judge(model: Path, batch_size: int = 16) -> judge.Judge:
    from localsynth.backends.settings import GeneratorConfig

    cfg = GeneratorConfig.model_validate({"backend": "hf", "model": str(model), "hf": {"device": "cpu",
                                                                                       "batch_size": batch_size}})
    j = judge.Judge(cfg)
    j.load()
    return j


def test_hf_judge_scores_exact_log_likelihoods(tiny_llama):
    """Batched, left-padded scoring equals a plain forward pass of each (prompt, answer) alone."""
    import torch

    texts = ["win a free prize now", "see you at home tonight, love", "call now"]
    labels = ["ham", "spam", "not sure"]
    j = _hf_judge(tiny_llama, batch_size=4)
    try:
        verdicts = j.judge(texts, labels, {"ham": "personal", "spam": "an advert"}, "SMS", "message")
        assert verdicts.method == "hf-exact-loglik" and verdicts.errors == 0
        assert all(v in labels for v in verdicts.labels)
        tok, model = j.backend.tokenizer, j.backend.model
        for text, chosen, conf in zip(texts, verdicts.labels, verdicts.confidence):
            messages = judge.judge_messages(text, labels, {"ham": "personal", "spam": "an advert"}, "SMS", "message")
            scores = []
            for label in labels:
                prompt, answer = judge.answer_suffix(tok, messages, label)
                p = tok(prompt, add_special_tokens=False)["input_ids"]
                a = tok(answer, add_special_tokens=False)["input_ids"]
                with torch.inference_mode():
                    logits = model(input_ids=torch.tensor([p + a])).logits[0].float()
                logp = torch.log_softmax(logits[len(p) - 1:-1], dim=-1)
                scores.append(float(logp.gather(1, torch.tensor(a)[:, None]).sum()))
            probs = np.exp(np.array(scores) - max(scores))
            probs /= probs.sum()
            assert chosen == labels[int(np.argmax(scores))]
            assert conf == pytest.approx(float(probs.max()), abs=1e-4)
        borrowed = judge.Judge.on(j.backend)  # the generator's loaded engine, during generation
        assert borrowed.judge(texts, labels, {"ham": "personal", "spam": "an advert"}, "SMS",
                              "message").labels == verdicts.labels
        borrowed.close()
        assert j.backend.model is not None  # still the owner's
    finally:
        j.close()


def test_judge_model_without_chat_template_is_refused(tiny_llama, tmp_path):
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_llama, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"judge\.generator\.model: .*no chat template"):
        _hf_judge(plain)


def test_judge_needs_distinct_labels(tiny_llama):
    j = judge.Judge.__new__(judge.Judge)
    j.backend, j.cfg = object(), None
    with pytest.raises(UserError, match="at least two distinct"):
        j.judge(["x"], ["a", "a"])


# ----------------------------------------------------------------------------- the whole audit


def _toy_rows(rng: np.random.Generator, n: int = 40) -> pl.DataFrame:
    spam = ["win a free prize now call", "claim your cash prize text win", "free offer call now to claim",
            "urgent you are a winner reply now"]
    ham = ["see you at home tonight love", "thanks for the game today see you", "going home later want tea",
           "sorry i am late see you tomorrow"]
    texts, labels = [], []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        base = (spam if i % 2 else ham)[i // 2 % 4]
        texts.append(f"{base} {_words(rng, 3)}")
        labels.append(label)
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": texts, "label": labels})


def test_audit_of_a_run_writes_every_signal(tmp_path, cache, tiny_llama):
    rng = np.random.default_rng(2)
    rows = _toy_rows(rng)
    test = pl.DataFrame({"text": [rows["text"][3].upper(), "completely unrelated words here", rows["text"][10]],
                         "label": ["spam", "ham", "ham"]})
    test.write_csv(tmp_path / "test.csv")
    pool = tmp_path / "pool.csv"
    pl.DataFrame({"text": ["nothing in common at all", rows["text"][5]], "label": ["ham", "spam"]}).write_csv(pool)
    run = write_run(tmp_path / "run", rows, {"ham": "a personal message", "spam": "an advert"}, "few-shot", str(pool))
    cfg = AuditConfig.model_validate({"input": str(run), "test": str(tmp_path / "test.csv"),
                                      "judge": {"model": str(tiny_llama), "generator": {"hf": {"device": "cpu"}}},
                                      "noise": {"folds": 3}, "report_texts": False})
    summary = run_audit(cfg)
    out = run / "audit"
    assert json.loads((out / "report.json").read_text())["complete"] is True
    per_row = pl.read_parquet(out / "rows.parquet")
    assert per_row.height == 40 and per_row["id"].to_list() == rows["id"].to_list()
    for column in ("judge_label", "judge_agrees", "judge_confidence", "noise_issue", "noise_quality",
                   "test_exact", "test_near", "test_cosine", "test_contaminated", "pool_contaminated", "semdup",
                   "semdup_of_id"):
        assert column in per_row.columns, column
    assert set(per_row["judge_label"].to_list()) <= {"ham", "spam"}
    assert summary["fidelity"]["method"] == "hf-exact-loglik" and summary["fidelity"]["rows"] == 40
    assert per_row.filter("test_exact")["id"].to_list() == ["r3", "r10"]  # case differs in r3's copy
    assert per_row.filter("pool_exact")["id"].to_list() == ["r5"]
    # rows built on the same phrase as r3 (r27, r35: 3 other random words) are paraphrases by
    # embedding; whatever else is flagged is flagged by cosine alone
    extra = per_row.filter(pl.col("test_contaminated") & ~pl.col("test_near"))
    assert extra["test_cosine_hit"].all() and (extra["test_cosine"] >= 0.95).all()
    count = summary["contamination"]["test"]["contaminated"]["count"]
    assert count == 2 + extra.height
    md = (out / "report.md").read_text()
    assert "Confusion matrix" in md and rows["text"][3] not in md  # report_texts: false keeps texts out
    # the verdicts are kept: a second audit with another threshold does not ask the judge again
    again = run_audit(cfg.model_copy(update={"semdup": cfg.semdup.model_copy(update={"threshold": 0.5})}))
    assert again["fidelity"] == summary["fidelity"]
    assert study.contaminated_share(run) == pytest.approx(count / 40)
    assert f"{count} of 40 rows" in study.train_warning(run)


def test_cli_on_a_file_without_a_test_set(tmp_path, cli_env):
    rows = _toy_rows(np.random.default_rng(3))
    rows.drop("id").write_csv(tmp_path / "rows.csv")
    result = run_cli("audit", str(tmp_path / "rows.csv"), "--no-judge", "--set", "noise.folds=3", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "contamination against the test set not checked: no test set given; pass --test FILE" in result.stderr
    report = json.loads((tmp_path / "rows.audit" / "report.json").read_text())
    assert report["contamination"]["test"] == {"skipped": "no test set given; pass --test FILE"}
    assert report["fidelity"]["skipped"].startswith("disabled") and report["complete"]
    assert pl.read_parquet(tmp_path / "rows.audit" / "rows.parquet")["id"][0] == "row-0"


@pytest.mark.parametrize(("args", "message"), [
    (["--test", "{tmp}/missing.csv"], "--test: file not found"),
    (["--set", "labels=[ham,other]"], "label(s) ['spam'] that are not in the judge's answer space"),
    (["--set", "noise.folds=1"], "noise.folds"),
    (["--judge-backend", "gpt"], "judge.backend"),
])
def test_bad_input_is_one_message_and_exit_2(tmp_path, cache, args, message):
    rows = _toy_rows(np.random.default_rng(4), 8)
    rows.write_csv(tmp_path / "rows.csv")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_user_error(run_in_process("audit", str(tmp_path / "rows.csv"), "--no-judge", *args), message)
    assert not (tmp_path / "rows.audit" / "report.json").exists()


def test_missing_input_and_help_stay_light(tmp_path):
    assert_user_error(run_in_process("audit", str(tmp_path / "nope")), "INPUT", "not found")
    probe = ("import sys\nfrom localsynth.cli import main\ntry:\n    main(['audit', '--help'])\nexcept SystemExit:\n"
             "    pass\nprint('HEAVY:' + ','.join(m for m in ('torch', 'vllm', 'cleanlab', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"


# ----------------------------------------------------------------------------- study helpers


def test_quality_table_and_gap_correlation_hand_computed():
    summaries = {}
    for k, task in enumerate(["t1", "t2", "t3", "t4"]):
        summaries[(task, "few-shot")] = {"rows": 100, "fidelity": {"agreement": 0.9 - 0.1 * k},
                                         "noise": {"share": 0.05 * k}, "semantic_duplicates": {"share": 0.01},
                                         "contamination": {"test": {"contaminated": {"count": k, "share": k / 100}},
                                                           "few_shot_pool": {"skipped": "x"}}}
    diversity = pl.DataFrame({"task": ["t1", "t2", "t3", "t4"], "set": ["few-shot"] * 4,
                              "remote_clique_cosine": [0.8, 0.7, 0.9, 0.6], "similarity_to_real": [0.5] * 4})
    quality = study.audit_quality_table(summaries, diversity)
    assert quality.filter(pl.col("task") == "t3")["contaminated_share"].item() == pytest.approx(0.02)
    cells = []
    for k, task in enumerate(["t1", "t2", "t3", "t4"]):
        for seed in range(3):  # gap = 0.1 (k + 1), exactly, at every seed
            cells.append({"task": task, "condition": "real", "model": "m", "size": "n100", "seed": seed,
                          "macro_f1": 0.9 + 0.01 * seed})
            cells.append({"task": task, "condition": "few-shot", "model": "m", "size": "n100", "seed": seed,
                          "macro_f1": 0.9 + 0.01 * seed - 0.1 * (k + 1)})
    table = study.signal_gap_correlation(quality, pl.DataFrame(cells), resamples=200)
    by = {r["signal"]: r for r in table.iter_rows(named=True)}
    assert by["fidelity"]["rho"] == pytest.approx(-1.0) and by["flagged_share"]["rho"] == pytest.approx(1.0)
    # diversity 0.8, 0.7, 0.9, 0.6 against gaps 0.1..0.4: ranks (3, 2, 4, 1) vs (1, 2, 3, 4): rho = 1 - 6*14/60
    assert by["remote_clique_cosine"]["rho"] == pytest.approx(1 - 6 * 14 / 60)
    assert by["semdup_share"]["rho"] is None and by["pool_copy_share"]["sets"] == 0  # constant, absent
    assert by["fidelity"]["low"] <= by["fidelity"]["rho"] <= by["fidelity"]["high"]


def test_filter_rows_drop_and_relabel():
    rows = pl.DataFrame({"id": ["a", "b", "c", "d"], "text": ["1", "2", "3", "4"], "label": ["x", "x", "y", "y"]})
    audit = pl.DataFrame({"id": ["a", "b", "c", "d"], "judge_label": ["x", "y", None, "y"],
                          "noise_issue": [False, False, True, False], "test_contaminated": [False, False, False, True],
                          "semdup": [False] * 4})
    kept, counts = study.filter_rows(rows, audit, judge="drop")
    assert kept["id"].to_list() == ["a", "c", "d"] and counts == {"judge_mismatch": 1}
    kept, _ = study.filter_rows(rows, audit, judge="relabel", drop_noisy=True, drop_contaminated=True)
    assert kept.select("id", "label").rows() == [("a", "x"), ("b", "y")] and kept.columns == rows.columns


# ----------------------------------------------------------------------------- the real vLLM engine


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_judge_answers_only_label_names(tmp_path, tiny_llama):
    """A random-weight model left alone writes noise; constrained to the label names it can
    only answer one of them (run in a fresh process: vLLM spawns its engine)."""
    script = tmp_path / "judge.py"
    script.write_text(f"""
import json
from localsynth.audit.judge import Judge
from localsynth.backends.settings import GeneratorConfig

if __name__ == "__main__":
    cfg = GeneratorConfig.model_validate({{"backend": "vllm", "model": {str(tiny_llama)!r},
        "vllm": {{"dtype": "float32", "max_model_len": 512, "enforce_eager": True, "cpu_kv_cache_gib": 0.25}}}})
    j = Judge(cfg)
    v = j.judge(["win a free prize now", "see you at home", "call now", "ok"] * 3, ["ham", "spam", "not_sure"])
    j.close()
    print("RESULT " + json.dumps({{"labels": v.labels, "method": v.method, "errors": v.errors}}))
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert out["method"] == "vllm-structured-choice" and out["errors"] == 0
    assert len(out["labels"]) == 12 and set(out["labels"]) <= {"ham", "spam", "not_sure"}


def test_openai_judge_falls_back_to_parsing_when_the_server_refuses_json_schema():
    """Fault injection: a server that answers 400 to `response_format` (one that does not
    support JSON schemas). The judge records the fallback method; the fake server's texts name
    no label, so every verdict is None rather than a guess."""
    from fault_server import MODEL, FaultServer

    from localsynth.backends.settings import GeneratorConfig

    seen = []

    def fault(n, body):
        seen.append("response_format" in body)
        return "400" if "response_format" in body else "ok"

    with FaultServer(fault) as server:
        cfg = GeneratorConfig.model_validate({"backend": "openai", "model": MODEL,
                                              "openai": {"base_url": server.base_url, "max_retries": 0}})
        j = judge.Judge(cfg)
        try:
            verdicts = j.judge(["a text", "another"], ["ham", "spam"])
        finally:
            j.close()
    assert seen[0] is True and seen[1:] == [False, False]
    assert verdicts.method == "openai-parse" and verdicts.labels == [None, None] and verdicts.errors == 2
