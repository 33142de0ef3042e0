"""The compiled serving loops (training/_kernels.pyx) against numpy formulations
of what they document, on random data with many ties: bit for bit where the
arithmetic is the same, and through the models that call them."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.events import EventType, ItemEvent
from training._kernels import (
    add_normalized,
    blend_normalized,
    blend_top_k,
    knn_index,
    knn_scores,
    rule_sources,
    weighted_history,
)
from training.data import Vocabulary, user_row
from training.models import tie_breaks, top_k
from training.session_models import (
    DAY_MS,
    SequentialRules,
    SessionKNN,
    SessionRecommender,
    Sessions,
    SparseScores,
    normalized,
)
from training.weighting import EventWeights


def random_sessions(rng: np.random.Generator, n: int, n_items: int, epoch_ms: int = 0) -> Sessions:
    lengths = rng.integers(1, 8, n)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, n_items, int(indptr[-1])).astype(np.int32)
    # Few distinct end times: equal ones at every cut.
    ends = epoch_ms + rng.integers(0, 5, n).astype(np.int64) * DAY_MS
    return Sessions(indptr, items, ends)


def reference_knn(
    model: SessionKNN, live: np.ndarray, weight: np.ndarray, live_pos: np.ndarray, now_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """``knn_scores`` as numpy calls, its ties broken by explicit sort keys."""
    p = model.params
    n_items = model.n_items
    w = np.zeros(n_items, dtype=np.float32)
    w[live] = weight
    pos = np.zeros(n_items, dtype=np.float32)
    pos[live] = live_pos
    ptr = model.item_indptr
    candidates = np.unique(np.concatenate([model.item_sessions[ptr[i] : ptr[i + 1]] for i in live]))
    if len(candidates) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ends = model.session_end_ms
    if len(candidates) > p["sample_size"]:
        keep = np.lexsort((candidates, -ends[candidates]))[: p["sample_size"]]
        candidates = np.sort(candidates[keep])
    m = model.session_items
    rows = [m.indices[m.indptr[s] : m.indptr[s + 1]] for s in candidates]
    overlap = np.array([sum(float(x) for x in w[r]) for r in rows])  # in row order
    sizes = np.diff(model.session_items.indptr).astype(np.float32)[candidates]
    sims = overlap / np.sqrt(len(live) * sizes)
    if p["recency_decay_days"] > 0:
        age_days = np.maximum(now_ms - ends[candidates], 0) / DAY_MS
        sims = sims * np.exp(-age_days / p["recency_decay_days"])
    order = np.lexsort((np.arange(len(candidates)), -ends[candidates], -sims))
    top = np.sort(order[: min(p["k"], len(candidates))])
    top = top[sims[top] > 0]
    sums = np.zeros(n_items, dtype=np.float64)
    for c in top:
        s = candidates[c]
        items = m.indices[m.indptr[s] : m.indptr[s + 1]]
        positions = m.data[m.indptr[s] : m.indptr[s + 1]]
        contribution = np.full(len(items), sims[c])
        if p["neighbor_decay"] > 0:
            anchor = positions[np.argmax(pos[items])]
            contribution = contribution * np.exp(
                -np.abs(positions - anchor) / np.float32(p["neighbor_decay"])
            )
        np.add.at(sums, items, contribution)
    items = np.flatnonzero(sums)
    return items, sums[items].astype(np.float32)


def kernel_knn(
    model: SessionKNN, live: np.ndarray, weight: np.ndarray, live_pos: np.ndarray, now_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    p = model.params
    return knn_scores(
        live.astype(np.int64),
        weight.astype(np.float32),
        live_pos.astype(np.float32),
        *model._kernel_arrays,
        p["sample_size"],
        p["k"],
        float(p["recency_decay_days"]),
        now_ms,
        float(p["neighbor_decay"]),
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "params",
    [
        {},  # every candidate votes
        {"k": 5},  # ties at the k-th similarity
        {"sample_size": 7, "k": 3},  # ties at the sample's last end time too
        {"k": 4, "recency_decay_days": 2.0},
    ],
)
# End times in 2025 need both words of a record's end time.
@pytest.mark.parametrize("epoch_ms", [0, 1_735_689_600_000])
def test_knn_kernel_equals_its_numpy_formulation(seed: int, params: dict, epoch_ms: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = 40
    model = SessionKNN(**params).fit(random_sessions(rng, 300, n_items, epoch_ms), n_items)
    for _ in range(20):
        live = np.unique(rng.integers(0, n_items, rng.integers(1, 6)))
        weight = rng.choice(np.array([1.0, 0.5, 0.25], np.float32), len(live))
        live_pos = rng.permutation(len(live)).astype(np.float32) + 1
        now = epoch_ms + 6 * DAY_MS
        got_items, got_scores = kernel_knn(model, live, weight, live_pos, now)
        want_items, want_scores = reference_knn(model, live, weight, live_pos, now)
        np.testing.assert_array_equal(got_items, want_items)
        if params.get("recency_decay_days"):  # libm's exp against numpy's, an ulp apart
            np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got_scores, want_scores)


def test_knn_kernel_neighbor_decay_weighs_by_distance_to_the_anchor() -> None:
    rng = np.random.default_rng(7)
    n_items = 30
    model = SessionKNN(neighbor_decay=2.0).fit(random_sessions(rng, 200, n_items), n_items)
    for _ in range(20):
        live = np.unique(rng.integers(0, n_items, 4))
        weight = np.ones(len(live), np.float32)
        live_pos = np.arange(1, len(live) + 1, dtype=np.float32)
        got = kernel_knn(model, live, weight, live_pos, 0)
        want = reference_knn(model, live, weight, live_pos, 0)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_knn_kernel_ranks_equal_neighbours_by_recency_then_session_number() -> None:
    # Live item 0; sessions 0-3 all hold it with one other item (equal similarity),
    # ending at 5, 9, 9 and 1: with k=2 the two ending at 9 vote (sessions 1, 2).
    sessions = Sessions(
        np.array([0, 2, 4, 6, 8]),
        np.array([0, 1, 0, 2, 0, 3, 0, 4], dtype=np.int32),
        np.array([5, 9, 9, 1], dtype=np.int64),
    )
    model = SessionKNN(k=2).fit(sessions, 5)
    items, _ = kernel_knn(model, np.array([0]), np.ones(1, np.float32), np.ones(1, np.float32), 0)
    assert items.tolist() == [0, 2, 3]
    # sample_size 1: the latest ending candidate only; of two ending at 9, session 1.
    model = SessionKNN(sample_size=1).fit(sessions, 5)
    items, _ = kernel_knn(model, np.array([0]), np.ones(1, np.float32), np.ones(1, np.float32), 0)
    assert items.tolist() == [0, 2]


def test_knn_index_keeps_each_session_in_one_record() -> None:
    # Session 0: items 3, 1 at positions 1, 2; session 1: item 3 at 1.5; session 2:
    # empty. End times: past 2**32, negative, and the largest int64.
    indptr = np.array([0, 2, 3, 3], dtype=np.int64)
    indices = np.array([3, 1, 3], dtype=np.int32)
    positions = np.array([1.0, 2.0, 1.5], dtype=np.float32)
    ends = np.array([1_735_689_600_123, -86_400_001, 2**63 - 1], dtype=np.int64)
    item_sessions = np.array([1, 0, 0], dtype=np.int32)
    records, item_records = knn_index(indptr, indices, positions, ends, item_sessions)
    assert records.dtype == np.int32 and item_records.dtype == np.int64
    assert item_records.tolist() == [7, 0, 0]  # session 1 starts after 3 + 2 * 2 words
    for start, session in ((0, 0), (7, 1), (12, 2)):
        length = int(records[start])
        assert length == indptr[session + 1] - indptr[session]
        # Low word first: on a little-endian machine, the int64 itself.
        assert records[start + 1 : start + 3].copy().view(np.int64)[0] == ends[session]
        items = records[start + 3 : start + 3 + length]
        places = records[start + 3 + length : start + 3 + 2 * length].view(np.float32)
        lo, hi = indptr[session], indptr[session + 1]
        assert items.tolist() == indices[lo:hi].tolist()
        assert places.tolist() == positions[lo:hi].tolist()
    assert len(records) == 12 + 3


def test_knn_kernel_with_no_candidate_scores_nothing() -> None:
    sessions = Sessions(np.array([0, 1]), np.array([1], dtype=np.int32), np.array([0]))
    model = SessionKNN().fit(sessions, 3)
    items, scores = kernel_knn(model, np.array([2]), np.ones(1, np.float32), np.ones(1), 0)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert len(items) == 0 and len(scores) == 0


def dense_blend(
    parts: dict[str, SparseScores],
    model_scores: np.ndarray | None,
    blend: dict[str, float],
    tie: np.ndarray,
    k: int,
    excluded: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The blend's ranking as the dense numpy path computes it."""
    n = len(tie)
    recommender = SessionRecommender(SessionKNN(), None, blend)  # type: ignore[arg-type]
    recommender.knn.n_items = n
    total = recommender.combine(parts, model_scores)
    return top_k(np.add(total, tie, dtype=np.float64), k, excluded, copy=False)


