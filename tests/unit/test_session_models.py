"""Session-based models (training/session_models.py), the next-item protocol
(training/next_item.py) and the session blend inside ModelArtifact.recommend,
on small hand-made sessions whose right answers can be worked out by hand."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from sessionrec.errors import InvalidArgument
from sessionrec.events import EventType, ItemEvent
from sessionrec.store import EventColumns
from training.artifact import load_artifact, save_artifact
from training.data import Vocabulary, build_interactions
from training.models import create_model
from training.next_item import (
    choose_blend,
    evaluate_next_item,
    rank_of,
    split_sessions_by_time,
)
from training.session_models import (
    DAY_MS,
    VARIANTS,
    SequentialRules,
    SessionKNN,
    SessionRecommender,
    Sessions,
    SparseScores,
    check_blend,
    normalized,
    sessions_from_events,
)
from training.weighting import EventWeights

VIEW = int(EventType.ITEM_VIEW)


def sessions_of(*seqs: list[int], ends: list[int] | None = None) -> Sessions:
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    items = np.concatenate([np.asarray(s) for s in seqs]).astype(np.int32)
    end_ms = np.asarray(ends if ends is not None else range(len(seqs)), dtype=np.int64)
    return Sessions(indptr, items, end_ms)


def columns(rows: list[tuple[str, str, str, int]]) -> EventColumns:
    """(session, user, item, ts) rows -> EventColumns sorted by time."""
    rows = sorted(rows, key=lambda r: r[3])
    n = len(rows)

    def obj(values: list[str]) -> np.ndarray:
        out = np.empty(n, dtype=object)
        out[:] = values
        return out

    return EventColumns(
        obj([r[1] for r in rows]),
        obj([r[2] for r in rows]),
        np.full(n, VIEW, dtype=np.int8),
        np.full(n, -1, dtype=np.int64),
        np.asarray([r[3] for r in rows], dtype=np.int64),
        obj([r[0] for r in rows]),
    )


# ------------------------------------------------------------------ sessions
def test_sessions_keep_click_order_and_drop_unknown_items() -> None:
    events = columns(
        [
            ("s1", "u", "b", 2),
            ("s2", "v", "c", 1),
            ("s1", "u", "a", 3),
            ("s1", "u", "zzz", 4),  # not in the vocabulary
            ("s2", "v", "a", 5),
        ]
    )
    vocab = Vocabulary(["a", "b", "c"])
    sessions = sessions_from_events(events, vocab)
    got = sorted(
        (tuple(sessions.session(s).tolist()), int(sessions.end_ms[s])) for s in range(len(sessions))
    )
    assert got == [((1, 0), 3), ((2, 0), 5)]


def test_sessions_need_session_ids() -> None:
    events = dataclasses.replace(columns([("s1", "u", "a", 1)]), session_id=None)
    with pytest.raises(InvalidArgument, match="session ids"):
        sessions_from_events(events, Vocabulary(["a"]))


# ---------------------------------------------------------------- session-kNN
def test_plain_sknn_is_cosine_over_item_sets() -> None:
    """Live {0, 1}: session A {0, 1, 2} has cosine 2/sqrt(2*3), session B {1, 3}
    1/sqrt(2*2), session C {4, 5} shares nothing. An item scores the summed
    similarity of the neighbours holding it."""
    knn = SessionKNN(k=10).fit(sessions_of([0, 1, 2], [1, 3], [4, 5]), 6)
    scores = knn.score([0, 1])
    a, b = 2 / math.sqrt(6), 1 / math.sqrt(4)
    assert scores[2] == pytest.approx(a, rel=1e-5)
    assert scores[3] == pytest.approx(b, rel=1e-5)
    assert scores[1] == pytest.approx(a + b, rel=1e-5)  # live items may come again
    assert scores[4] == scores[5] == 0.0


def test_k_keeps_only_the_most_similar_neighbours() -> None:
    knn = SessionKNN(k=1).fit(sessions_of([0, 1, 2], [1, 3], [4, 5]), 6)
    scores = knn.score([0, 1])
    assert scores[2] > 0 and scores[3] == 0.0


def test_position_decay_favours_the_latest_live_item() -> None:
    """Live [0, 1]: item 8 follows 0 elsewhere, item 9 follows 1. Plain SKNN
    cannot tell them apart; with position decay the latest click (1) wins."""
    sessions = sessions_of([0, 8], [1, 9])
    plain = SessionKNN().fit(sessions, 10).score([0, 1])
    assert plain[8] == pytest.approx(plain[9])
    decayed = SessionKNN(position_decay=1.0).fit(sessions, 10).score([0, 1])
    assert decayed[9] > decayed[8] > 0


def test_recency_decay_favours_recent_neighbours() -> None:
    sessions = sessions_of([0, 8], [0, 9], ends=[0, 30 * DAY_MS])
    scores = SessionKNN(recency_decay_days=10.0).fit(sessions, 10).score([0], now_ms=30 * DAY_MS)
    assert scores[9] > scores[8] > 0
    assert scores[8] / scores[9] == pytest.approx(math.exp(-3), rel=1e-4)


def test_neighbor_decay_favours_items_next_to_the_shared_one() -> None:
    """In the neighbour [5, 6, 0, 7, 8, 9] item 7 sits next to the shared item 0,
    item 9 three clicks away."""
    knn = SessionKNN(neighbor_decay=1.0).fit(sessions_of([5, 6, 0, 7, 8, 9]), 10)
    scores = knn.score([0])
    assert scores[7] > scores[8] > scores[9] > 0
    assert scores[6] == pytest.approx(scores[7])  # one step before counts the same
    assert scores[9] / scores[7] == pytest.approx(math.exp(-2), rel=1e-4)


def test_sample_size_keeps_the_most_recent_candidates() -> None:
    sessions = sessions_of([0, 8], [0, 9], ends=[1, 2])
    scores = SessionKNN(sample_size=1).fit(sessions, 10).score([0])
    assert scores[9] > 0 and scores[8] == 0.0


def test_unknown_and_empty_sessions_score_nothing() -> None:
    knn = SessionKNN().fit(sessions_of([0, 1]), 3)
    assert not knn.score([]).any()
    assert not knn.score([-1, 7]).any()  # unknown numbers are ignored
    assert not knn.score([2]).any()  # an item no session holds


@pytest.mark.parametrize(
    ("params", "field"),
    [({"k": 0}, "k"), ({"position_decay": -1.0}, "position_decay"), ({"nope": 1}, "nope")],
)
def test_bad_knn_parameters_name_the_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        SessionKNN(**params)


# ------------------------------------------------------------ sequential rules
def test_rules_weigh_followers_by_distance_within_steps() -> None:
    rules = SequentialRules(steps=2).fit(sessions_of([0, 1, 2, 3], [0, 1]), 4)
    m = rules.rules.toarray()
    assert m[0, 1] == pytest.approx(2.0)  # twice right after 0
    assert m[0, 2] == pytest.approx(0.5)  # two steps after 0
    assert m[0, 3] == 0.0  # beyond steps
    assert m[1, 0] == 0.0  # rules point forward only
    scores = rules.score([3, 0])  # the last live item picks the rules
    assert scores[1] > scores[2] > 0 and scores[0] == 0.0


def test_rules_keep_the_strongest_per_item() -> None:
    rules = SequentialRules(steps=1, max_rules=1).fit(sessions_of([0, 1], [0, 1], [0, 2]), 3)
    assert rules.rules.getrow(0).indices.tolist() == [1]


# ----------------------------------------------------------------- the blend
def test_blend_weights_are_checked() -> None:
    assert check_blend({"knn": 1.0}) == {"knn": 1.0, "rules": 0.0, "model": 0.0}
    with pytest.raises(InvalidArgument, match="blend"):
        check_blend({"knn": 0.0})
    with pytest.raises(InvalidArgument, match="unknown part"):
        check_blend({"cnn": 1.0})
    with pytest.raises(InvalidArgument, match="blend"):
        check_blend({"knn": -1.0})


def test_rank_of_breaks_ties_by_item_number() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.1])
    assert [rank_of(scores, i) for i in range(4)] == [2, 1, 3, 4]


# ------------------------------------------------ the artifact serves sessions
@pytest.fixture
def shop() -> EventColumns:
    """Two kinds of sessions: phones (p*) are followed by cases (c*), cameras
    (m*) by lenses (l*); cases and lenses are rarer than phones."""
    rows = []
    t = 1_000_000
    for s in range(60):
        kind = s % 2
        seq = ["p1", "p2", "c1"] if kind == 0 else ["m1", "m2", "l1"]
        if s % 3 == 0:
            seq = seq[:2]
        for item in seq:
            rows.append((f"s{s}", f"u{s}", item, t))
            t += 60_000
        t += 3_600_000
    return columns(rows)


def test_live_session_drives_recommendations_with_a_reason(
    shop: EventColumns, tmp_path: Path
) -> None:
    interactions = build_interactions(shop, EventWeights())
    model = create_model("popular")
    model.fit(interactions.matrix)
    session = SessionRecommender.fit(
        sessions_from_events(shop, interactions.items), len(interactions.items), blend={"knn": 1}
    )
    artifact = save_artifact(tmp_path, model, interactions, EventWeights(), session=session)
    loaded = load_artifact(tmp_path, artifact.version)
    assert loaded.session is not None
    assert loaded.session.blend == session.blend
    now = 2_000_000_000_000
    history = [
        ItemEvent("m1", VIEW, None, now - 120_000),
        ItemEvent("m2", VIEW, None, now - 60_000),
    ]
    for art in (artifact, loaded):
        rec = art.recommend(history, 2, live_since_ms=now - 200_000)
        assert rec.strategy == "session"
        assert rec.item_ids[0] == "l1", rec.item_ids
        assert rec.reasons[0].startswith("because you viewed m")
    # The same events, not live: the popularity model answers.
    rec = artifact.recommend(history, 2)
    assert rec.strategy == "popular"
    assert rec.item_ids[0] != "l1"


def test_the_service_blend_equals_its_parts(shop: EventColumns) -> None:
    """With only the kNN weighted, the blend ranks exactly as session-kNN."""
    interactions = build_interactions(shop, EventWeights())
    sessions = sessions_from_events(shop, interactions.items)
    n = len(interactions.items)
    knn = SessionKNN().fit(sessions, n)
    blend = SessionRecommender.fit(sessions, n, knn_params={}, blend={"knn": 1.0})
    live = interactions.items.numbers(["p1"])
    parts = blend.parts(live)
    np.testing.assert_allclose(parts["knn"].dense(), knn.score(live))
    combined = blend.combine(parts, None)
    assert (
        np.argsort(-combined, kind="stable").tolist()[:3]
        == np.argsort(-knn.score(live), kind="stable").tolist()[:3]
    )


# ---------------------------------------------------------- next-item protocol
def test_split_sessions_by_time_keeps_sessions_whole() -> None:
    """A session belongs to the test set when it ends in the last test_days (as in
    session-rec): no training click comes after the cut."""
    day = DAY_MS
    events = columns(
        [
            ("old", "u", "a", 0),
            ("old", "u", "b", 5 * day),
            ("late", "w", "a", 7 * day),  # starts before the cut (8 days), ends after
            ("late", "w", "b", 9 * day + day // 2),
            ("new", "v", "a", 9 * day),
            ("new", "v", "c", 10 * day),
        ]
    )
    train, test = split_sessions_by_time(events, 2)
    assert set(train.session_id.tolist()) == {"old"} and len(train) == 2
    assert set(test.session_id.tolist()) == {"late", "new"} and len(test) == 4
    assert train.ts_ms.max() < 8 * day
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument, match="test_days"):
            split_sessions_by_time(events, bad)


def sequential_log(n_sessions: int = 400, seed: int = 3) -> EventColumns:
    """Sessions walk along one of twelve item chains (0->1->2->..., each chain
    its own items), starting anywhere: the next item is predictable from the
    last one, not from popularity."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0
    for s in range(n_sessions):
        chain = int(rng.integers(12))
        start = int(rng.integers(0, 8))
        for step in range(int(rng.integers(2, 6))):
            rows.append((f"s{s}", f"u{s % 50}", f"c{chain}-{start + step}", t))
            t += 30_000
        t += 6 * 3_600_000
    return columns(rows)


