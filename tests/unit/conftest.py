"""Fixtures of the unit suite: real stores (SQLite files in ``tmp_path``, or on
PostgreSQL the databases named after them), small hand-made data.

* ``db_path``: a fresh store path; ``store``: an open :class:`Store` on it
  (:func:`tests.conftest.store_url`); ``raw_db``: a second, plain connection.
* ``group_matrix``: two clear user groups (group A: 12 users who like items 0-9,
  group B: 8 users who like items 10-19). The groups differ in size on purpose:
  popularity alone ranks group-A items first for everyone, so only a
  personalized model ranks group-B items first for a group-B user.
* ``group_events``: the same groups as stored item events (string ids
  ``a00``..``b07`` and ``A0``..``B9``), for artifacts and evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from sessionrec.events import EventType
from sessionrec.store import EventColumns, Store, open_store
from tests.conftest import raw_connection, store_url

GROUP_A_USERS = 12
GROUP_B_USERS = 8
N_ITEMS = 20


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = open_store(store_url(db_path))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def raw_db(db_path: Path, store: Store) -> Iterator[Any]:
    """A second, independent connection to the store (to look at raw rows): a
    sqlite3 connection, or on PostgreSQL one that takes the same ``?`` SQL
    (:func:`tests.conftest.raw_connection`)."""
    with raw_connection(db_path) as conn:
        yield conn


@pytest.fixture
def group_matrix() -> sp.csr_matrix:
    rows, cols = [], []
    for user in range(GROUP_A_USERS + GROUP_B_USERS):
        base = 0 if user < GROUP_A_USERS else 10
        for item in range(10):
            rows.append(user)
            cols.append(base + item)
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(GROUP_A_USERS + GROUP_B_USERS, N_ITEMS))


def group_event_columns() -> EventColumns:
    users, items, ts = [], [], []
    t = 1_000_000
    for u in range(GROUP_A_USERS):
        for i in range(10):
            users.append(f"a{u:02d}")
            items.append(f"A{i}")
            ts.append(t)
            t += 1000
    for u in range(GROUP_B_USERS):
        for i in range(10):
            users.append(f"b{u:02d}")
            items.append(f"B{i}")
            ts.append(t)
            t += 1000
    n = len(users)
    user_arr = np.empty(n, dtype=object)
    item_arr = np.empty(n, dtype=object)
    user_arr[:] = users
    item_arr[:] = items
    return EventColumns(
        user_arr,
        item_arr,
        np.full(n, int(EventType.ITEM_VIEW), dtype=np.int8),
        np.full(n, -1, dtype=np.int64),
        np.asarray(ts, dtype=np.int64),
    )


@pytest.fixture
def group_events() -> EventColumns:
    return group_event_columns()


@pytest.fixture
def three_groups(store: Store) -> Store:
    """45 users in three taste groups; each views 8 of their group's 10 items over time."""
    from sessionrec.events import EventRecord, EventType, SessionRecord

    events, sessions = [], []
    t = 1_000_000
    for u in range(45):
        user, group = f"u{u}", u % 3
        sessions.append(SessionRecord("s-" + user, user, t, t))
        for k in range(8):
            item = f"g{group}-{(u + k) % 10}"
            events.append(
                EventRecord(f"{user}-{k}", "s-" + user, user, int(EventType.ITEM_VIEW), t, item)
            )
            t += 1000
    store.append_events(events, sessions)
    return store
