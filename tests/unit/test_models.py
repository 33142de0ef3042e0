"""The recommender models (training/models.py) on a tiny two-group matrix.

Group A (12 users) likes items 0-9, group B (8 users) items 10-19, so group-A
items are the more popular ones: a model that only follows popularity would
rank them first for everybody. Models use one thread and a fixed seed so the
results are deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from sessionrec.errors import FailedPrecondition, InvalidArgument
from training.models import (
    ALGORITHMS,
    Recommender,
    by_factor,
    create_model,
    item_popularity,
    top_k,
)

GROUP_A = np.arange(10)
GROUP_B = np.arange(10, 20)

#: Small and fast settings for each algorithm.
PARAMS: dict[str, dict[str, Any]] = {
    "als": {"factors": 4, "iterations": 10, "random_state": 0, "num_threads": 1},
    "bpr": {"factors": 4, "iterations": 100, "random_state": 0, "num_threads": 1},
    "lmf": {"factors": 4, "iterations": 50, "random_state": 0, "num_threads": 1},
    "itemknn": {"K": 20, "num_threads": 1},
    "ease": {"regularization": 10.0},
    "popular": {},
    "trending": {},
}
PERSONALIZED = ["als", "bpr", "lmf", "itemknn", "ease"]

# implicit's nearest-neighbour models convert a matrix internally and warn about it.
pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")


def fitted(name: str, matrix: sp.csr_matrix) -> Recommender:
    model = create_model(name, **PARAMS[name])
    model.fit(matrix)
    return model


def row(items: list[int], n_items: int = 20, weight: float = 1.0) -> sp.csr_matrix:
    data = np.full(len(items), weight, dtype=np.float32)
    return sp.csr_matrix((data, ([0] * len(items), items)), shape=(1, n_items))


def test_every_algorithm_is_covered() -> None:
    assert (
        set(ALGORITHMS)
        == set(PARAMS)
        == {"als", "bpr", "lmf", "itemknn", "ease", "popular", "trending"}
    )
    for name, cls in ALGORITHMS.items():
        assert cls.algorithm == name


# ------------------------------------------------------------------ fold-in
@pytest.mark.parametrize("name", PERSONALIZED)
@pytest.mark.parametrize(
    ("history", "liked", "other"),
    [
        ([0, 1, 2], GROUP_A, GROUP_B),
        ([5], GROUP_A, GROUP_B),
        ([12, 13], GROUP_B, GROUP_A),
        ([13, 14, 16, 17], GROUP_B, GROUP_A),
    ],
    ids=["A-three", "A-one", "B-two", "B-four"],
)
def test_fold_in_of_a_new_user_prefers_the_users_group(
    name: str,
    group_matrix: sp.csr_matrix,
    history: list[int],
    liked: np.ndarray,
    other: np.ndarray,
) -> None:
    """A user never seen in training, with only items of one group, is scored
    from that row alone: every item of the group beats every item of the other
    (the history items themselves aside: they are never recommended, and EASE
    gives an item no weight towards itself)."""
    model = fitted(name, group_matrix)
    scores = model.score(row(history))
    assert scores.shape == (1, 20)
    s = scores[0]
    liked = np.setdiff1d(liked, history)
    assert np.isfinite(s).all()
    assert s[liked].min() > s[other].max(), (
        f"{name}: lowest liked-group score {s[liked].min():.4f} <= "
        f"highest other-group score {s[other].max():.4f}"
    )


def test_bpr_training_itself_separates_the_groups(group_matrix: sp.csr_matrix) -> None:
    """The BPR factors learned with PARAMS["bpr"] do separate the groups for the
    training users (implicit's own user factors), so a fold-in that does not is
    losing information the model has."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    p = {**ALGORITHMS["bpr"].defaults, **PARAMS["bpr"]}
    bpr = BayesianPersonalizedRanking(
        factors=p["factors"],
        learning_rate=p["learning_rate"],
        regularization=p["regularization"],
        iterations=p["iterations"],
        random_state=p["random_state"],
        num_threads=p["num_threads"],
    )
    bpr.fit(group_matrix, show_progress=False)
    scores = bpr.user_factors @ bpr.item_factors.T
    for user in range(20):
        liked, other = (GROUP_A, GROUP_B) if user < 12 else (GROUP_B, GROUP_A)
        assert scores[user, liked].min() > scores[user, other].max()
    # create_model("bpr") learns exactly these item factors.
    model = fitted("bpr", group_matrix)
    assert np.allclose(model.to_arrays()["item_factors"], bpr.item_factors)


@pytest.mark.parametrize("name", PERSONALIZED)
def test_score_handles_several_rows_at_once(name: str, group_matrix: sp.csr_matrix) -> None:
    model = fitted(name, group_matrix)
    rows = sp.vstack([row([0, 1]), row([15, 16])]).tocsr()
    scores = model.score(rows)
    assert scores.shape == (2, 20)
    assert scores[0, GROUP_A].mean() > scores[0, GROUP_B].mean()
    assert scores[1, GROUP_B].mean() > scores[1, GROUP_A].mean()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_by_factor_is_the_transpose_in_rows(dtype: Any) -> None:
    factors = np.random.default_rng(3).standard_normal((500, 16)).astype(np.float32)
    users = np.random.default_rng(4).standard_normal((3, 16)).astype(dtype)
    t = by_factor(factors, dtype)
    assert t.shape == (16, 500) and t.dtype == dtype and t.flags.c_contiguous
    assert np.array_equal(t, factors.T)
    # The product differs from users @ factors.T only by the order of the sums.
    assert np.allclose(users @ t, users @ factors.T.astype(dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["als", "bpr", "lmf"])
def test_factor_models_score_as_the_plain_product(name: str, group_matrix: sp.csr_matrix) -> None:
    """The kept factors x items copy gives the scores of ``users @ factors.T``."""
    model = fitted(name, group_matrix)
    rows = sp.vstack([row([0, 1]), row([15, 16])]).tocsr()
    scores = model.score(rows)
    if name == "als":
        users = model.user_vectors(rows)
        expected = users @ model.item_factors.T
    else:
        from training.models import _least_squares_fold_in, _logistic_fold_in

        f = int(model.params["factors"])
        latent = model.factors_[:, :f]
        bias = model.factors_[:, model.bias_column]
        if name == "bpr":
            scaled = rows.astype(np.float32)
            scaled.data = 1.0 + float(model.params["fold_in_alpha"]) * scaled.data
            x = _least_squares_fold_in(
                latent, model._yty, scaled, float(model.params["fold_in_regularization"])
            )
            expected = x @ latent.T + bias
        else:
            x = _logistic_fold_in(
                latent,
                bias,
                rows,
                regularization=float(model.params["regularization"]),
                neg_prop=float(model.params["neg_prop"]),
                iterations=int(model.params["fold_in_iterations"]),
                features=model._features,
            )
            expected = x @ latent.T.astype(np.float64) + bias
    assert np.allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_als_product_follows_new_item_factors(group_matrix: sp.csr_matrix) -> None:
    """The kept transposed copy is made again when the factors are replaced."""
    model = fitted("als", group_matrix)
    users = model.user_vectors(row([0, 1]))
    before = model.score_vectors(users)
    model._model.item_factors = np.ascontiguousarray(-model.item_factors)
    assert np.allclose(model.score_vectors(users), -before, rtol=1e-6, atol=1e-6)


def test_popularity_scores_distinct_users_whatever_the_history(
    group_matrix: sp.csr_matrix,
) -> None:
    weighted = group_matrix.copy()
    weighted.data[:] = 7.0  # weights do not matter, users do
    model = fitted("popular", weighted)
    expected = [12.0] * 10 + [8.0] * 10
    assert model.score(row([12, 13]))[0].tolist() == expected
    assert model.score(row([0]))[0].tolist() == expected
    assert item_popularity(weighted).tolist() == expected


def test_popularity_model_has_no_similar_items(group_matrix: sp.csr_matrix) -> None:
    model = fitted("popular", group_matrix)
    with pytest.raises(FailedPrecondition, match=r"^algorithm: "):
        model.similar_items(0, 3)


@pytest.mark.parametrize("name", PERSONALIZED)
def test_similar_items_stay_in_the_group_and_exclude_the_item(
    name: str, group_matrix: sp.csr_matrix
) -> None:
    model = fitted(name, group_matrix)
    idx, scores = model.similar_items(3, 5)
    assert len(idx) == 5
    assert 3 not in idx.tolist()
    assert all(i < 10 for i in idx.tolist())
    assert list(scores) == sorted(scores, reverse=True)
    idx_b, _ = model.similar_items(15, 5)
    assert all(10 <= i < 20 for i in idx_b.tolist())


# -------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_to_arrays_from_arrays_round_trip_gives_identical_scores(
    name: str, group_matrix: sp.csr_matrix
) -> None:
    model = fitted(name, group_matrix)
    arrays = model.to_arrays()
    for key, value in arrays.items():
        assert isinstance(value, np.ndarray), key
        assert value.dtype.kind in "fiu", f"{key} would need pickle ({value.dtype})"
    restored = ALGORITHMS[name].from_arrays(model.params, arrays)
    assert restored.n_items == model.n_items == 20
    assert restored.params == model.params
    rows = sp.vstack([row([0, 1, 2]), row([15]), row([3, 18])]).tocsr()
    assert np.array_equal(restored.score(rows), model.score(rows))
    items, others = np.array([0, 12]), np.arange(20)
    assert np.array_equal(
        restored.item_similarity(items, others), model.item_similarity(items, others)
    )


# ------------------------------------------------------------------ factory
def test_create_model_rejects_an_unknown_algorithm() -> None:
    with pytest.raises(InvalidArgument, match=r"^algorithm: .*'xgboost'") as info:
        create_model("xgboost")
    for name in ALGORITHMS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_create_model_rejects_an_unknown_parameter(name: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^nope: not a parameter of {name}$"):
        create_model(name, nope=1)


def test_create_model_merges_parameters_over_defaults() -> None:
    model = create_model("als", factors=8)
    assert model.params["factors"] == 8
    assert model.params["iterations"] == ALGORITHMS["als"].defaults["iterations"]
    # The class defaults are not modified by one model's parameters.
    assert ALGORITHMS["als"].defaults["factors"] != 8
    assert create_model("als").params["factors"] == ALGORITHMS["als"].defaults["factors"]


def test_itemknn_rejects_an_unknown_similarity() -> None:
    with pytest.raises(InvalidArgument, match=r"^similarity: "):
        create_model("itemknn", similarity="jaccard")


@pytest.mark.parametrize("similarity", ["bm25", "tfidf"])
def test_itemknn_weightings_fold_in_too(similarity: str, group_matrix: sp.csr_matrix) -> None:
    model = create_model("itemknn", similarity=similarity, K=20, num_threads=1)
    model.fit(group_matrix)
    s = model.score(row([12, 13]))[0]
    assert s[GROUP_B].min() > s[GROUP_A].max()


# -------------------------------------------------------------------- top_k
def test_top_k_orders_by_score() -> None:
    idx, scores = top_k(np.array([0.1, 0.9, 0.5, 0.7]), 3)
    assert idx.tolist() == [1, 3, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert idx.dtype == np.int64


def test_top_k_excludes_indices_and_leaves_the_input_alone() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    idx, _ = top_k(scores, 3, exclude=np.array([1, 3]))
    assert idx.tolist() == [2, 0]  # fewer than k remain
    assert scores.tolist() == pytest.approx([0.1, 0.9, 0.5, 0.7])


def test_top_k_without_a_copy_ranks_the_same_in_the_callers_array() -> None:
    """``copy=False`` (a scratch array of the caller's): the same answer, and
    the excluded and non-finite entries may be overwritten in place."""
    scores = np.array([0.1, np.nan, 0.9, 0.5, 0.7, 0.9])
    want = top_k(scores, 4, exclude=np.array([2]))
    scratch = scores.copy()
    got = top_k(scratch, 4, exclude=np.array([2]), copy=False)
    assert got[0].tolist() == want[0].tolist() == [5, 4, 3, 0]
    assert got[1].tolist() == want[1].tolist()
    assert scratch[2] == -np.inf and scratch[1] == -np.inf  # written in place
    ints = np.array([3, 1, 2])  # not float: copied whatever copy says
    assert top_k(ints, 2, copy=False)[0].tolist() == [0, 2]
    assert ints.tolist() == [3, 1, 2]


def test_top_k_breaks_ties_by_lower_index() -> None:
    idx, _ = top_k(np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0]), 4)
    assert idx.tolist() == [1, 3, 5, 0]


def test_top_k_breaks_ties_at_the_cutoff_by_lower_index() -> None:
    """Which of several equal scores make the top k must not be arbitrary either:
    the lower indices win, as they do inside the top k."""
    scores = np.array([1.0] * 10 + [2.0] * 8)
    idx, _ = top_k(scores, 10)
    assert idx.tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 0, 1]
    idx, _ = top_k(np.array([0.0] * 10 + [5.0] * 10), 12)
    assert idx.tolist() == [*range(10, 20), 0, 1]


