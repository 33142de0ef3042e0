"""``sessionrec.arrays.distinct``: np.unique's answer, by sorting."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.arrays import contained, distinct


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).integers(-50, 50, 1000),  # many repeats, negatives
        np.random.default_rng(2).integers(0, 2**62, 500),  # almost all distinct
        np.array([[3, 1], [3, 2]], dtype=np.int32),  # 2-D: flattened
        np.array(["screen b", "home", "screen b", "cart", "home"]),
        np.array([7]),
        np.array([], dtype=np.int64),
        [5, 5, 5],  # a list
    ],
)
def test_distinct_is_what_np_unique_returns(values) -> None:
    want = np.unique(values)
    got = distinct(values)
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()


def test_distinct_leaves_its_input_alone() -> None:
    values = np.array([3, 1, 3, 2])
    distinct(values)
    assert values.tolist() == [3, 1, 3, 2]


def test_contained_is_what_np_isin_returns() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(-5, 60, 400)
    ordered = distinct(rng.integers(0, 50, 30))
    assert contained(values, ordered).tolist() == np.isin(values, ordered).tolist()
    assert not contained(values, np.array([], dtype=np.int64)).any()
    assert contained(np.array([], dtype=np.int64), ordered).tolist() == []