@pytest.mark.parametrize("seed", range(8))
def test_blend_top_k_equals_the_dense_blend(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    blend = {"knn": 1.0, "rules": 0.01, "model": 0.03}
    knn_items = np.sort(rng.choice(n, 60, replace=False))
    rules_items = np.sort(rng.choice(n, 20, replace=False))
    parts = {
        # Few distinct values: ties the tie-breaks (some equal too) must settle.
        "knn": SparseScores(knn_items, rng.integers(1, 4, 60).astype(np.float32), n),
        "rules": SparseScores(rules_items, rng.random(20).astype(np.float32), n),
    }
    popularity = rng.integers(0, 5, n).astype(np.float64)
    tie = tie_breaks(popularity)
    model_scores = rng.normal(size=n).astype(np.float32)
    excluded = rng.choice(n, 30)
    for k in (1, 10, 200, n):
        total = SessionRecommender(SessionKNN(), None, blend)  # type: ignore[arg-type]
        total.knn.n_items = n
        scratch = total.parts_total(parts)
        scratch[excluded] = np.nan
        got = blend_top_k(scratch, model_scores, blend["model"], tie, k)
        assert got is not None
        want = dense_blend(parts, model_scores, blend, tie, k, excluded)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].dtype == np.float64


def blend_of(n: int, blend: dict[str, float]) -> SessionRecommender:
    recommender = SessionRecommender(SessionKNN(), None, blend)  # type: ignore[arg-type]
    recommender.knn.n_items = n
    return recommender