def test_top_k_skips_non_finite_scores() -> None:
    idx, _ = top_k(np.array([np.nan, 1.0, -np.inf, 0.5]), 10)
    assert idx.tolist() == [1, 3]


def test_top_k_of_nothing_is_empty() -> None:
    assert top_k(np.array([1.0, 2.0]), 0)[0].tolist() == []
    assert top_k(np.array([], dtype=np.float32), 5)[0].tolist() == []
    assert top_k(np.array([1.0]), 3, exclude=np.array([0]))[0].tolist() == []


def test_ease_weights_follow_the_closed_form() -> None:
    """B = I - P / diag(P), P = (X^T X + lambda I)^-1, diag(B) = 0 — checked on a
    3-item matrix against numpy directly."""
    x = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32))
    model = create_model("ease", regularization=2.0)
    model.fit(x)
    p = np.linalg.inv(x.T.toarray() @ x.toarray() + 2.0 * np.eye(3))
    expected = np.eye(3) - p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights_, expected, atol=1e-5)
    assert np.allclose(model.score(x[:1]), x[:1].toarray() @ expected, atol=1e-5)


def test_ease_refuses_a_catalog_above_max_items() -> None:
    model = create_model("ease", max_items=5)
    with pytest.raises(InvalidArgument, match="max_items"):
        model.fit(sp.csr_matrix((2, 6), dtype=np.float32))


