"""SQLiteStore on real files: schema, WAL, idempotent appends, session counters,
dwell derivation, expiry, reads, durability across close/open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from sessionrec.events import EndReason, EventRecord, EventType, SessionRecord
from sessionrec.items import ItemRecord, check_item
from sessionrec.store import Store, open_store
from sessionrec.store.schema import MIGRATIONS, SCHEMA_VERSION, apply_migration
from sessionrec.store.sqlite import SQLiteStore
from tests.conftest import store_url

VIEW = int(EventType.ITEM_VIEW)
SCREEN = int(EventType.SCREEN_VIEW)
CLICK = int(EventType.CLICK)


def ev(
    event_id: str,
    ts: int,
    *,
    session: str = "s1",
    user: str = "u1",
    type: int = VIEW,
    item: str | None = "i1",
    screen: str | None = None,
    dwell: int | None = None,
) -> EventRecord:
    return EventRecord(
        event_id=event_id,
        session_id=session,
        user_id=user,
        type=type,
        ts_ms=ts,
        item_id=item,
        screen=screen,
        dwell_ms=dwell,
    )


def open_session(store: Store, sid: str = "s1", user: str = "u1", at: int = 1000) -> SessionRecord:
    return store.start_session(SessionRecord(sid, user, started_at_ms=at, last_event_at_ms=at))


def dwell_of(raw: sqlite3.Connection, event_id: str) -> tuple[int | None, int]:
    return raw.execute(
        "SELECT dwell_ms, dwell_derived FROM events WHERE event_id = ?", (event_id,)
    ).fetchone()


# ------------------------------------------------------------------ schema
@pytest.mark.sqlite_only
def test_open_store_creates_schema_in_wal_mode(store: Store, db_path: Path) -> None:
    assert isinstance(store, SQLiteStore)
    assert db_path.is_file()
    conn = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"events", "sessions"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"events_user_items", "sessions_open"} <= indexes
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # WAL is a property of the file: a fresh connection sees it too.
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        event_cols = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
        assert {"event_id", "session_id", "user_id", "type", "item_id", "dwell_ms", "ts_ms"} <= (
            event_cols
        )
    finally:
        conn.close()
    assert store.count_events() == 0
    assert store.count_sessions() == 0


@pytest.mark.sqlite_only
def test_event_id_is_unique_in_the_schema(raw_db: sqlite3.Connection) -> None:
    # index_list rows: (seq, name, unique, origin, partial)
    unique = [r for r in raw_db.execute("PRAGMA index_list(events)").fetchall() if r[2] == 1]
    columns = [
        [c[2] for c in raw_db.execute(f"PRAGMA index_info({r[1]!r})").fetchall()] for r in unique
    ]
    assert ["event_id"] in columns


# ------------------------------------------------------------- idempotency
def test_append_is_idempotent_on_event_id_within_one_batch(store: Store) -> None:
    open_session(store)
    first = ev("e1", 2000, item="first")
    repeat = ev("e1", 2500, item="second")
    result = store.append_events([first, repeat, ev("e2", 3000)])
    assert (result.accepted, result.duplicates) == (2, 1)
    assert store.count_events() == 2
    stored = store.user_item_events("u1", 10)
    assert [e.item_id for e in stored] == ["i1", "first"]  # the first copy won


def test_append_is_idempotent_on_event_id_across_batches(store: Store) -> None:
    open_session(store)
    assert store.append_events([ev("e1", 2000), ev("e2", 3000)]).accepted == 2
    result = store.append_events([ev("e2", 3000), ev("e3", 4000), ev("e1", 2000)])
    assert (result.accepted, result.duplicates) == (1, 2)
    assert store.count_events() == 3
    again = store.append_events([ev("e1", 2000), ev("e2", 3000), ev("e3", 4000)])
    assert (again.accepted, again.duplicates) == (0, 3)
    assert store.count_events() == 3


def test_session_counters_follow_only_newly_stored_events(store: Store) -> None:
    open_session(store, at=1000)
    store.append_events([ev("e1", 2000), ev("e2", 5000), ev("e3", 500)])
    s = store.get_session("s1")
    assert s is not None
    assert s.event_count == 3
    assert s.started_at_ms == 500  # an earlier event moves the start of an open session
    assert s.last_event_at_ms == 5000
    # Duplicates (even with other timestamps) change nothing.
    store.append_events([ev("e2", 90_000), ev("e1", 1)])
    s = store.get_session("s1")
    assert s is not None
    assert (s.event_count, s.started_at_ms, s.last_event_at_ms) == (3, 500, 5000)


def test_client_dwell_of_new_views_adds_to_total_dwell(store: Store) -> None:
    open_session(store)
    store.append_events(
        [
            ev("e1", 2000, dwell=700),
            ev("e2", 3000, type=CLICK, dwell=5000),  # not a view: no dwell
            ev("e1", 2000, dwell=700),  # duplicate
        ]
    )
    s = store.get_session("s1")
    assert s is not None
    assert s.total_dwell_ms == 700


def test_new_sessions_are_inserted_with_their_events(store: Store) -> None:
    new = SessionRecord("s9", "u9", started_at_ms=4000, last_event_at_ms=4000)
    result = store.append_events(
        [ev("e1", 4000, session="s9", user="u9"), ev("e2", 6000, session="s9", user="u9")],
        [new],
    )
    assert result.accepted == 2
    s = store.get_session("s9")
    assert s is not None
    assert (s.user_id, s.event_count, s.started_at_ms, s.last_event_at_ms) == ("u9", 2, 4000, 6000)
    assert s.is_open


def test_late_events_for_a_closed_session_are_stored_but_do_not_move_it(store: Store) -> None:
    open_session(store, at=1000)
    store.append_events([ev("e1", 2000)])
    closed = store.end_session("s1", 3000, EndReason.CLOSED, derive_last_dwell=True)
    assert closed is not None and closed.ended_at_ms == 3000
    result = store.append_events([ev("late", 9000), ev("early", 100)])
    assert result.accepted == 2
    assert store.count_events() == 3
    s = store.get_session("s1")
    assert s is not None
    assert s.event_count == 3
    assert s.ended_at_ms == 3000
    assert s.end_reason == EndReason.CLOSED
    assert s.started_at_ms == 1000
    assert s.last_event_at_ms == 2000
    assert not s.is_open


# ------------------------------------------------------------------- dwell
def test_end_session_derives_dwell_of_views_without_client_dwell(
    store: Store, raw_db: sqlite3.Connection
) -> None:
    open_session(store, at=1000)
    store.append_events(
        [
            ev("a", 1000),  # view, no dwell: gap to the click
            ev("click", 4000, type=CLICK),  # not a view: stays unknown
            ev("b", 5000, dwell=700),  # client dwell: kept
            ev("screen", 6000, type=SCREEN, item=None, screen="home"),  # gap to c
            ev("c", 6500),  # the last view: runs until the close
        ]
    )
    ended = store.end_session("s1", 10_000, EndReason.CLOSED, derive_last_dwell=True)
    assert ended is not None
    assert ended.end_reason == EndReason.CLOSED
    assert ended.ended_at_ms == 10_000
    assert dwell_of(raw_db, "a") == (3000, 1)
    assert dwell_of(raw_db, "click") == (None, 0)
    assert dwell_of(raw_db, "b") == (700, 0)
    assert dwell_of(raw_db, "screen") == (500, 1)
    assert dwell_of(raw_db, "c") == (3500, 1)
    assert ended.total_dwell_ms == 3000 + 700 + 500 + 3500


def test_end_session_without_derive_last_dwell_leaves_the_last_view_unknown(
    store: Store, raw_db: sqlite3.Connection
) -> None:
    open_session(store, at=1000)
    store.append_events([ev("a", 1000), ev("b", 2500)])
    ended = store.end_session("s1", 2500, EndReason.TIMEOUT, derive_last_dwell=False)
    assert ended is not None and ended.end_reason == EndReason.TIMEOUT
    assert dwell_of(raw_db, "a") == (1500, 1)
    assert dwell_of(raw_db, "b") == (None, 0)
    assert ended.total_dwell_ms == 1500


def test_end_session_is_a_no_op_on_a_closed_session_and_none_when_unknown(store: Store) -> None:
    open_session(store, at=1000)
    first = store.end_session("s1", 2000, EndReason.CLOSED, derive_last_dwell=True)
    second = store.end_session("s1", 8000, EndReason.TIMEOUT, derive_last_dwell=False)
    assert first is not None and second is not None
    assert (second.ended_at_ms, second.end_reason) == (2000, EndReason.CLOSED)
    assert store.end_session("nope", 2000, EndReason.CLOSED, derive_last_dwell=True) is None


def test_end_session_never_ends_before_the_start(store: Store) -> None:
    open_session(store, at=5000)
    ended = store.end_session("s1", 1000, EndReason.CLOSED, derive_last_dwell=True)
    assert ended is not None and ended.ended_at_ms == 5000


# ------------------------------------------------------------------ expiry
def test_expire_sessions_closes_idle_sessions_with_timeout_at_their_last_event(
    store: Store, raw_db: sqlite3.Connection
) -> None:
    open_session(store, "old", at=1000)
    open_session(store, "fresh", user="u2", at=1000)
    # Idleness is measured by arrival (last_seen_ms), not by the events' own times.
    store.append_events(
        [ev("o1", 1000, session="old"), ev("o2", 4000, session="old")], received_ms=4000
    )
    store.append_events([ev("f1", 2000, session="fresh", user="u2")], received_ms=50_000)
    closed = store.expire_sessions(idle_before_ms=10_000)
    assert closed == ["old"]
    old = store.get_session("old")
    fresh = store.get_session("fresh")
    assert old is not None and fresh is not None
    assert old.end_reason == EndReason.TIMEOUT
    assert old.ended_at_ms == 4000
    assert fresh.is_open and fresh.end_reason == EndReason.OPEN
    assert dwell_of(raw_db, "o1") == (3000, 1)
    assert dwell_of(raw_db, "o2") == (None, 0)  # nothing says how long the last view lasted
    assert store.find_open_session("u1") is None
    assert store.expire_sessions(idle_before_ms=10_000) == []


def test_find_open_session_returns_the_most_recent_open_one(store: Store) -> None:
    open_session(store, "s-old", at=1000)
    open_session(store, "s-new", at=2000)
    open_session(store, "s-closed", at=3000)
    store.end_session("s-closed", 3500, EndReason.CLOSED, derive_last_dwell=True)
    found = store.find_open_session("u1")
    assert found is not None and found.session_id == "s-new"
    assert store.find_open_session("nobody") is None


def test_start_session_keeps_the_stored_session(store: Store) -> None:
    open_session(store, "s1", "u1", at=1000)
    again = store.start_session(SessionRecord("s1", "u2", started_at_ms=9, last_event_at_ms=9))
    assert (again.user_id, again.started_at_ms) == ("u1", 1000)
    assert store.count_sessions() == 1


# ------------------------------------------------------------------- reads
def test_user_item_events_are_newest_first_with_limit(store: Store) -> None:
    open_session(store)
    open_session(store, "s2", user="u2")
    store.append_events(
        [
            ev("e3", 3000, item="i3"),
            ev("e1", 1000, item="i1", dwell=250),
            ev("scr", 5000, type=SCREEN, item=None, screen="home"),
            ev("e4", 4000, item="i4", type=int(EventType.PURCHASE)),
            ev("e2", 2000, item="i2"),
            ev("x", 6000, item="other", session="s2", user="u2"),
        ]
    )
    latest = store.user_item_events("u1", 3)
    assert [e.item_id for e in latest] == ["i4", "i3", "i2"]
    assert [e.ts_ms for e in latest] == [4000, 3000, 2000]
    assert latest[0].type == int(EventType.PURCHASE)
    everything = store.user_item_events("u1", 100)
    assert [e.item_id for e in everything] == ["i4", "i3", "i2", "i1"]
    assert everything[-1].dwell_ms == 250
    assert everything[0].dwell_ms is None
    assert store.user_item_events("nobody", 10) == []
    assert [e.item_id for e in store.session_item_events("s1", 2)] == ["i4", "i3"]


def test_item_events_are_ordered_by_time(store: Store) -> None:
    open_session(store)
    store.append_events([ev("c", 3000, item="i3", dwell=40), ev("a", 1000, item="i1")])
    store.append_events(
        [
            ev("b", 2000, item="i2", type=CLICK),
            ev("scr", 1500, type=SCREEN, item=None, screen="home"),
        ]
    )
    cols = store.item_events()
    assert len(cols) == 3
    assert cols.ts_ms.tolist() == [1000, 2000, 3000]
    assert cols.item_id.tolist() == ["i1", "i2", "i3"]
    assert cols.user_id.tolist() == ["u1", "u1", "u1"]
    assert cols.type.tolist() == [VIEW, CLICK, VIEW]
    assert cols.dwell_ms.tolist() == [-1, -1, 40]  # -1: unknown
    assert cols.type.dtype == np.int8
    assert cols.ts_ms.dtype == np.int64


def test_item_events_of_an_empty_store(store: Store) -> None:
    cols = store.item_events()
    assert len(cols) == 0
    assert cols.ts_ms.dtype == np.int64


def test_item_popularity_counts_distinct_users(store: Store) -> None:
    for user in ("u1", "u2", "u3"):
        open_session(store, "s-" + user, user=user)
    store.append_events(
        [
            ev("1", 1000, session="s-u1", user="u1", item="i1"),
            ev("2", 1001, session="s-u1", user="u1", item="i1"),
            ev("3", 1002, session="s-u1", user="u1", item="i1"),
            ev("4", 1003, session="s-u2", user="u2", item="i1"),
            ev("5", 1004, session="s-u1", user="u1", item="i2"),
            ev("6", 9000, session="s-u3", user="u3", item="i3"),
            ev("7", 9001, session="s-u2", user="u2", item="i3"),
        ]
    )
    assert store.item_popularity(0, 10) == [("i1", 2.0), ("i3", 2.0), ("i2", 1.0)]
    assert store.item_popularity(0, 1) == [("i1", 2.0)]
    assert store.item_popularity(5000, 10) == [("i3", 2.0)]


def test_get_sessions_returns_the_found_ones(store: Store) -> None:
    sessions = [
        SessionRecord(f"s{i:03d}", f"u{i % 7}", started_at_ms=i, last_event_at_ms=i)
        for i in range(620)  # more than one chunk of 500 ids
    ]
    for session in sessions:
        store.start_session(session)
    found = store.get_sessions(["s001", "missing", "s001", "s003"])
    assert set(found) == {"s001", "s003"}
    assert found["s003"].user_id == "u3"
    assert found["s003"].started_at_ms == 3
    assert len(store.get_sessions(s.session_id for s in sessions)) == 620
    everything = store.get_sessions([s.session_id for s in sessions] + ["missing"])
    assert len(everything) == 620
    assert store.get_sessions([]) == {}


# -------------------------------------------------------------- durability
def test_reopening_the_file_keeps_everything(db_path: Path) -> None:
    url = store_url(db_path)
    with open_store(url) as first:
        open_session(first, at=1000)
        first.append_events([ev("e1", 1000), ev("e2", 3000, item="i2")])
        first.end_session("s1", 5000, EndReason.CLOSED, derive_last_dwell=True)
    with open_store(url) as second:
        assert second.count_events() == 2
        assert second.count_sessions() == 1
        s = second.get_session("s1")
        assert s is not None
        assert (s.end_reason, s.ended_at_ms, s.event_count) == (EndReason.CLOSED, 5000, 2)
        assert s.total_dwell_ms == 2000 + 2000
        assert [e.dwell_ms for e in second.user_item_events("u1", 10)] == [2000, 2000]
        # Idempotency survives the restart too.
        again = second.append_events([ev("e1", 1000), ev("e3", 6000)])
        assert (again.accepted, again.duplicates) == (1, 1)
    with open_store(url) as third:
        assert third.count_events() == 3


@pytest.mark.sqlite_only
def test_open_store_with_a_missing_parent_directory_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "still" / "events.db"
    with open_store("sqlite:///" + str(path)) as s:
        open_session(s)
    assert path.is_file()


def test_a_session_opened_by_a_batch_of_duplicates_is_not_stored(store: Store) -> None:
    first = SessionRecord("s-new-1", "u1", started_at_ms=10, last_event_at_ms=10)
    store.append_events([EventRecord("dup-1", "s-new-1", "u1", 2, 10, item_id="i1")], [first])
    again = SessionRecord("s-new-2", "u1", started_at_ms=20, last_event_at_ms=20)
    result = store.append_events(
        [EventRecord("dup-1", "s-new-2", "u1", 2, 20, item_id="i1")], [again]
    )
    assert (result.accepted, result.duplicates) == (0, 1)
    assert store.get_session("s-new-2") is None
    assert store.get_session("s-new-1").event_count == 1  # type: ignore[union-attr]


def test_user_items_lists_every_item_of_the_user(store: Store) -> None:
    store.start_session(SessionRecord("s", "u1", started_at_ms=0, last_event_at_ms=0))
    store.append_events(
        [EventRecord(f"e{i}", "s", "u1", 2, i, item_id=f"i{i % 5}") for i in range(20)]
        + [EventRecord("screen", "s", "u1", 1, 30, screen="home")]
    )
    assert store.user_items("u1") == {f"i{i}" for i in range(5)}
    assert store.user_items("nobody") == set()


def _migrate_to(conn: sqlite3.Connection, version: int) -> None:
    """A file as an older sessionrec left it: the first ``version`` migrations."""
    for migration in MIGRATIONS[:version]:
        apply_migration(migration, conn.execute, "sqlite")


@pytest.mark.sqlite_only
def test_a_version_1_file_is_migrated_keeping_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    _migrate_to(conn, 1)
    conn.execute(
        "INSERT INTO sessions (session_id, user_id, started_at_ms, last_event_at_ms) "
        "VALUES ('s1', 'u1', 1000, 5000)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        session = store.get_session("s1")
        assert session is not None and session.last_seen_ms == 5000
        assert store.expire_sessions(idle_before_ms=6000) == ["s1"]
    finally:
        store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    check.close()


@pytest.mark.sqlite_only
def test_a_version_2_file_gains_an_empty_catalog_keeping_its_events(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    _migrate_to(conn, 2)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        store.start_session(SessionRecord("s1", "u1", started_at_ms=0, last_event_at_ms=0))
        store.append_events([ev("e1", 10, item="i1")])
        assert store.catalog_version() == 0 and store.catalog_items() == []
        store.upsert_items([check_item(item_id="i1", categories=["shoes"])], now_ms=50)
        assert store.get_item("i1") == ItemRecord(
            "i1", categories=("shoes",), created_at_ms=50, updated_at_ms=50, version=1
        )
        assert store.count_events() == 1
    finally:
        store.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {r[1] for r in check.execute("PRAGMA table_info(items)")}
        assert {"item_id", "categories", "price", "available", "version"} <= columns
        indexes = {r[1] for r in check.execute("PRAGMA index_list(items)")}
        assert "idx_items_version" in indexes
    finally:
        check.close()


@pytest.mark.sqlite_only
def test_a_version_4_file_gains_the_sessions_utc_offset(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path)
    _migrate_to(conn, 4)
    conn.execute(
        "INSERT INTO sessions (session_id, user_id, started_at_ms, last_event_at_ms) "
        "VALUES ('old', 'u1', 1000, 5000)"
    )
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        old = store.get_session("old")
        assert old is not None and old.utc_offset_min is None
        store.start_session(
            SessionRecord("tz", "u1", started_at_ms=0, last_event_at_ms=0, utc_offset_min=-570)
        )
        assert store.get_session("tz").utc_offset_min == -570  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_utc_offset_is_kept_by_start_and_by_appends(store: Store) -> None:
    started = store.start_session(
        SessionRecord("s1", "u1", started_at_ms=0, last_event_at_ms=0, utc_offset_min=120)
    )
    assert started.utc_offset_min == 120
    # Starting it again keeps the stored session, offset included.
    again = store.start_session(SessionRecord("s1", "u1", started_at_ms=5, last_event_at_ms=5))
    assert again.utc_offset_min == 120
    store.append_events(
        [ev("e1", 10, session="s2")],
        [SessionRecord("s2", "u1", started_at_ms=10, last_event_at_ms=10, utc_offset_min=330)],
    )
    store.append_events([ev("e2", 20, session="s3")], [SessionRecord("s3", "u1", 20, 20)])
    found = store.get_sessions(["s1", "s2", "s3"])
    assert {sid: s.utc_offset_min for sid, s in found.items()} == {"s1": 120, "s2": 330, "s3": None}
    store.end_session("s2", 30, EndReason.CLOSED, derive_last_dwell=True)
    assert store.get_session("s2").utc_offset_min == 330  # type: ignore[union-attr]


def test_item_events_carry_sessions_only_when_asked(store: Store) -> None:
    store.start_session(SessionRecord("s", "u1", started_at_ms=0, last_event_at_ms=0))
    store.append_events(
        [
            EventRecord("late", "s", "u1", 2, 300, item_id="b", dwell_ms=7),
            EventRecord("early", "s", "u1", 3, 100, item_id="a"),
            EventRecord("screen", "s", "u1", 1, 200, screen="home"),
        ]
    )
    plain = store.item_events()
    assert plain.session_id is None
    assert plain.item_id.tolist() == ["a", "b"]  # by time, screens left out
    assert plain.type.tolist() == [3, 2] and plain.dwell_ms.tolist() == [-1, 7]
    full = store.item_events(with_sessions=True)
    assert full.session_id is not None and full.session_id.tolist() == ["s", "s"]


# ----------------------------------------------------------------- catalog
def item(item_id: str, **fields) -> ItemRecord:
    return check_item(item_id=item_id, **fields)


def test_upsert_inserts_then_updates_and_counts_identical_items_as_unchanged(
    store: Store,
) -> None:
    first = store.upsert_items(
        [
            item("i1", title="Boot", categories=["shoes", "winter"], price=59.5),
            item("i2", attributes={"color": "red"}),
        ],
        now_ms=1000,
    )
    assert (first.inserted, first.updated, first.unchanged, first.catalog_version) == (2, 0, 0, 1)
    again = store.upsert_items(
        [
            item("i1", title="Boot", categories=["shoes", "winter"], price=59.5),
            item("i2", attributes={"color": "red"}),
        ],
        now_ms=2000,
    )
    # Identical: nothing written, the change counter does not move.
    assert (again.inserted, again.updated, again.unchanged, again.catalog_version) == (0, 0, 2, 1)
    changed = store.upsert_items(
        [item("i1", title="Boot", categories=["shoes"], price=59.5, available=False)], now_ms=3000
    )
    assert (changed.inserted, changed.updated, changed.catalog_version) == (0, 1, 2)
    boot = store.get_item("i1")
    assert boot is not None
    assert boot.categories == ("shoes",) and boot.available is False and boot.price == 59.5
    # created_at: the first upsert's time, kept by updates that do not send one.
    assert (boot.created_at_ms, boot.updated_at_ms, boot.version) == (1000, 3000, 2)
    other = store.get_item("i2")
    assert other is not None and other.price is None and other.attributes == {"color": "red"}
    assert (other.created_at_ms, other.version) == (1000, 1)
    assert store.get_item("nope") is None


def test_an_explicit_created_at_wins_and_counts_as_content(store: Store) -> None:
    store.upsert_items([item("i1", created_at_ms=500)], now_ms=1000)
    stored = store.get_item("i1")
    assert stored is not None and stored.created_at_ms == 500
    moved = store.upsert_items([item("i1", created_at_ms=700)], now_ms=2000)
    assert moved.updated == 1
    stored = store.get_item("i1")
    assert stored is not None and stored.created_at_ms == 700


def test_a_repeated_id_in_one_batch_applies_in_order(store: Store) -> None:
    result = store.upsert_items([item("i1", title="old"), item("i1", title="new")], now_ms=10)
    assert (result.inserted, result.updated, result.catalog_version) == (1, 1, 1)
    stored = store.get_item("i1")
    assert stored is not None and stored.title == "new"


def test_catalog_items_since_a_version_are_only_the_changes(store: Store) -> None:
    store.upsert_items([item("a"), item("b")], now_ms=1)
    store.upsert_items([item("c", price=0.1 + 0.2)], now_ms=2)
    store.upsert_items([item("a", available=False)], now_ms=3)
    assert store.catalog_version() == 3
    assert [i.item_id for i in store.catalog_items()] == ["b", "c", "a"]  # by change
    assert [(i.item_id, i.version) for i in store.catalog_items(1)] == [("c", 2), ("a", 3)]
    assert store.catalog_items(3) == []
    # Prices come back exactly (no decimal rounding on the way).
    (c,) = store.catalog_items(1)[:1]
    assert c.price == 0.1 + 0.2


def test_a_failed_upsert_batch_stores_nothing(store: Store) -> None:
    store.upsert_items([item("a")], now_ms=1)
    bad = ItemRecord("b", categories=("x",), attributes={"k": object()})  # type: ignore[dict-item]
    try:
        store.upsert_items([item("c"), bad], now_ms=2)
    except TypeError:
        pass
    else:
        raise AssertionError("an unserializable attribute must fail the batch")
    assert store.get_item("c") is None
    assert store.catalog_version() == 1


def test_the_catalog_survives_reopening(db_path: Path) -> None:
    with open_store(store_url(db_path)) as s:
        s.upsert_items([item("i1", categories=["x"], price=3.0, attributes={"k": "v"})], now_ms=7)
    with open_store(store_url(db_path)) as s:
        assert s.catalog_items() == [
            ItemRecord(
                "i1",
                categories=("x",),
                price=3.0,
                attributes={"k": "v"},
                created_at_ms=7,
                updated_at_ms=7,
                version=1,
            )
        ]


# ------------------------------------------- single writer, faults, deadlines
def wal_bytes(db_path: Path) -> int:
    wal = Path(str(db_path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.sqlite_only
def test_readers_are_query_only_and_never_checkpoint(db_path: Path) -> None:
    """Only the writer writes or checkpoints (the WAL-reset bug of SQLite < 3.51.3
    needs a checkpoint on one connection racing a commit on another)."""
    import pytest

    store = SQLiteStore(str(db_path))
    open_session(store)
    store.append_events([ev(f"e{k}", 1000 + k) for k in range(50)])
    reader = store._reader()
    assert reader is not store._writer
    assert reader.execute("PRAGMA query_only").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM events")
    assert store.count_events() == 50  # read through that reader
    # The commits sit in the WAL (nothing checkpointed them into the file yet).
    in_wal = wal_bytes(db_path)
    assert in_wal > 0
    # A reader closing while the writer is open does not checkpoint (close()
    # relies on it: readers first, the writer last).
    store._readers.remove(reader)
    store._local.conn = None
    reader.close()
    assert wal_bytes(db_path) == in_wal
    store.close()
    # The writer, closing last, checkpointed everything into the file.
    assert wal_bytes(db_path) == 0
    plain = sqlite3.connect(db_path)
    try:
        assert plain.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 50
        assert plain.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        plain.close()


@pytest.mark.sqlite_only
def test_the_sqlite_version_warning() -> None:
    from sessionrec.store.sqlite import sqlite_version_warning

    assert sqlite_version_warning("3.51.3") is None
    assert sqlite_version_warning("3.52.0") is None
    warning = sqlite_version_warning("3.40.1")
    assert warning is not None and "3.51.3" in warning and "single-writer" in warning


@pytest.mark.sqlite_only
def test_a_full_file_fails_the_whole_batch_and_the_next_write_clears_it(store: Store) -> None:
    import pytest

    from sessionrec.errors import ResourceExhausted

    assert isinstance(store, SQLiteStore)
    heard: list[str | None] = []
    store.add_write_listener(heard.append)
    open_session(store)
    store.set_max_pages(1)  # the pages in use, no more
    big = [
        EventRecord(f"e{k}", "s1", "u1", VIEW, 1000 + k, "i" * 200, properties={"p": "x" * 200})
        for k in range(200)
    ]
    with pytest.raises(ResourceExhausted, match=r"^store: disk full"):
        store.append_events(big)
    assert store.count_events() == 0
    assert store.write_error is not None and heard == [store.write_error]
    assert not store.recheck_space()
    # A transaction that writes nothing proves nothing: the failure stays.
    store.expire_sessions(0)
    assert store.write_error is not None
    store.set_max_pages(None)
    assert store.append_events(big).accepted == 200
    assert store.write_error is None and heard[-1] is None


@pytest.mark.sqlite_only
def test_waits_for_a_locked_file_end_before_the_callers_deadline(db_path: Path) -> None:
    import time

    import pytest

    from sessionrec import deadline
    from sessionrec.errors import DeadlineExceeded, Unavailable

    store = SQLiteStore(str(db_path), busy_timeout_ms=5000)
    holder = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with deadline.caller_deadline(0.5), pytest.raises(Unavailable, match="locked"):
            open_session(store)
        assert time.monotonic() - started < 0.5
        with deadline.caller_deadline(0.0), pytest.raises(DeadlineExceeded):
            open_session(store)
        assert store.write_error is None  # a lock is no storage failure
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    open_session(store)
    assert store.get_session("s1") is not None
    store.close()
