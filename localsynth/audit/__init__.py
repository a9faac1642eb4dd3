"""Audit a labelled synthetic set before training on it: does the label fit the text (an LLM
judge), which labels look wrong to a classifier trained on the rest (confident learning), which
texts leak the test set or copy the few-shot pool (exact, MinHash, embedding cosine), which are
semantic duplicates within a label; and, across a study, which of these signals predicts the
real-minus-synthetic F1 gap.

Nothing heavy is imported here: each module imports torch, vllm or cleanlab where it uses them.

    inputs.py         the rows (a generation run or a labelled file), labels, reference sets
    nearest.py        blocked nearest-neighbour cosine (never an N x M matrix)
    judge.py          label fidelity by an LLM judge (vLLM choice, hf log-likelihood, OpenAI)
    noise.py          out-of-fold probabilities -> cleanlab's find_label_issues
    contamination.py  against the test set and the few-shot pool
    semdup.py         within-label embedding near-duplicates
    report.py         audit/rows.parquet, report.md, report.json (written last)
    run.py            AuditConfig and run_audit
    study.py          what the study report, train and the filters call
"""
