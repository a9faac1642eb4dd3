"""Diversity of a text set over sentence embeddings, and its similarity to real data.

Remote-Clique (mean over texts of the mean distance to all other texts) and Chamfer (mean over
texts of the distance to the nearest other text), after Cox et al. 2021, under cosine distance
(1 - cos) or Euclidean distance; and similarity to real data (for each real text, the mean
cosine of its top-k most similar synthetic texts, averaged). None of them builds the N x N
matrix: Remote-Clique under cosine is closed form in O(N d) (the sum s of the normalised vectors
gives the mean pairwise cosine (||s||^2 - N) / (N (N - 1))); the rest runs over blocks of
`block_size` x `block_size` distances (torch, CPU or GPU), each symmetric pair of blocks once.

Embeddings come from `localsynth.analysis.embeddings`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from localsynth.analysis.embeddings import default_model_dir, embed, model_width
from localsynth.analysis.settings import EMBED_DEFAULTS
from localsynth.errors import UserError
from localsynth.generation.rundir import is_run_dir, read_kept

METRICS = ("cosine", "euclidean")
DEFAULT_BLOCK = 4096


# ----------------------------------------------------------------------------- checks


def check_embeddings(emb: Any, what: str = "embeddings", min_rows: int = 2) -> np.ndarray:
    """A contiguous float32 N x d array of finite values with at least `min_rows` rows."""
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise UserError(f"{what}: expected an N x d array of embeddings, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise UserError(f"{what}: {arr.shape[0]} text(s); these measures need at least {min_rows}; add texts")
    if arr.shape[1] == 0:
        raise UserError(f"{what}: embeddings of dimension 0; embed the texts again")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for start in range(0, arr.shape[0], 1 << 16):  # in slabs: no N x d mask
        if not np.isfinite(arr[start : start + (1 << 16)]).all():
            raise UserError(f"{what}: the embeddings hold NaN or infinite values; embed the texts again")
    return arr


def _metric(metric: str) -> str:
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}'; use one of: {', '.join(METRICS)}")
    return metric


def _torch(device: str, block_size: int):
    """(torch, the torch.device to compute on); torch is imported here, not at module import."""
    import torch

    from localsynth.training.predict import resolve_device

    if block_size < 1:
        raise UserError(f"block size must be at least 1; got {block_size}")
    return torch, torch.device(resolve_device(device, torch))


@contextlib.contextmanager
def _threads(torch, dev, rows: int, cols: int, width: int):
    """One CPU thread when each block is small: a parallel region per tiny op costs more than it
    saves, and on a busy machine each waits for a time slice (measured: a 2 x 24 x 2 matmul took
    15 ms with 2 threads on 2 loaded cores, against microseconds on 1)."""
    before = torch.get_num_threads()
    small = dev.type == "cpu" and before > 1 and rows * cols * width < 1 << 22
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def _norms(torch, x, what: str, offset: int = 0):
    norms = torch.linalg.vector_norm(x, dim=1)
    if bool((norms == 0).any()):
        row = offset + int((norms == 0).nonzero()[0])
        raise UserError(f"{what}: row {row} is a zero vector, which has no cosine direction; drop it or embed again")
    return norms


def _unit(torch, x, what: str):
    return x / _norms(torch, x, what)[:, None]


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, n)) for start in range(0, n, block)]


# ----------------------------------------------------------------------------- measures


def remote_clique(emb: Any, metric: str = "cosine", *, normalize: bool = False,
                  block_size: int = DEFAULT_BLOCK, device: str = "cpu") -> float:
    """Mean over texts of the mean distance to every other text. Cosine: closed form, O(N d).
    Euclidean (of L2-normalised vectors with `normalize`): exact, over blocks, O(N^2 d)."""
    metric = _metric(metric)
    x = check_embeddings(emb)
    n = x.shape[0]
    torch, dev = _torch(device, block_size)
    if metric == "cosine":
        # Sum of the unit vectors, in slabs of about block_size^2 numbers (float64 across slabs).
        rows = max(1, block_size * block_size // x.shape[1])
        with torch.inference_mode(), _threads(torch, dev, min(rows, n), 1, x.shape[1]):
            s = torch.zeros(x.shape[1], dtype=torch.float64, device=dev)
            for start, stop in _blocks(n, rows):
                part = torch.from_numpy(x[start:stop]).to(dev)
                s += (1.0 / _norms(torch, part, "embeddings", start)) @ part
            mean_cos = (float(s @ s) - n) / (n * (n - 1))
        return 1.0 - mean_cos
    b = min(block_size, n)
    with torch.inference_mode(), _threads(torch, dev, b, b, x.shape[1]):
        t = torch.from_numpy(x).to(dev)
        t = _unit(torch, t, "embeddings") if normalize else t
        t = t - t.mean(0, dtype=torch.float64).float()  # distances do not move; float32 cancellation does less harm
        sq = (t * t).sum(1)
        total = 0.0
        buf = torch.empty((b, b), device=dev)  # reused: no fresh block (and its page faults) per product
        spans = _blocks(n, block_size)
        for a, (i0, i1) in enumerate(spans):
            for j0, j1 in spans[a:]:
                d2 = buf[: i1 - i0, : j1 - j0]
                torch.addmm(sq[j0:j1][None, :], t[i0:i1], t[j0:j1].T, alpha=-2.0, out=d2).add_(sq[i0:i1][:, None])
                if i0 == j0:
                    d2.fill_diagonal_(0.0)  # exactly zero, not sqrt of a rounding error
                # Row sums in float32, their total in float64: sum(dtype=float64) of the block took 60 ms, this 3.
                part = float(d2.clamp_min_(0.0).sqrt_().sum(1).sum(dtype=torch.float64))
                total += part if i0 == j0 else 2.0 * part
        return total / (n * (n - 1))


def nearest_neighbours(emb: Any, metric: str = "cosine", *, normalize: bool = False,
                       block_size: int = DEFAULT_BLOCK, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(index of each text's nearest other text, the distance to it), over blocks: memory is
    O(block_size^2 + N d). The distance to the chosen neighbour is recomputed exactly (float64)
    from the two vectors, so near-duplicates read ~0 rather than sqrt of a rounding error."""
    metric = _metric(metric)
    x = check_embeddings(emb)
    n = x.shape[0]
    torch, dev = _torch(device, block_size)
    b = min(block_size, n)
    with torch.inference_mode(), _threads(torch, dev, b, b, x.shape[1]):
        t = torch.from_numpy(x).to(dev)
        if metric == "cosine" or normalize:
            t = _unit(torch, t, "embeddings")
        if metric == "euclidean":
            t = t - t.mean(0, dtype=torch.float64).float()
            sq = (t * t).sum(1)
        # A score per pair, higher = nearer: cos for cosine, -d^2 = 2 x.y - |x|^2 - |y|^2 for Euclidean.
        best = torch.full((n,), -torch.inf, device=dev)
        arg = torch.zeros(n, dtype=torch.long, device=dev)
        buf = torch.empty((b, b), device=dev)  # reused: a fresh 64 MiB block per product cost 20% in page faults
        spans = _blocks(n, block_size)
        for a, (i0, i1) in enumerate(spans):
            for j0, j1 in spans[a:]:
                g = buf[: i1 - i0, : j1 - j0]
                if metric == "euclidean":
                    torch.addmm(sq[j0:j1][None, :], t[i0:i1], t[j0:j1].T, beta=-1.0, alpha=2.0, out=g)
                    g.sub_(sq[i0:i1][:, None])
                else:
                    torch.matmul(t[i0:i1], t[j0:j1].T, out=g)
                if i0 == j0:
                    g.fill_diagonal_(-torch.inf)
                _update(torch, best, arg, i0, g, 1, j0)
                if i0 != j0:  # the same block read down its columns: the pairs (j, i)
                    _update(torch, best, arg, j0, g, 0, i0)
        nn = arg.cpu().numpy()
    dist = np.empty(n, dtype=np.float64)
    for start, stop in _blocks(n, block_size):  # float64 copies of block_size rows at a time
        a, b = x[start:stop].astype(np.float64), x[nn[start:stop]].astype(np.float64)
        if metric == "cosine" or normalize:
            a /= np.linalg.norm(a, axis=1, keepdims=True)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
        if metric == "cosine":
            dist[start:stop] = np.clip(1.0 - np.einsum("ij,ij->i", a, b), 0.0, 2.0)
        else:
            dist[start:stop] = np.linalg.norm(a - b, axis=1)
    return nn, dist