def test_next_item_evaluation_ranks_session_models_above_popularity() -> None:
    events = sequential_log()
    results = evaluate_next_item(events, "als", {"factors": 8, "iterations": 5}, test_days=10)
    by_name = {r.algorithm: r.metrics for r in results}
    assert set(by_name) == {"popular", "sknn", "vsknn", "stan", "rules", "als", "blend"}
    assert all(r.predictions == results[0].predictions > 50 for r in results)
    for name in ("sknn", "stan", "rules", "blend"):
        assert by_name[name]["hr@10"] > 2 * by_name["popular"]["hr@10"], (name, by_name)
        assert by_name[name]["mrr@20"] > 2 * by_name["popular"]["mrr@20"], (name, by_name)
    # Chains are deterministic: rules know the next item exactly.
    assert by_name["rules"]["mrr@20"] > 0.5
    for m in by_name.values():
        assert 0 <= m["mrr@10"] <= m["mrr@20"] <= m["hr@20"] <= 1
        assert m["hr@10"] <= m["hr@20"]


def test_choose_blend_is_deterministic_and_valid() -> None:
    events = sequential_log()
    first = choose_blend(events, "als", {"factors": 8, "iterations": 5}, max_predictions=200)
    second = choose_blend(events, "als", {"factors": 8, "iterations": 5}, max_predictions=200)
    assert first == second
    assert check_blend(first.blend) == first.blend
    # The rules predict these chains best: the chosen blend uses them.
    assert first.blend["rules"] > 0


