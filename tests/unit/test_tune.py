"""The tuner searches on validation data only, is reproducible, and refits."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.errors import InvalidArgument
from sessionrec.store import EventColumns
from training.tune import tune

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")


def clustered_events(seed: int = 3) -> EventColumns:
    """60 users in 3 taste groups of 15 items each, 12 time-ordered views each."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    t = 1_000_000
    for u in range(60):
        group = u % 3
        for item in rng.choice(15, size=12, replace=False):
            users.append(f"u{u}")
            items.append(f"g{group}-i{item}")
            t += 1000
            ts.append(t)
    order = np.argsort(ts, kind="stable")
    n = len(ts)
    return EventColumns(
        np.array(users, dtype=object)[order],
        np.array(items, dtype=object)[order],
        np.full(n, 2, dtype=np.int8),
        np.full(n, -1, dtype=np.int64),
        np.array(ts, dtype=np.int64)[order],
    )


def run(events: EventColumns, **kw):
    return tune(events, budget_s=None, trials=6, algorithms=("ease", "itemknn"), threads=1, **kw)


def test_tuning_beats_popularity_and_refits_the_winner() -> None:
    events = clustered_events()
    result = run(events)
    assert result.trials == 6
    assert result.best.algorithm in {"ease", "itemknn"}
    assert result.test["ndcg"] > result.popularity_test["ndcg"]
    assert result.model is not None and result.interactions is not None
    assert result.interactions.matrix.shape == (60, 45)  # refitted on every event
    summary = result.to_dict()
    assert summary["ndcg_ratio_vs_popular"] > 1
    assert len(result.history) == 6


def test_same_seed_same_data_same_result() -> None:
    events = clustered_events()
    first, second = run(events, seed=7), run(events, seed=7)
    assert first.best.to_dict() == second.best.to_dict()
    assert first.test == second.test
    assert [h["ndcg"] for h in first.history] == [h["ndcg"] for h in second.history]


def test_a_budget_or_trials_is_required() -> None:
    with pytest.raises(InvalidArgument, match="budget"):
        tune(clustered_events(), budget_s=None, trials=None)