def _update(torch, best, arg, start: int, g, dim: int, offset: int) -> None:
    """Improve best / arg of the points along the other axis of `g` from its maxima along `dim`.
    Values first (amax: 2-4 ms a 4096^2 block, against 9 ms for max with indices along rows and
    57 ms down columns), then the indices of the few points that improved."""
    values = g.amax(dim=dim)
    better = (values > best[start : start + values.shape[0]]).nonzero().squeeze(1)
    if better.numel():
        rows = g.index_select(1 - dim, better)
        best[start + better] = values[better]
        arg[start + better] = rows.argmax(dim=dim) + offset


def chamfer(emb: Any, metric: str = "cosine", *, normalize: bool = False,
            block_size: int = DEFAULT_BLOCK, device: str = "cpu") -> float:
    """Mean over texts of the distance to the nearest other text."""
    return float(nearest_neighbours(emb, metric, normalize=normalize, block_size=block_size, device=device)[1].mean())


def similarity_to_real(real: Any, synthetic: Any, *, k: int = 5, block_size: int = DEFAULT_BLOCK,
                       device: str = "cpu") -> float:
    """For each real text, the mean cosine of its k most similar synthetic texts; averaged."""
    r = check_embeddings(real, "real embeddings", 1)
    s = check_embeddings(synthetic, "synthetic embeddings", 1)
    if r.shape[1] != s.shape[1]:
        raise UserError(
            f"real embeddings have dimension {r.shape[1]} but synthetic ones {s.shape[1]}; embed both "
            f"with the same model"
        )
    if k < 1 or k > s.shape[0]:
        raise UserError(f"top-k must be between 1 and the {s.shape[0]} synthetic texts; got {k}")
    torch, dev = _torch(device, block_size)
    with torch.inference_mode(), _threads(torch, dev, min(block_size, r.shape[0]), min(block_size, s.shape[0]), r.shape[1]):
        rt = _unit(torch, torch.from_numpy(r).to(dev), "real embeddings")
        st = _unit(torch, torch.from_numpy(s).to(dev), "synthetic embeddings")
        total = 0.0
        buf = torch.empty((min(block_size, r.shape[0]), min(block_size, s.shape[0])), device=dev)
        for i0, i1 in _blocks(r.shape[0], block_size):
            top = torch.full((i1 - i0, k), -torch.inf, device=dev)
            for j0, j1 in _blocks(s.shape[0], block_size):
                sims = torch.matmul(rt[i0:i1], st[j0:j1].T, out=buf[: i1 - i0, : j1 - j0])
                top = torch.cat([top, sims.topk(min(k, j1 - j0), dim=1).values], dim=1).topk(k, dim=1).values
            total += float(top.sum(dtype=torch.float64))
    return total / (r.shape[0] * k)


