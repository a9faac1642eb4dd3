"""Diversity measures against hand-computed values and brute force (scipy cdist / scikit-learn);
embeddings and their cache; the `analyze diversity` command and its bad inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from helpers import REPO, assert_user_error, run_cli
from scipy.spatial.distance import cdist
from sklearn.metrics.pairwise import cosine_similarity
from tiny_encoders import build_tiny_bert

from localsynth.analysis import diversity as dv
from localsynth.analysis import embeddings
from localsynth.errors import UserError

TEXTS = [
    "win a free prize now", "call now to claim cash", "see you at home tonight", "thanks for the movie",
    "the market is up and shares gained", "the team won the match", "sorry going home later",
    "what a terrible film plot", "urgent text reply stop", "good story and funny actor",
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("enc") / "bert", None)


def brute(x: np.ndarray, metric: str) -> tuple[float, float, np.ndarray]:
    """(Remote-Clique, Chamfer, nearest index) from the full matrix, in float64."""
    d = cdist(x.astype(np.float64), x.astype(np.float64), metric)
    n = len(x)
    rc = d.sum() / (n * (n - 1))  # the diagonal is 0
    np.fill_diagonal(d, np.inf)
    return rc, d.min(1).mean(), d.argmin(1)


# ----------------------------------------------------------------------------- hand-computed


def test_euclidean_by_hand():
    x = np.array([[0, 0], [3, 0], [0, 4]], dtype=np.float32)  # distances 3, 4, 5
    assert dv.remote_clique(x, "euclidean", block_size=2) == pytest.approx(4.0, abs=1e-12)  # (3+4+5)*2 / 6
    assert dv.chamfer(x, "euclidean", block_size=2) == pytest.approx(10 / 3, abs=1e-12)  # 3, 3, 4
    nn, dist = dv.nearest_neighbours(x, "euclidean", block_size=2)
    assert nn.tolist() == [1, 0, 0] and dist.tolist() == [3.0, 3.0, 4.0]


def test_small_blocks_leave_torch_threads_as_they_were():
    import torch

    before = torch.get_num_threads()
    dv.chamfer(np.eye(5, dtype=np.float32), block_size=2)  # small blocks run on one thread, then restore
    assert torch.get_num_threads() == before


def test_cosine_by_hand():
    x = np.array([[2, 0], [0, 1], [3, 3]], dtype=np.float32)  # raw: the scale must not matter
    h = 1 - 1 / math.sqrt(2)  # distance of (1, 1) to either axis
    assert dv.remote_clique(x, "cosine") == pytest.approx((1 + 2 * h) / 3, abs=1e-7)
    assert dv.chamfer(x, "cosine", block_size=1) == pytest.approx(h, abs=1e-12)
    synthetic = np.array([[1, 0], [0, 5], [1, 1], [-1, 0]], dtype=np.float32)
    real = np.array([[7, 0], [0, 1]], dtype=np.float32)
    # real (1,0): top-2 cosines 1, 1/sqrt2; real (0,1): 1, 1/sqrt2
    assert dv.similarity_to_real(real, synthetic, k=2, block_size=3) == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-7)
    assert dv.similarity_to_real(real, synthetic, k=1) == pytest.approx(1.0, abs=1e-7)


def test_duplicates_are_at_distance_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 16)).astype(np.float32) * 50 + 100  # large offset: float32 cancellation territory
    x = np.vstack([x, x[:5]])
    nn, dist = dv.nearest_neighbours(x, "euclidean", block_size=8)
    assert np.all(dist[:5] == 0) and np.all(dist[20:] == 0)
    assert dv.nearest_neighbours(x, "cosine", block_size=8)[1][:5] == pytest.approx(0, abs=1e-12)


# ----------------------------------------------------------------------------- against brute force


@pytest.mark.parametrize("block_size", [2, 7, 32, 500])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_blocked_equals_brute_force(metric, block_size):
    rng = np.random.default_rng(block_size)
    x = (rng.normal(size=(103, 24)) + 0.4).astype(np.float32)  # 103: no block size above divides it
    for normalize in (False, True):
        y = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x
        rc, ch, nn = brute(y, metric)
        kw = {"normalize": normalize, "block_size": block_size}
        assert dv.remote_clique(x, metric, **kw) == pytest.approx(rc, rel=1e-6)
        assert dv.chamfer(x, metric, **kw) == pytest.approx(ch, rel=1e-6)
        assert dv.nearest_neighbours(x, metric, **kw)[0].tolist() == nn.tolist()


@pytest.mark.parametrize("block_size", [3, 16, 1000])
def test_similarity_to_real_equals_brute_force(block_size):
    rng = np.random.default_rng(0)
    real, synthetic = rng.normal(size=(37, 12)), rng.normal(size=(53, 12))
    expected = np.sort(cosine_similarity(real, synthetic), axis=1)[:, -5:].mean()
    got = dv.similarity_to_real(real.astype(np.float32), synthetic.astype(np.float32), block_size=block_size)
    assert got == pytest.approx(expected, rel=1e-6)


def test_bad_arrays():
    with pytest.raises(UserError, match="at least 2"):
        dv.chamfer(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(UserError, match="zero vector"):
        dv.remote_clique(np.array([[1, 0], [0, 0]], dtype=np.float32), "cosine")
    with pytest.raises(UserError, match="NaN"):
        dv.chamfer(np.array([[1, np.nan], [0, 1]], dtype=np.float32))
    with pytest.raises(UserError, match="dimension"):
        dv.similarity_to_real(np.ones((3, 4)), np.ones((6, 5)))
    with pytest.raises(UserError, match="unknown metric"):
        dv.chamfer(np.eye(3), "manhattan")


# ----------------------------------------------------------------------------- embeddings


def test_embed_mean_pools_in_input_order_and_caches(encoder, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    first = embeddings.embed(TEXTS, encoder, batch_size=3, device="cpu", cache_root=tmp_path)
    assert first.shape == (len(TEXTS), 32) and first.dtype == np.float32
    assert np.linalg.norm(first, axis=1) == pytest.approx(1.0, abs=1e-5)
    # One text at a time, pooled by hand: batching sorted by length does not change a vector.
    tok, model = AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder).eval()
    with torch.inference_mode():
        for i in (0, 4, 9):
            hidden = model(**tok(TEXTS[i], return_tensors="pt")).last_hidden_state[0].mean(0)
            assert first[i] == pytest.approx((hidden / hidden.norm()).numpy(), abs=1e-5)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the embeddings are cached")

    monkeypatch.setattr(embeddings, "_load_encoder", no_load)
    again = embeddings.embed(TEXTS, encoder, batch_size=3, device="cpu", cache_root=tmp_path)
    assert np.array_equal(again, first)
    with pytest.raises(AssertionError, match="was loaded"):  # other texts or settings: a different key
        embeddings.embed(TEXTS[:-1], encoder, device="cpu", cache_root=tmp_path)
    with pytest.raises(AssertionError, match="was loaded"):
        embeddings.embed(TEXTS, encoder, device="cpu", cache_root=tmp_path, normalize=False)


def test_cache_key_separates_texts():

    folder = REPO / "localsynth"
    assert embeddings.cache_key(folder, ["ab", "c"], 64, True) != embeddings.cache_key(folder, ["a", "bc"], 64, True)
    assert embeddings.cache_key(folder, ["a"], 64, True) != embeddings.cache_key(folder, ["a"], 128, True)


def test_importing_the_analyses_does_not_import_torch():
    code = "import sys, localsynth.cli, localsynth.analysis.diversity, localsynth.analysis.agreement; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- the command


def write_texts(path, texts, column="text"):
    pl.DataFrame({column: texts, "label": ["x"] * len(texts)}).write_csv(path)
    return path


def write_run_dir(root, texts, kept):
    shards = root / "shards"
    shards.mkdir(parents=True)
    pl.DataFrame({"text": texts, "kept": kept, "label": ["x"] * len(texts)}).write_parquet(shards / "00000-of-00001.parquet")
    (shards / "00000-of-00001.done").write_text("{}")
    return root


def test_cli_diversity(tmp_path, cli_env, encoder):
    real = write_texts(tmp_path / "real.csv", TEXTS)
    run = write_run_dir(tmp_path / "run", TEXTS[:6] + ["not kept"], [True] * 6 + [False])
    emb = tmp_path / "pre.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32))
    out = tmp_path / "div.json"
    result = run_cli(
        "analyze", "diversity", "--texts", str(run), "--texts", str(emb), "--real", str(real), "--model", str(encoder),
        "--metric", "both", "--block-size", "3", "--device", "cpu", "--top-k", "2", "--out", str(out), env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert [rows[n]["n"] for n in ("real", "run", "pre")] == [10, 6, 8]
    assert rows["real"]["similarity_to_real"] is None and 0 < rows["run"]["similarity_to_real"] <= 1
    expected = embeddings.embed(TEXTS[:6], encoder, device="cpu", cache_root=tmp_path / "cache" / "embeddings")
    assert rows["run"]["chamfer_cosine"] == pytest.approx(brute(expected, "cosine")[1], rel=1e-5)
    assert "| run " in result.stdout and "remote_clique_euclidean" in result.stdout
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 2  # real and run, under LOCALSYNTH_CACHE


def test_cli_embeddings_of_another_dimension(tmp_path, cli_env, encoder):
    texts = write_texts(tmp_path / "synthetic.csv", TEXTS)
    other = tmp_path / "other-model.npy"
    np.save(other, np.ones((5, 8), dtype=np.float32) + np.eye(5, 8, dtype=np.float32))
    result = run_cli("analyze", "diversity", "--texts", str(texts), "--real", str(other), "--model", str(encoder),
                     "--device", "cpu", env=cli_env)
    assert_user_error(result, "differ in dimension", "other-model: 8", "synthetic: 32", "same model")


def test_cli_empty_text_set(tmp_path, cli_env):
    empty = write_texts(tmp_path / "blank.csv", ["", "  "])
    run = write_run_dir(tmp_path / "run", ["dropped"], [False])
    for path in (empty, run):
        result = run_cli("analyze", "diversity", "--texts", str(path), env=cli_env)
        assert_user_error(result, str(path), "no texts")


def test_cli_bad_options(tmp_path, cli_env):
    texts = write_texts(tmp_path / "t.csv", TEXTS)
    assert_user_error(run_cli("analyze", "diversity", "--texts", str(texts), "--metric", "jaccard", env=cli_env),
                      "--metric must be cosine, euclidean or both")
    wrong = write_texts(tmp_path / "w.csv", TEXTS, column="sentence")
    assert_user_error(run_cli("analyze", "diversity", "--texts", str(wrong), env=cli_env), "no column 'text'", "--text-column")