def test_trending_ranks_by_time_decayed_weight() -> None:
    """With a time decay in the weights, recent interest beats old popularity."""
    from sessionrec.store import EventColumns
    from training.data import build_interactions
    from training.weighting import EventWeights

    day = 86_400_000
    # "old" was viewed by 5 users 30 days before the newest event, "new" by 2 users today.
    rows = [(f"u{i}", "old", 0) for i in range(5)] + [(f"v{i}", "new", 30 * day) for i in range(2)]
    events = EventColumns(
        np.array([r[0] for r in rows], dtype=object),
        np.array([r[1] for r in rows], dtype=object),
        np.full(len(rows), 2, dtype=np.int8),
        np.full(len(rows), -1, dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.int64),
    )
    decayed = build_interactions(events, EventWeights(time_half_life_days=7.0))
    trending = create_model("trending")
    trending.fit(decayed.matrix)
    popular = create_model("popular")
    popular.fit(decayed.matrix)
    new, old = decayed.items.number("new"), decayed.items.number("old")
    assert trending.score(decayed.matrix[:1])[0][new] > trending.score(decayed.matrix[:1])[0][old]
    assert popular.score(decayed.matrix[:1])[0][old] > popular.score(decayed.matrix[:1])[0][new]


def test_als_gpu_choice_is_checked(group_matrix: sp.csr_matrix) -> None:
    import implicit.gpu

    with pytest.raises(InvalidArgument, match="use_gpu"):
        create_model("als", use_gpu="maybe")
    forced = create_model("als", use_gpu=True, factors=4, iterations=2)
    if implicit.gpu.HAS_CUDA:
        pytest.skip("CUDA present: the forced GPU fit is valid here")
    with pytest.raises(FailedPrecondition, match="use_gpu"):
        forced.fit(group_matrix)