# ----------------------------------------------------------------------------- text sets


class TextSet:
    """A named set of texts (or of precomputed embeddings, from a .npy file)."""

    def __init__(self, name: str, source: str, texts: list[str] | None = None, embeddings: np.ndarray | None = None):
        self.name, self.source, self.texts, self.embeddings = name, source, texts, embeddings


def load_text_set(path: str | Path, text_column: str = "text", option: str = "--texts") -> TextSet:
    """Texts from a generation run directory (the kept rows of its finished shards), a data folder
    (its train split: an import's train.parquet, or train.csv; give `folder/test.parquet` for the
    test split), a CSV / TSV / JSONL / Parquet file with a text column, or precomputed embeddings
    in a .npy file."""
    import polars as pl

    from localsynth.data.sources import file_kind, read_table

    given = Path(os.path.expanduser(str(path)))
    if not given.exists():
        raise UserError(f"{option}: {given} not found; give a generation run directory, an imported data folder or a file")
    if given.suffix.lower() == ".npy":
        try:
            emb = np.load(given, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{option}: cannot read embeddings from {given} ({exc}); save them with numpy.save") from None
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise UserError(f"{option}: {given} holds an array of shape {emb.shape}; expected N x d embeddings, N >= 1")
        return TextSet(given.stem, str(given), embeddings=check_embeddings(emb, str(given), 1))
    if is_run_dir(given):
        df = read_kept(given, ["text"], option)
        name, column = given.name, "text"
    elif given.is_dir():
        splits = sorted((p for p in given.iterdir() if p.name.split(".")[0] == "train" and file_kind(p)),
                        key=lambda p: p.suffix != ".parquet")  # an import's train.parquet first
        if not splits:
            raise UserError(
                f"{option}: {given} is neither a generation run directory (shards/) nor a data folder with a train "
                f"split (train.parquet from 'localsynth data import', or train.csv); give a file with texts instead"
            )
        df, name, column = read_table(splits[0], option), f"{given.name}/train", text_column
    else:
        df, name, column = read_table(given, option), given.stem, text_column
    if column not in df.columns:
        raise UserError(
            f"{option}: {given} has no column '{column}'; it has {', '.join(repr(c) for c in df.columns)}; "
            f"name the text column with --text-column"
        )
    texts = [t for t in df[column].cast(pl.Utf8).drop_nulls().to_list() if t.strip()]
    if not texts:
        raise UserError(f"{option}: {given} has no texts (no non-empty '{column}' values); point it at a set with texts")
    return TextSet(name, str(given), texts=texts)


def _same_width(dims: list[tuple[str, int | None]]) -> None:
    if len({d for _, d in dims if d is not None}) > 1:
        shown = ", ".join(f"{name}: {d}" for name, d in dims if d is not None)
        raise UserError(
            f"the embeddings differ in dimension ({shown}), so they come from different models; embed every set "
            f"with the same model (one --model for all texts, or .npy files from that model)"
        )


def analyze(sets: Sequence[TextSet], real: TextSet | None = None, *, metrics: Sequence[str] = ("cosine",),
            model_dir: str | Path | None = None, batch_size: int = EMBED_DEFAULTS.batch_size,
            max_length: int = EMBED_DEFAULTS.max_length, device: str = EMBED_DEFAULTS.device,
            block_size: int = DEFAULT_BLOCK, k: int = 5, normalize: bool = True, cache: bool = True) -> list[dict[str, Any]]:
    """One row per set (the real set first, when given): size, dimension, Remote-Clique and
    Chamfer for each metric and, with `real`, similarity to it. `normalize` L2-normalises the
    embeddings (as MiniLM's pipeline does) before the Euclidean measures; cosine is scale-free."""
    for m in metrics:
        _metric(m)
    everything = ([real] if real is not None else []) + list(sets)
    for s in everything:  # before any embedding, which is the slow part
        if (len(s.texts) if s.texts is not None else s.embeddings.shape[0]) < 2:
            raise UserError(f"{s.source}: a single text; diversity needs at least two texts per set")
    model = Path(os.path.expanduser(str(model_dir))) if model_dir is not None else None
    if any(s.texts is not None for s in everything):
        model = model or default_model_dir()
    width = model_width(model) if model is not None else None
    _same_width([(s.name, s.embeddings.shape[1] if s.embeddings is not None else width) for s in everything])
    embedded = [s.embeddings if s.embeddings is not None else
                embed(s.texts, model, batch_size=batch_size, max_length=max_length, device=device, normalize=normalize,
                      cache=cache) for s in everything]
    _same_width([(s.name, e.shape[1]) for s, e in zip(everything, embedded)])
    names = [s.name for s in everything]
    rows = []
    for s, emb in zip(everything, embedded):
        name = s.name if names.count(s.name) == 1 else f"{Path(s.source).parent.name}/{Path(s.source).name}"
        row: dict[str, Any] = {"name": name, "source": s.source, "n": int(emb.shape[0]), "dim": int(emb.shape[1])}
        for m in metrics:
            opts = {"normalize": normalize, "block_size": block_size, "device": device}
            row[f"remote_clique_{m}"] = remote_clique(emb, m, **opts)
            row[f"chamfer_{m}"] = chamfer(emb, m, **opts)
        if real is not None:
            row["similarity_to_real"] = None if s is real else similarity_to_real(
                embedded[0], emb, k=k, block_size=block_size, device=device)
        rows.append(row)
    return rows
