"""Train/test splits for offline evaluation, and validation splits for tuning.

Every split keeps time's arrow: what is tested happened after what is trained
on, so no model is scored on the past it was trained to predict.

* ``temporal-fraction`` (:func:`split_temporal_fraction`): per user, the last
  fraction of their events by time.
* ``global-time`` (:func:`split_global_time`): everything after one cut-off
  time (by default the time that leaves the last fraction of all events).
* ``last-session`` (:func:`split_last_session`): per user with two or more
  sessions, their last session.

:func:`validation_split` carves the same kind of split out of training data,
so tuning never sees the test set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sessionrec.errors import InvalidArgument
from sessionrec.store import EventColumns

Split = tuple[EventColumns, EventColumns]


def _user_runs(users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order by user (time order kept within a user) and each user's run."""
    order = np.argsort(users.astype(str), kind="stable")
    grouped = users[order]
    n = len(grouped)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return order, empty, empty
    bounds = np.flatnonzero(grouped[1:] != grouped[:-1]) + 1
    return order, np.r_[0, bounds], np.r_[bounds, n]


def split_temporal_fraction(events: EventColumns, test_fraction: float = 0.2) -> Split:
    """Per user, the last ``test_fraction`` of events by time (at least one, for
    users with two or more events) go to the test split."""
    if not 0 < test_fraction < 1:
        raise InvalidArgument(f"test_fraction: must be between 0 and 1, got {test_fraction}")
    test = np.zeros(len(events), dtype=bool)
    order, starts, ends = _user_runs(events.user_id)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        count = end - start
        if count < 2:
            continue
        n_test = min(count - 1, max(1, round(count * test_fraction)))
        test[order[end - n_test : end]] = True
    return events.take(~test), events.take(test)


def split_global_time(
    events: EventColumns, test_fraction: float = 0.2, *, cut_ms: int | None = None
) -> Split:
    """Events at or after ``cut_ms`` are the test split; by default the cut is the
    time before which ``1 - test_fraction`` of all events happened."""
    if cut_ms is None:
        if not 0 < test_fraction < 1:
            raise InvalidArgument(f"test_fraction: must be between 0 and 1, got {test_fraction}")
        if not len(events):
            return events, events
        cut_ms = int(np.quantile(events.ts_ms, 1 - test_fraction, method="higher"))
    test = events.ts_ms >= cut_ms
    return events.take(~test), events.take(test)


def split_last_session(events: EventColumns) -> Split:
    """Per user with two or more sessions, the events of their last session
    (the one whose last event is latest) are the test split."""
    if events.session_id is None:
        raise InvalidArgument("split: last-session needs session ids (load events from a store)")
    test = np.zeros(len(events), dtype=bool)
    order, starts, ends = _user_runs(events.user_id)
    sessions = events.session_id[order]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        run = sessions[start:end]
        last = run[-1]  # events are time-ordered: the session of the newest event
        if np.all(run == last):
            continue  # one session only: nothing earlier to train on
        test[order[start:end][run == last]] = True
    return events.take(~test), events.take(test)


SPLITS: dict[str, Callable[..., Split]] = {
    "temporal-fraction": split_temporal_fraction,
    "global-time": split_global_time,
    "last-session": lambda events, test_fraction=0.2: split_last_session(events),
}


def split(
    events: EventColumns, method: str = "temporal-fraction", test_fraction: float = 0.2
) -> Split:
    try:
        fn = SPLITS[method]
    except KeyError:
        raise InvalidArgument(
            f"split: unknown {method!r} (choose from {', '.join(sorted(SPLITS))})"
        ) from None
    return fn(events, test_fraction=test_fraction)


def validation_split(
    train: EventColumns, method: str = "temporal-fraction", test_fraction: float = 0.2
) -> Split:
    """The same kind of split, carved out of training data only: tune on
    (fit, validation), then report once on the untouched test split."""
    return split(train, method, test_fraction)