def test_lmf_fold_in_reproduces_the_trained_user_factors() -> None:
    """LMF folds a training user's row back in to scores that rank items like the
    user factors implicit learned for that user (the fold-in solves the same
    objective with the item factors fixed)."""
    from implicit.cpu.lmf import LogisticMatrixFactorization

    rng = np.random.default_rng(7)
    taste = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 60))
    clicks = (taste + rng.normal(scale=0.5, size=taste.shape)) > 1.2
    matrix = sp.csr_matrix(clicks.astype(np.float32))
    p = {**ALGORITHMS["lmf"].defaults, "factors": 8, "random_state": 0, "num_threads": 1}
    lmf = LogisticMatrixFactorization(
        factors=p["factors"],
        learning_rate=p["learning_rate"],
        regularization=p["regularization"],
        iterations=p["iterations"],
        neg_prop=p["neg_prop"],
        random_state=p["random_state"],
        num_threads=p["num_threads"],
    )
    lmf.fit(matrix, show_progress=False)
    trained = np.asarray(lmf.user_factors) @ np.asarray(lmf.item_factors).T
    model = create_model("lmf", factors=8, random_state=0, num_threads=1)
    model.fit(matrix)
    assert np.allclose(model.to_arrays()["item_factors"], lmf.item_factors)
    folded = model.score(matrix)
    users = np.flatnonzero(np.diff(matrix.indptr) > 0)
    correlations = [np.corrcoef(folded[u], trained[u])[0, 1] for u in users]
    assert np.median(correlations) > 0.9, np.median(correlations)