def test_impressions_are_not_session_clicks() -> None:
    """A shown-but-not-viewed item (OFFER_IMPRESSION weighs 0) is neither part of
    a training session nor a rule target."""
    events = columns([("s1", "u", "a", 1), ("s1", "u", "b", 2), ("s1", "u", "c", 3)])
    types = events.type.copy()
    types[1] = int(EventType.OFFER_IMPRESSION)
    events = dataclasses.replace(events, type=types)
    vocab = Vocabulary(["a", "b", "c"])
    sessions = sessions_from_events(events, vocab, EventWeights())
    assert sessions.session(0).tolist() == [0, 2]
    rules = SequentialRules().fit(sessions, 3)
    assert rules.score([0])[1] == 0.0 and rules.score([0])[2] > 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("session_knn_indptr", np.array([0, 3, 1, 4])),  # decreasing
        ("session_knn_indices", np.array([0, 1, 1, 2])),  # an item twice in one session
        ("session_knn_positions", np.array([1.0, np.nan, 1.0, 2.0], dtype=np.float32)),
        ("session_rules_indices", np.array([5], dtype=np.int32)),  # no such item
    ],
)
def test_session_arrays_that_do_not_fit_are_refused(name: str, value: np.ndarray) -> None:
    sessions = sessions_of([0, 1, 2], [2, 1])  # rows: {0,1,2}, {1,2}
    model = SessionRecommender.fit(sessions, 3, blend={"knn": 1.0})
    arrays = model.to_arrays()
    assert SessionRecommender.from_arrays(model.describe(), arrays, 3).knn.n_items == 3
    if name == "session_knn_indptr":
        arrays[name] = value
    elif name == "session_knn_indices":
        arrays[name] = np.array([0, 1, 1, 1, 2], dtype=np.int32)
    elif name == "session_knn_positions":
        arrays[name] = np.array([1, np.nan, 3, 1, 2], dtype=np.float32)
    else:
        arrays["session_rules_indices"] = np.full_like(arrays["session_rules_indices"], 5)
    with pytest.raises(ValueError, match="do not fit together"):
        SessionRecommender.from_arrays(model.describe(), arrays, 3)


