"""Splits keep time's arrow and put the right events on each side."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.errors import InvalidArgument
from sessionrec.store import EventColumns
from training.splits import (
    split,
    split_global_time,
    split_last_session,
    split_temporal_fraction,
    validation_split,
)


def columns(rows: list[tuple[str, str, int, str]]) -> EventColumns:
    """(user, item, ts, session) rows, ordered by time as a store returns them."""
    rows = sorted(rows, key=lambda r: r[2])
    users = np.array([r[0] for r in rows], dtype=object)
    items = np.array([r[1] for r in rows], dtype=object)
    ts = np.array([r[2] for r in rows], dtype=np.int64)
    sessions = np.array([r[3] for r in rows], dtype=object)
    n = len(rows)
    return EventColumns(users, items, np.full(n, 2, np.int8), np.full(n, -1), ts, sessions)


EVENTS = columns(
    [(f"u{u}", f"i{k}", 1000 * k + u, f"s{u}-{k // 4}") for u in range(3) for k in range(10)]
    + [("solo", "x", 5, "solo-1")]
)


def pairs(ev: EventColumns) -> set[tuple[str, str]]:
    return set(zip(ev.user_id.tolist(), ev.item_id.tolist(), strict=True))


def test_temporal_fraction_takes_each_users_last_fifth() -> None:
    train, test = split_temporal_fraction(EVENTS, 0.2)
    assert pairs(test) == {(f"u{u}", f"i{k}") for u in range(3) for k in (8, 9)}
    assert ("solo", "x") in pairs(train)  # one event: nothing to hold out
    assert len(train) + len(test) == len(EVENTS)


def test_global_time_cut_puts_everything_after_it_in_test() -> None:
    train, test = split_global_time(EVENTS, cut_ms=7000)
    assert test.ts_ms.min() >= 7000 > train.ts_ms.max()
    train2, test2 = split_global_time(EVENTS, 0.2)
    assert train2.ts_ms.max() < test2.ts_ms.min()
    assert abs(len(test2) - 0.2 * len(EVENTS)) <= 3


def test_last_session_holds_out_each_users_final_session() -> None:
    train, test = split_last_session(EVENTS)
    # k // 4 -> sessions 0, 1, 2; the last holds items 8 and 9.
    assert pairs(test) == {(f"u{u}", f"i{k}") for u in range(3) for k in (8, 9)}
    assert set(test.session_id.tolist()) == {"s0-2", "s1-2", "s2-2"}
    assert ("solo", "x") in pairs(train)  # a single session stays in training


def test_last_session_needs_session_ids() -> None:
    no_sessions = EventColumns(
        *[getattr(EVENTS, f) for f in ("user_id", "item_id", "type", "dwell_ms", "ts_ms")]
    )
    with pytest.raises(InvalidArgument, match="session"):
        split_last_session(no_sessions)


def test_validation_split_is_carved_from_training_only() -> None:
    train, test = split(EVENTS, "temporal-fraction", 0.2)
    fit, valid = validation_split(train, "temporal-fraction", 0.25)
    assert not pairs(valid) & pairs(test)
    assert pairs(fit) | pairs(valid) == pairs(train)
    # Per user, validation events come after the fitting events and before the test events.
    for user in ("u0", "u1", "u2"):
        f = fit.ts_ms[fit.user_id == user]
        v = valid.ts_ms[valid.user_id == user]
        t = test.ts_ms[test.user_id == user]
        assert f.max() < v.min() and v.max() < t.min()


def test_unknown_split_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match="split"):
        split(EVENTS, "random")
    with pytest.raises(InvalidArgument, match="test_fraction"):
        split_temporal_fraction(EVENTS, 1.5)