@pytest.mark.parametrize("seed", range(8))
def test_normalized_combine_equals_normalized_of_the_combined_blend(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    parts = {
        "knn": SparseScores(
            np.sort(rng.choice(n, 50, replace=False)), rng.integers(1, 4, 50).astype(np.float32), n
        ),
        "rules": SparseScores(
            np.sort(rng.choice(n, 15, replace=False)), rng.random(15).astype(np.float32), n
        ),
    }
    flat = np.full(n, 0.7, np.float32)
    for weight in (0.0, 0.03, 1.0, 2.5):
        recommender = blend_of(n, {"knn": 1.0, "rules": 0.01, "model": weight})
        for model in (rng.normal(size=n).astype(np.float32) * 3, flat, None):
            want = normalized(recommender.combine(parts, model))
            got = recommender.normalized_combine(parts, model)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)


def test_blend_normalized_of_flat_and_empty_totals() -> None:
    total = np.full(6, 0.25, np.float32)
    assert blend_normalized(total, np.zeros(0, np.float32), 0.0)
    np.testing.assert_array_equal(total, np.zeros(6, np.float32))  # flat: all 0, as normalized
    assert blend_normalized(np.zeros(0, np.float32), np.zeros(0, np.float32), 1.0)
    total = np.array([0, 1, 3], np.float32)
    assert blend_normalized(total, np.array([5, 5, 5], np.float32), 0.5)  # flat model adds 0
    np.testing.assert_array_equal(total, np.array([0, 1 / 3, 1], np.float32))
    with pytest.raises(ValueError, match="2 scores for 3 items"):
        blend_normalized(total, np.zeros(2, np.float32), 1.0)


def test_blend_normalized_leaves_non_finite_scores_to_numpy() -> None:
    n = 5
    parts = {"knn": SparseScores(np.array([1, 3]), np.array([2, 1], np.float32), n)}
    recommender = blend_of(n, {"knn": 1.0, "rules": 0.0, "model": 0.5})
    for bad in (np.nan, np.inf, -np.inf):
        model = np.array([0, bad, 1, 2, 0.5], np.float32)
        total = np.array([1, 2, 3, 4, 5], np.float32)
        assert not blend_normalized(total, model, 0.5)
        np.testing.assert_array_equal(total, [1, 2, 3, 4, 5])  # untouched
        # The numpy path takes over: non-finite model scores count as 0.
        want = normalized(recommender.combine(parts, model))
        np.testing.assert_array_equal(recommender.normalized_combine(parts, model), want)
    total = np.array([0, np.nan, 1], np.float32)
    assert not blend_normalized(total, np.zeros(0, np.float32), 0.0)
    # float64 model scores (LMF's) go to numpy, which scales them in float64.
    model64 = np.array([0.1, 0.9, 0.3, 0.2, 0.4])
    np.testing.assert_array_equal(
        recommender.normalized_combine(parts, model64),
        normalized(recommender.combine(parts, model64)),
    )


