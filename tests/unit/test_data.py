"""Vocabularies and the weighted user x item matrix (training/data.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.events import EventType
from sessionrec.store import EventColumns
from training.data import Vocabulary, build_interactions, user_row
from training.weighting import EventWeights

VIEW = int(EventType.ITEM_VIEW)
PURCHASE = int(EventType.PURCHASE)
SEARCH = int(EventType.SEARCH)
CART = int(EventType.ADD_TO_CART)


def columns(rows: list[tuple[str, str, int, int]]) -> EventColumns:
    """(user, item, type, dwell) rows, timestamps in row order."""
    n = len(rows)
    users = np.empty(n, dtype=object)
    items = np.empty(n, dtype=object)
    users[:] = [r[0] for r in rows]
    items[:] = [r[1] for r in rows]
    return EventColumns(
        users,
        items,
        np.asarray([r[2] for r in rows], dtype=np.int8),
        np.asarray([r[3] for r in rows], dtype=np.int64),
        np.arange(n, dtype=np.int64) * 1000,
    )


# --------------------------------------------------------------- vocabulary
def test_vocabulary_maps_ids_to_rows_and_back() -> None:
    vocab = Vocabulary(["b", "a", "c"])
    assert len(vocab) == 3
    assert [vocab.number(x) for x in ("b", "a", "c")] == [0, 1, 2]
    assert [vocab.id(n) for n in (0, 1, 2)] == ["b", "a", "c"]
    assert vocab.number("zzz") == -1
    numbers = vocab.numbers(["c", "nope", "b"])
    assert numbers.tolist() == [2, -1, 0]
    assert numbers.dtype == np.int64
    assert "a" in vocab and "zzz" not in vocab
    # Stored without pickle: a fixed-width unicode array.
    assert vocab.ids.dtype.kind == "U"


def test_vocabulary_numbers_accepts_object_arrays() -> None:
    values = np.empty(2, dtype=object)
    values[:] = ["a", "q"]
    assert Vocabulary(["a"]).numbers(values).tolist() == [0, -1]


def test_vocabulary_from_values_is_sorted_and_distinct() -> None:
    vocab = Vocabulary.from_values(np.asarray(["u3", "u1", "u3", "u2", "u1"], dtype=object))
    assert vocab.ids.tolist() == ["u1", "u2", "u3"]


def test_vocabulary_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "b", "a"])


# ------------------------------------------------------------- interactions
def test_build_interactions_sums_weights_per_user_and_item() -> None:
    events = columns(
        [
            ("u1", "i1", VIEW, -1),  # 1
            ("u1", "i1", PURCHASE, -1),  # + 5
            ("u1", "i2", VIEW, 30_000),  # 1 + 0.5
            ("u2", "i1", CART, -1),  # 3
            ("u2", "i3", SEARCH, -1),  # 0: dropped
        ]
    )
    inter = build_interactions(events, EventWeights())
    assert inter.users.ids.tolist() == ["u1", "u2"]
    assert inter.items.ids.tolist() == ["i1", "i2", "i3"]
    assert inter.shape == (2, 3)
    dense = inter.matrix.toarray()
    assert dense.tolist() == [[6.0, 1.5, 0.0], [3.0, 0.0, 0.0]]
    assert inter.matrix.nnz == 3  # the zero weight is not stored
    assert inter.events == 4  # events that carried weight
    assert inter.matrix.dtype == np.float32


def test_build_interactions_drops_events_outside_given_vocabularies() -> None:
    events = columns([("u1", "i1", VIEW, -1), ("u2", "i1", VIEW, -1), ("u1", "i9", VIEW, -1)])
    inter = build_interactions(
        events, EventWeights(), users=Vocabulary(["u1"]), items=Vocabulary(["i1", "i2"])
    )
    assert inter.shape == (1, 2)
    assert inter.matrix.toarray().tolist() == [[1.0, 0.0]]
    assert inter.events == 1


def test_build_interactions_with_only_zero_weights_is_empty() -> None:
    inter = build_interactions(columns([("u1", "i1", SEARCH, -1)]), EventWeights())
    assert inter.matrix.nnz == 0
    assert inter.events == 0


def test_user_row_drops_unknown_items_and_zero_weights_and_sums_repeats() -> None:
    row = user_row(
        np.array([2, -1, 0, 2, 1]),
        np.array([1.0, 4.0, 0.0, 2.5, 1.0], dtype=np.float32),
        n_items=4,
    )
    assert row.shape == (1, 4)
    assert row.toarray().tolist() == [[0.0, 1.0, 3.5, 0.0]]
    assert row.nnz == 2
