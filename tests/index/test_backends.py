"""Behavioural tests for lookalike.index (exact and HNSW backends)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pytest

from lookalike.index import (
    ExactIndex,
    HnswIndex,
    IndexManifest,
    IndexProvenance,
    VectorIndex,
    load_index,
    make_index,
)

BACKENDS = ["exact", "hnsw"]


def clustered(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    points = centres[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, dim))
    return points.astype(np.float32)


def small_index(backend: str, distance: str = "cosine", n: int = 600, **params) -> tuple[VectorIndex, np.ndarray]:
    x = clustered(n, 16, 8, seed=1)
    index = make_index(backend, 16, distance, **params)
    index.add([f"p{i}" for i in range(n)], x, [f"c{i % 3}" for i in range(n)])
    return index, x


def result_ids(results: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[i for i, _ in row] for row in results]


# --------------------------------------------------------------------------- recall


@pytest.fixture(scope="module")
def big_pair() -> tuple[HnswIndex, ExactIndex, np.ndarray]:
    n, dim = 20_000, 64
    x = clustered(n, dim, 50, seed=0)
    ids = [f"p{i}" for i in range(n)]
    cats = [f"c{i % 5}" for i in range(n)]
    # filter_brute_force_max=0 forces category searches through the faiss selector path.
    hnsw = make_index("hnsw", dim, "cosine", m=16, ef_construction=100, ef_search=64, filter_brute_force_max=0)
    exact = make_index("exact", dim, "cosine")
    hnsw.add(ids, x, cats)
    exact.add(ids, x, cats)
    queries = clustered(200, dim, 50, seed=0)  # same centres, fresh noise
    queries += 0.5 * np.random.default_rng(7).normal(size=queries.shape).astype(np.float32)
    return hnsw, exact, queries


def recall_vs(truth: list[list[tuple[str, float]]], approx: list[list[tuple[str, float]]], k: int) -> float:
    return float(np.mean([len(set(result_ids([t])[0]) & set(result_ids([a])[0])) / k for t, a in zip(truth, approx)]))


def test_hnsw_recall_at_10_matches_exact(big_pair):
    hnsw, exact, queries = big_pair
    approx, truth = hnsw.search(queries, 10), exact.search(queries, 10)
    assert all(len(row) == 10 for row in approx)
    assert recall_vs(truth, approx, 10) >= 0.99
    # Same items must get the same distance from both backends.
    truth_d = {(q, i): d for q, row in enumerate(truth) for i, d in row}
    shared = [(d, truth_d[q, i]) for q, row in enumerate(approx) for i, d in row if (q, i) in truth_d]
    assert len(shared) >= 0.99 * 10 * len(queries)
    np.testing.assert_allclose(*zip(*shared), atol=1e-5)


def test_hnsw_category_filter_uses_selector_and_keeps_recall(big_pair):
    hnsw, exact, queries = big_pair
    approx = hnsw.search(queries, 10, category="c3")
    truth = exact.search(queries, 10, category="c3")
    assert all(len(row) == 10 for row in approx)
    assert {hnsw.category_of(i) for row in approx for i, _ in row} == {"c3"}
    assert recall_vs(truth, approx, 10) >= 0.97


# --------------------------------------------------------------------------- distances


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_returns_plain_euclidean_and_cosine_is_one_minus_similarity(backend):
    l2 = make_index(backend, 2, "l2")
    l2.add(["origin", "far"], np.array([[0, 0], [3, 4]], dtype=np.float32), ["a", "a"])
    assert l2.search(np.array([0.0, 0.0]), 2) == [[("origin", 0.0), ("far", pytest.approx(5.0))]]

    cos = make_index(backend, 2, "cosine")
    cos.add(["x", "diag", "y"], np.array([[5, 0], [1, 1], [0, 2]], dtype=np.float32), ["a"] * 3)
    (row,) = cos.search(np.array([[10.0, 0.0]]), 3)
    assert [i for i, _ in row] == ["x", "diag", "y"]
    np.testing.assert_allclose([d for _, d in row], [0.0, 1 - np.sqrt(0.5), 1.0], atol=1e-6)
    np.testing.assert_allclose(cos.vector_of("x"), [1.0, 0.0])  # stored normalised


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_items_than_k_returns_fewer(backend):
    index, _ = small_index(backend, n=4)
    assert [len(r) for r in index.search(np.ones((2, 16)), 10)] == [4, 4]
    assert index.search(np.ones(16), 3, category="missing") == [[]]


# --------------------------------------------------------------------------- mutation


@pytest.mark.parametrize("backend", BACKENDS)
def test_removed_ids_never_returned_and_readd_works(backend):
    index, x = small_index(backend)
    queries = x[:20]
    before = result_ids(index.search(queries, 5))
    doomed = sorted({i for row in before for i in row})  # every current top-5 hit
    index.remove(doomed)
    assert len(index) == 600 - len(doomed)
    after = index.search(queries, 5)
    assert all(len(row) == 5 for row in after)
    assert not {i for row in result_ids(after) for i in row} & set(doomed)
    assert not index.contains(doomed[0])
    with pytest.raises(KeyError):
        index.vector_of(doomed[0])

    slot = int(doomed[0][1:])
    index.add([doomed[0]], x[slot : slot + 1], ["c9"])
    assert index.search(x[slot], 1)[0][0][0] == doomed[0]
    assert index.category_of(doomed[0]) == "c9"


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_existing_id_replaces_vector_and_category(backend):
    index, x = small_index(backend)
    new_vec = -x[0]
    index.add(["p0"], new_vec[None, :], ["c2"])
    assert len(index) == 600
    assert index.n_tombstones == 1
    assert index.category_of("p0") == "c2"
    expected = new_vec / np.linalg.norm(new_vec)
    np.testing.assert_allclose(index.vector_of("p0"), expected, atol=1e-6)
    hits = index.search(new_vec, 3)[0]
    assert hits[0][0] == "p0"
    assert sum(i == "p0" for i, _ in hits) == 1  # old slot is gone
    # p0 left its old category c0 entirely.
    assert "p0" not in result_ids(index.search(x[0], 600, category="c0"))[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_unknown_id_raises_and_removes_nothing(backend):
    index, _ = small_index(backend)
    with pytest.raises(KeyError, match="nope.*zilch|zilch.*nope"):
        index.remove(["p1", "nope", "zilch"])
    assert index.contains("p1") and len(index) == 600


@pytest.mark.parametrize("backend", BACKENDS)
def test_category_filter_returns_only_that_category_and_k_items(backend):
    # The HNSW selector path is forced; a 12-item category stresses short rows.
    params = {"filter_brute_force_max": 0} if backend == "hnsw" else {}
    index, x = small_index(backend, **params)
    tiny = clustered(12, 16, 1, seed=5)
    index.add([f"t{i}" for i in range(12)], tiny, ["tiny"] * 12)
    for cat, k in [("c1", 10), ("tiny", 10), ("tiny", 12), ("tiny", 20)]:
        got = result_ids(index.search(x[:15], k, category=cat))
        assert all(len(row) == min(k, 12 if cat == "tiny" else 200) for row in got)
        assert {index.category_of(i) for row in got for i in row} == {cat}
        if cat == "tiny" and k >= 12:
            assert all(set(row) == {f"t{i}" for i in range(12)} for row in got)
    assert index.categories() == {"c0", "c1", "c2", "tiny"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclude_ids_per_query(backend):
    index, x = small_index(backend)
    plain = result_ids(index.search(x[:2], 5))
    excluded = [set(plain[0][:3]), set()]
    got = result_ids(index.search(x[:2], 5, exclude_ids=excluded))
    assert all(len(row) == 5 for row in got)
    assert not set(got[0]) & excluded[0]
    assert got[0][:2] == plain[0][3:5]
    assert got[1] == plain[1]
    with pytest.raises(ValueError):
        index.search(x[:2], 5, exclude_ids=[set()])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_drops_tombstones_and_keeps_results(backend):
    index, x = small_index(backend)
    index.remove([f"p{i}" for i in range(0, 600, 2)])
    before = index.search(x[:10], 5)
    assert index.compact() == 300
    assert index.n_tombstones == 0 and len(index) == 300
    after = index.search(x[:10], 5)
    assert result_ids(after) == result_ids(before)


def test_concurrent_searches_match_serial():
    index, x = small_index("hnsw", filter_brute_force_max=0)
    index.remove(["p3", "p4"])
    serial = [index.search(x[i : i + 5], 5, category=f"c{i % 3}") for i in range(0, 100, 5)]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda i: index.search(x[i : i + 5], 5, category=f"c{i % 3}"), range(0, 100, 5)))
    assert parallel == serial


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_save_load_roundtrip(backend, distance, tmp_path):
    index, x = small_index(backend, distance)
    index.remove(["p1", "p2"])
    index.add(["p5"], x[6:7], ["c0"])
    index.provenance = IndexProvenance(model_version="7", embeddings_table="/t/embeddings",
                                       embeddings_version=3, products_table="/t/products",
                                       products_version=2, built_at="2026-01-01T00:00:00")
    index.save(tmp_path / "idx")

    manifest = IndexManifest.read(tmp_path / "idx")
    assert manifest.backend == backend and manifest.dim == 16
    assert manifest.distance == distance and manifest.count == 598
    assert manifest.provenance == index.provenance and manifest.params == asdict(index.params)

    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is type(index)
    assert loaded.provenance == index.provenance and len(loaded) == 598
    assert loaded.categories() == index.categories()
    assert not loaded.contains("p1") and loaded.category_of("p5") == "c0"
    np.testing.assert_array_equal(loaded.vector_of("p5"), index.vector_of("p5"))
    for cat in (None, "c1"):
        assert loaded.search(x[:20], 7, category=cat) == index.search(x[:20], 7, category=cat)
    loaded.add(["new"], x[:1], ["c1"])  # still mutable after load
    assert loaded.search(x[0], 1, category="c1")[0][0][0] in {"new", "p0"}


def test_load_rejects_missing_manifest_and_unknown_backend(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path)
    index, _ = small_index("exact", n=5)
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["backend"] = "annoy"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="annoy"):
        load_index(tmp_path)


# --------------------------------------------------------------------------- factory / validation


def test_make_index_unknown_backend_names_choices():
    with pytest.raises(ValueError, match=r"unknown index backend 'scann'; registered: .*'exact'"):
        make_index("scann", 8, "cosine")
    assert isinstance(make_index("hnsw", 8, "l2", m=8), HnswIndex)
    assert isinstance(make_index("exact", 8), ExactIndex)


def test_invalid_inputs_raise():
    index = make_index("exact", 4, "cosine")
    with pytest.raises(ValueError, match="distance"):
        make_index("exact", 4, "dot")
    with pytest.raises(ValueError, match="shape"):
        index.add(["a"], np.zeros((1, 5)), ["c"])
    with pytest.raises(ValueError, match="same length"):
        index.add(["a", "b"], np.zeros((1, 4)), ["c"])
    with pytest.raises(ValueError, match="unique"):
        index.add(["a", "a"], np.zeros((2, 4)), ["c", "c"])
    with pytest.raises(ValueError, match="NaN"):
        index.add(["a"], np.full((1, 4), np.nan), ["c"])
    with pytest.raises(ValueError, match="k must"):
        index.search(np.zeros(4), 0)
    assert len(index) == 0