def test_blend_top_k_without_a_model_or_with_a_flat_one() -> None:
    n = 50
    rng = np.random.default_rng(3)
    tie = tie_breaks(rng.integers(0, 3, n).astype(np.float64))
    total = np.zeros(n, np.float32)
    total[[3, 7]] = [0.5, 1.0]
    for model in (np.zeros(0, np.float32), np.full(n, 2.5, np.float32)):
        got = blend_top_k(total.copy(), model, 0.03, tie, 5)
        assert got is not None
        want = top_k(np.add(total, tie, dtype=np.float64), 5)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_blend_top_k_leaves_non_finite_models_to_numpy_and_counts_what_is_left() -> None:
    tie = np.zeros(4)
    for bad in (np.nan, np.inf):
        model = np.array([0, bad, 1, 2], np.float32)
        assert blend_top_k(np.zeros(4, np.float32), model, 1.0, tie, 2) is None
    # Everything left out: nothing; fewer left than asked: those.
    idx, scores = blend_top_k(np.full(4, np.nan, np.float32), np.zeros(0, np.float32), 0.0, tie, 3)
    assert len(idx) == 0 and len(scores) == 0
    total = np.array([np.nan, 0.5, np.nan, 0.25], np.float32)
    idx, scores = blend_top_k(total, np.zeros(0, np.float32), 0.0, tie, 3)
    assert idx.tolist() == [1, 3] and scores.tolist() == [0.5, 0.25]
    idx, _ = blend_top_k(np.zeros(4, np.float32), np.zeros(0, np.float32), 0.0, tie, 0)
    assert len(idx) == 0


def test_normalized_model_scores_match_the_kernels_scaling() -> None:
    # The kernel scales by the range in float64 and rounds to float32 as normalized().
    rng = np.random.default_rng(11)
    model = rng.normal(size=300).astype(np.float32)
    tie = np.zeros(300)
    idx, scores = blend_top_k(np.zeros(300, np.float32), model, 1.0, tie, 300)
    expected = normalized(model)
    np.testing.assert_array_equal(scores, expected[idx].astype(np.float64))