def test_normalized_uses_the_real_range() -> None:
    np.testing.assert_allclose(normalized(np.array([2.0, 3.0])), [0.0, 1.0])
    np.testing.assert_allclose(normalized(np.array([-np.inf, 1.0, 3.0])), [0.0, 0.0, 1.0])
    assert not normalized(np.array([4.0, 4.0])).any()


@pytest.mark.parametrize(
    "items, scores, stays_sparse",
    [
        ([], [], True),
        ([3, 1, 7], [0.5, 2.0, 0.25], True),  # some items scored, all positive
        ([2, 5], [0.0, 0.0], True),  # flat: all zero
        (list(range(8)), [float(k) + 1 for k in range(8)], True),  # every item scored
        ([0, 4], [-1.0, 3.0], False),  # negative: the unscored items do not scale to 0
        ([1, 6], [np.inf, 1.0], False),  # not finite
    ],
)
def test_sparse_scores_normalize_like_the_dense_vector(
    items: list, scores: list, stays_sparse: bool
) -> None:
    sparse = SparseScores(np.array(items, dtype=np.int64), np.array(scores, np.float32), 8)
    got = sparse.normalized()
    if not stays_sparse:
        assert got is None  # the caller falls back to the dense vector
        return
    assert got is not None
    assert np.array_equal(got.dense(), normalized(sparse.dense()))  # bit for bit


def test_the_sparse_blend_equals_the_dense_blend(shop: EventColumns) -> None:
    """``combine`` adds the session parts at their few items: the same sum, bit for
    bit, as adding catalog-sized normalized arrays."""
    interactions = build_interactions(shop, EventWeights())
    sessions = sessions_from_events(shop, interactions.items)
    n = len(interactions.items)
    blend = SessionRecommender.fit(
        sessions, n, knn_params=VARIANTS["stan"], blend={"knn": 1.0, "rules": 0.3, "model": 0.2}
    )
    model = np.random.default_rng(3).normal(size=n).astype(np.float32)
    for live_ids in (["p1"], ["p1", "p2"], ["l1", "p3", "p1"]):
        live = interactions.items.numbers(live_ids)
        parts = blend.parts(live, int(shop.ts_ms.max()))
        dense = np.zeros(n, dtype=np.float32)
        for name, part in [*parts.items(), ("model", None)]:
            values = normalized(model if part is None else part.dense())
            values *= np.float32(blend.blend[name])
            dense += values
        assert parts["knn"].nonzero().size  # the case exercises the sparse path
        assert np.array_equal(blend.combine(parts, model), dense)
