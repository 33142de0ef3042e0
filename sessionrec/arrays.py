"""Array helpers shared by the serving, training and analytics code."""

from __future__ import annotations

from typing import Any

import numpy as np


def distinct(values: Any) -> np.ndarray:
    """The distinct values of an integer or string array (flattened), sorted:
    what ``np.unique(values)`` returns, found by sorting. numpy 2.4's
    ``np.unique`` hashes instead, and measured 5-50x slower on this project's
    arrays (3,000 item numbers: 430 us against 46 us; 1M int64 ids: 1.2 s
    against 21 ms), which put it at the top of a Recommend call's profile."""
    ordered = np.sort(np.asarray(values).ravel())
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def contained(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in ``ordered`` (sorted, e.g. from ``distinct``): a
    binary search each, far cheaper than ``np.isin`` for the short lists of a
    request (3,000 values in 30: 150 us with ``np.isin``)."""
    values = np.asarray(values)
    if not len(ordered):
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return np.asarray(ordered[at] == values)