@pytest.mark.parametrize("seed", range(6))
def test_add_normalized_adds_what_sparse_normalized_gives(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    for size in (0, 1, 30, n):
        items = np.sort(rng.choice(n, size, replace=False)).astype(np.int64)
        scores = rng.integers(0, 4, size).astype(np.float32) * np.float32(0.7)
        sparse = SparseScores(items, scores, n)
        base = rng.random(n).astype(np.float32)
        got = base.copy()
        assert add_normalized(got, items, scores, 0.01)
        want = base.copy()
        part = sparse.normalized()
        assert part is not None
        want[part.items] += part.scores * np.float32(0.01)
        np.testing.assert_array_equal(got, want)


def test_add_normalized_refuses_what_only_the_dense_scaling_handles() -> None:
    total = np.zeros(5, np.float32)
    items = np.array([1, 2], np.int64)
    for scores in ([-1.0, 2.0], [np.nan, 1.0], [np.inf, 1.0]):
        assert not add_normalized(total, items, np.array(scores, np.float32), 1.0)
        assert not total.any()  # nothing added
    # Every item scored: its own range, negative scores included.
    assert add_normalized(total, np.arange(5), np.array([-1, 0, 1, 2, 3], np.float32), 1.0)
    assert total.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_rule_sources_name_the_first_source_with_a_rule_to_each_target() -> None:
    rng = np.random.default_rng(5)
    n_items = 30
    rules = SequentialRules(steps=3).fit(random_sessions(rng, 200, n_items), n_items)
    matrix = rules.rules.toarray()
    for _ in range(30):
        sources = rng.choice(n_items, rng.integers(0, 6), replace=False)
        targets = rng.choice(n_items, 10, replace=False)
        want = [
            next((s for s, src in enumerate(sources) if matrix[src, t] > 0), len(sources))
            for t in targets
        ]
        assert rules.sources_of(sources, targets).tolist() == want
    # A rule of weight 0 (kept in the CSR) leads nowhere.
    indptr = np.array([0, 1, 1], np.int64)
    got = rule_sources(
        indptr,
        np.array([1], np.int32),
        np.zeros(1, np.float32),
        np.array([0], np.int64),
        np.array([1], np.int64),
    )
    assert got.tolist() == [1]


# ------------------------------------------------------------ weighted_history


def numpy_weighted(
    weights: EventWeights,
    vocab: Vocabulary,
    history: list[ItemEvent],
    since: int | None,
    boost: float,
) -> tuple[np.ndarray, ...]:
    """``weighted_history`` as ``EventWeights.weigh`` and ``user_row`` compute it."""
    n = len(history)
    numbers = vocab.numbers([e.item_id for e in history])
    types = np.fromiter((e.type for e in history), dtype=np.int64, count=n)
    dwell = np.fromiter((-1 if e.dwell_ms is None else e.dwell_ms for e in history), np.int64, n)
    ts = np.fromiter((e.ts_ms for e in history), dtype=np.int64, count=n)
    w = weights.weigh(types, dwell)
    if since is not None and boost != 1.0:
        w = np.where(ts >= since, w * boost, w)
    row = user_row(numbers, w, len(vocab))
    return numbers, types, ts, w > 0, row.indices, row.data


def kernel_weighted(
    weights: EventWeights,
    vocab: Vocabulary,
    history: list[ItemEvent],
    since: int | None,
    boost: float,
) -> tuple[np.ndarray, ...]:
    return weighted_history(
        history,
        vocab.index,
        weights.table_array,
        weights.view_array,
        weights.dwell_bonus,
        weights.dwell_saturation_ms,
        weights.skip_below_ms,
        weights.skip_factor,
        since is not None and boost != 1.0,
        since if since is not None else 0,
        boost,
    )


@pytest.mark.parametrize("seed", range(4))
def test_weighted_history_equals_weigh_and_user_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(np.array([f"i{k}" for k in range(30)]))
    types = [-1, 0, 1, 2, 3, 4, 5, 6, 9, 40]  # unknown numbers among them
    dwells = [None, -5, 0, 1, 2_999, 3_000, 7_777, 61_000, 10**12]
    for _ in range(200):
        weights = EventWeights(
            type_weights={
                "ITEM_VIEW": float(rng.choice([1.0, 0.7])),
                "ADD_TO_CART": float(rng.choice([3.0, 2.2])),
            },
            dwell_bonus=float(rng.choice([1.0, 0.37, 0.0])),
            dwell_saturation_ms=int(rng.choice([60_000, 7_777])),
            skip_below_ms=int(rng.choice([3_000, 0, 1_234])),
            skip_factor=float(rng.choice([1.0, 0.25, 0.0])),
        )
        history = [
            ItemEvent(
                f"i{rng.integers(0, 36)}",  # some unknown items
                int(rng.choice(types)),
                dwells[rng.integers(0, len(dwells))]
                if rng.random() < 0.5
                else int(rng.integers(0, 100_000)),
                int(rng.integers(0, 1_000)),
            )
            for _ in range(int(rng.integers(0, 40)))
        ]
        since = None if rng.random() < 0.3 else 500
        boost = float(rng.choice([1.0, 2.3, 1.7]))
        got = kernel_weighted(weights, vocab, history, since, boost)
        want = numpy_weighted(weights, vocab, history, since, boost)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


def test_weighted_history_sums_an_items_events_in_order() -> None:
    vocab = Vocabulary(np.array(["a", "b"]))
    weights = EventWeights(dwell_bonus=0.0)
    view, cart, screen = EventType.ITEM_VIEW, EventType.ADD_TO_CART, EventType.SCREEN_VIEW
    # b viewed three times and added to the cart; "x" is unknown; a screen weighs 0.
    history = [
        ItemEvent("b", view, None, 1),
        ItemEvent("x", view, None, 2),
        ItemEvent("b", view, None, 3),
        ItemEvent("b", cart, None, 4),
        ItemEvent("a", screen, None, 5),
        ItemEvent("b", view, None, 6),
    ]
    numbers, types, ts, positive, cols, data = kernel_weighted(weights, vocab, history, None, 1.0)
    assert numbers.tolist() == [1, -1, 1, 1, 0, 1]
    assert types.tolist() == [2, 2, 2, 3, 1, 2] and ts.tolist() == [1, 2, 3, 4, 5, 6]
    assert positive.tolist() == [True, True, True, True, False, True]
    assert cols.tolist() == [1]
    view_w, cart_w = weights.table_array[view], weights.table_array[cart]
    assert data.tolist() == [pytest.approx(3 * view_w + cart_w)]


def test_weighted_history_refuses_what_is_not_an_item_event() -> None:
    vocab = Vocabulary(np.array(["a"]))
    with pytest.raises(TypeError, match=r"history\[1\]"):
        kernel_weighted(EventWeights(), vocab, [ItemEvent("a", 1, None, 1), ("a", 1)], None, 1.0)  # type: ignore[list-item]
