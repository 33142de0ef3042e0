"""The per-user temporal split and the offline evaluation (training/evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.events import EventType
from sessionrec.store import EventColumns
from training.evaluate import evaluate, split_temporal_fraction

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")


def columns(rows: list[tuple[str, str, int]]) -> EventColumns:
    """(user, item, ts) rows; EventColumns come ordered by time, so they are sorted here."""
    rows = sorted(rows, key=lambda r: r[2])
    n = len(rows)
    users = np.empty(n, dtype=object)
    items = np.empty(n, dtype=object)
    users[:] = [r[0] for r in rows]
    items[:] = [r[1] for r in rows]
    return EventColumns(
        users,
        items,
        np.full(n, int(EventType.ITEM_VIEW), dtype=np.int8),
        np.full(n, -1, dtype=np.int64),
        np.asarray([r[2] for r in rows], dtype=np.int64),
    )


def pairs(cols: EventColumns) -> set[tuple[str, int]]:
    return set(zip(cols.user_id.tolist(), cols.ts_ms.tolist(), strict=True))


def test_the_last_20_percent_of_each_user_by_time_go_to_test() -> None:
    rows = []
    # u1: 10 events, interleaved in time with u2 (5 events), u3 (1) and u4 (2)
    rows += [("u1", f"i{t}", t * 10) for t in range(10)]
    rows += [("u2", f"j{t}", t * 10 + 5) for t in range(5)]
    rows += [("u3", "k0", 33)]
    rows += [("u4", "m0", 1), ("u4", "m1", 99)]
    events = columns(rows)
    train, test = split_temporal_fraction(events, 0.2)
    assert len(train) + len(test) == len(events)
    assert pairs(test) == {
        ("u1", 80),
        ("u1", 90),  # 20% of 10 = 2: the two latest
        ("u2", 45),  # 20% of 5 = 1
        ("u4", 99),  # at least one for a user with two events
    }
    assert ("u3", 33) in pairs(train)  # a single event stays in training
    assert pairs(train) | pairs(test) == pairs(events)
    # Test items of each user are never older than their training items.
    for user in ("u1", "u2", "u4"):
        train_ts = train.ts_ms[train.user_id == user]
        test_ts = test.ts_ms[test.user_id == user]
        assert train_ts.max() < test_ts.min()
    # Both halves keep the time order.
    assert np.all(np.diff(train.ts_ms) >= 0)
    assert np.all(np.diff(test.ts_ms) >= 0)


def test_the_split_follows_time_not_item_or_user_order() -> None:
    rows = [("zed", "late", 500), ("zed", "b", 100), ("zed", "a", 200), ("amy", "x", 300)]
    rows += [("zed", "c", 400), ("amy", "y", 50)]
    train, test = split_temporal_fraction(columns(rows), 0.25)
    assert sorted(zip(test.user_id.tolist(), test.item_id.tolist(), strict=True)) == [
        ("amy", "x"),
        ("zed", "late"),
    ]
    assert len(train) == 4


def test_every_user_keeps_at_least_one_training_event() -> None:
    events = columns([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3)])
    train, test = split_temporal_fraction(events, 0.9)
    assert len(train) == 1 and train.item_id.tolist() == ["a"]
    assert test.item_id.tolist() == ["b", "c"]


def test_an_empty_split() -> None:
    train, test = split_temporal_fraction(columns([]), 0.2)
    assert len(train) == len(test) == 0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_the_fraction_must_be_between_0_and_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_temporal_fraction(columns([("u", "i", 1)]), fraction)


def test_evaluate_ranks_a_personalized_model_above_popularity() -> None:
    """Two groups (A: 6 users, B: 4 users), each user's last item by time is held
    out; popularity recommends group-A items to everyone, item-kNN follows the group."""
    rows = []
    t = 0
    for prefix, n_users, item in (("a", 6, "A"), ("b", 4, "B")):
        for u in range(n_users):
            for i in range(5):
                rows.append((f"{prefix}{u}", f"{item}{(u + i) % 5}", t))
                t += 1
    results = evaluate(columns(rows), "itemknn", {"K": 10, "num_threads": 1}, k=3)
    by_name = {r.algorithm: r for r in results}
    assert set(by_name) == {"itemknn", "popular"}
    knn, pop = by_name["itemknn"].metrics, by_name["popular"].metrics
    assert knn["users"] == pop["users"] == 10.0
    # Every held-out item is the one unseen item of the user's group.
    assert knn["hit_rate"] == pytest.approx(1.0)
    assert pop["hit_rate"] < knn["hit_rate"]
    assert by_name["itemknn"].to_dict()["k"] == 3
