"""Event weights (training/weighting.py): type weights, the dwell bonus, configuration."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.events import EventType
from training.weighting import DEFAULT_TYPE_WEIGHTS, EventWeights

UNKNOWN = -1


def weigh(weights: EventWeights, types: list[int], dwell: list[int]) -> list[float]:
    return weights.weigh(np.asarray(types), np.asarray(dwell)).tolist()


def test_default_weight_per_type() -> None:
    expected = {
        EventType.SCREEN_VIEW: 0.0,
        EventType.ITEM_VIEW: 1.0,
        EventType.ADD_TO_CART: 3.0,
        EventType.PURCHASE: 5.0,
        EventType.CLICK: 1.0,
        EventType.SEARCH: 0.0,
        EventType.OFFER_IMPRESSION: 0.0,
        EventType.OFFER_REDEEMED: 2.0,
        EventType.CUSTOM: 0.0,
    }
    types = [int(t) for t in expected]
    got = weigh(EventWeights(), types, [UNKNOWN] * len(types))
    assert got == list(expected.values())
    assert set(DEFAULT_TYPE_WEIGHTS) == {t.name for t in EventType}


def test_weights_are_float32() -> None:
    out = EventWeights().weigh(np.array([2]), np.array([UNKNOWN]))
    assert out.dtype == np.float32


def test_dwell_bonus_grows_linearly_then_saturates() -> None:
    view = int(EventType.ITEM_VIEW)
    got = weigh(EventWeights(), [view] * 6, [0, 15_000, 30_000, 60_000, 120_000, 3_600_000])
    # 1 + 1.0 * min(dwell / 60000, 1)
    assert got == pytest.approx([1.0, 1.25, 1.5, 2.0, 2.0, 2.0])


def test_unknown_dwell_adds_nothing() -> None:
    view = int(EventType.ITEM_VIEW)
    assert weigh(EventWeights(), [view, view], [UNKNOWN, -500]) == [1.0, 1.0]


def test_dwell_counts_only_for_views_with_a_positive_base_weight() -> None:
    weights = EventWeights()
    types = [int(EventType.CLICK), int(EventType.PURCHASE), int(EventType.SCREEN_VIEW)]
    # A click or purchase has no dwell bonus; a screen view weighs 0 however long it lasts.
    assert weigh(weights, types, [60_000] * 3) == [1.0, 5.0, 0.0]


def test_zero_weight_types_weigh_nothing_even_with_dwell() -> None:
    weights = EventWeights.from_dict({"type_weights": {"ITEM_VIEW": 0, "CLICK": 0}})
    types = [int(EventType.ITEM_VIEW), int(EventType.CLICK), int(EventType.PURCHASE)]
    assert weigh(weights, types, [60_000, UNKNOWN, UNKNOWN]) == [0.0, 0.0, 5.0]


def test_unknown_type_numbers_weigh_nothing() -> None:
    assert weigh(EventWeights(), [0, 10, 99, -3], [UNKNOWN] * 4) == [0.0, 0.0, 0.0, 0.0]


def test_custom_bonus_and_saturation() -> None:
    weights = EventWeights(dwell_bonus=3.0, dwell_saturation_ms=10_000)
    view = int(EventType.ITEM_VIEW)
    assert weigh(weights, [view, view], [5_000, 50_000]) == pytest.approx([2.5, 4.0])


def test_from_dict_to_dict_round_trip() -> None:
    weights = EventWeights.from_dict(
        {
            "type_weights": {"PURCHASE": 10, "SEARCH": 0.5},
            "dwell_bonus": 2,
            "dwell_saturation_ms": 30_000,
        }
    )
    data = weights.to_dict()
    assert data["type_weights"]["PURCHASE"] == 10.0
    assert data["type_weights"]["SEARCH"] == 0.5
    assert data["type_weights"]["ITEM_VIEW"] == 1.0  # unspecified types keep their default
    assert (data["dwell_bonus"], data["dwell_saturation_ms"]) == (2.0, 30_000)
    again = EventWeights.from_dict(data)
    assert again == weights
    assert again.table().tolist() == weights.table().tolist()


def test_from_empty_dict_is_the_default() -> None:
    assert EventWeights.from_dict({}) == EventWeights()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type_weights": {"VIEWED": 1.0}}, "type_weights"),
        ({"type_weights": {"PURCHASE": -1.0}}, r"type_weights\[PURCHASE\]"),
        ({"dwell_bonus": -0.5}, "dwell_bonus"),
        ({"dwell_saturation_ms": 0}, "dwell_saturation_ms"),
    ],
)
def test_invalid_configuration_raises_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}"):
        EventWeights.from_dict(data)


def test_recency_factor_halves_per_half_life_of_later_events() -> None:
    w = EventWeights(recency_half_life=2.0, recency_boost=1.0, dwell_bonus=0.0)
    types = np.full(3, int(EventType.ITEM_VIEW))
    out = w.weigh(types, np.full(3, -1), later=np.array([0, 2, 4]))
    assert np.allclose(out, [1 + 1.0, 1 + 0.5, 1 + 0.25])
    with pytest.raises(ValueError, match="later"):
        w.weigh(types, np.full(3, -1))
    assert EventWeights.from_dict(w.to_dict()) == w


def test_events_after_counts_each_users_later_events() -> None:
    from training.data import events_after

    rows = np.array([2, 0, 2, -1, 0, 2, 1])
    assert events_after(rows).tolist() == [2, 1, 1, 0, 0, 0, 0]


def test_time_decay_halves_per_half_life_of_age() -> None:
    w = EventWeights(time_half_life_days=2.0, dwell_bonus=0.0)
    types = np.full(3, int(EventType.ITEM_VIEW))
    day = 86_400_000
    out = w.weigh(types, np.full(3, -1), age_ms=np.array([0, 2 * day, 4 * day]))
    assert np.allclose(out, [1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="age_ms"):
        w.weigh(types, np.full(3, -1))
    assert EventWeights.from_dict(w.to_dict()) == w


def test_a_quickly_left_view_is_a_skip() -> None:
    w = EventWeights(skip_below_ms=3000, skip_factor=0.25, dwell_bonus=0.0)
    views = np.full(3, int(EventType.ITEM_VIEW))
    out = w.weigh(views, np.array([500, 5000, -1]))  # a skip, a real view, unknown dwell
    assert np.allclose(out, [0.25, 1.0, 1.0])
    cart = w.weigh(np.array([int(EventType.ADD_TO_CART)]), np.array([500]))
    assert np.allclose(cart, [3.0])  # only views can be skips
    default = EventWeights().weigh(views, np.array([500, 5000, -1]))  # skips off by default
    assert np.allclose(default, [1 + 500 / 60_000, 1 + 5000 / 60_000, 1.0])
    with pytest.raises(ValueError, match="skip_factor"):
        EventWeights(skip_factor=1.5)


def test_bm25_and_tfidf_scaling_match_implicit() -> None:
    """Without the idf floor in play, the scaling is implicit's own weighting."""
    import scipy.sparse as sp
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    from training.weighting import ConfidenceScaling

    rng = np.random.default_rng(0)
    dense = (rng.random((200, 12)) < 0.15) * rng.integers(1, 5, (200, 12))
    matrix = sp.csr_matrix(dense.astype(np.float32))
    for kind, reference in (
        ("bm25", bm25_weight(matrix, K1=100, B=0.8)),
        ("tfidf", tfidf_weight(matrix)),
    ):
        scaling = ConfidenceScaling.fit(matrix, EventWeights(scaling=kind))
        assert scaling.idf.min() > 0.1  # the floor did not bite on this matrix
        ours = scaling.apply(matrix).toarray()
        assert np.allclose(ours, sp.csr_matrix(reference).toarray(), rtol=1e-4, atol=1e-5)
        # One row at a time (serving) scales as the whole matrix (training) did.
        assert np.allclose(scaling.apply(matrix[7]).toarray(), ours[7:8], rtol=1e-5)
    with pytest.raises(ValueError, match="scaling"):
        EventWeights(scaling="log")
