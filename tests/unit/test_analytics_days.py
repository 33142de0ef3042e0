"""The per-day analytics columns (sessionrec/analytics_days.py) and their cache in
the store's ``analytics_days`` table, on real stores:

* the blob format round-trips every column (dtypes, non-ASCII and empty text);
* a seeded random sequence of store writes never leaves a stale cached day: after
  each write, the cached answers equal those of a copy of the store whose days
  are all rebuilt (and, at the end, a computation from the raw rows);
* a day built before a write to it cannot be stored; refresh builds newest first;
* old schemas: a clear error without the table, migration 5 re-creates the days;
* top items cut at 20 among ties by item id.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from test_analytics import (
    ANDROID,
    CART,
    CLICK,
    DAY,
    IOS,
    ITEM,
    SCREEN,
    T0,
    H,
    assert_same,
    ev,
    expected_flows,
    expected_stats,
    session,
)

from sessionrec.analytics import TOP_ITEMS, refresh_days, screen_flows, session_stats
from sessionrec.analytics_days import DayColumns, build_day, decode, encode
from sessionrec.events import EndReason
from sessionrec.store import Store, open_store
from sessionrec.store.schema import SCHEMA_VERSION
from tests.conftest import TEST_STORE, raw_connection, store_url

NOW = T0 + 40 * DAY


def sql(store: Store, query: str, *args: Any) -> list[tuple]:
    with store.read_snapshot() as conn:
        return [tuple(row) for row in conn.execute(query, args).fetchall()]


def day_rows(store: Store) -> dict[int, tuple[int, bool]]:
    """``{day: (stamp, has data)}`` of the ``analytics_days`` table."""
    rows = sql(store, "SELECT day, stamp, data IS NOT NULL FROM analytics_days")
    return {d: (s, bool(k)) for d, s, k in rows}


def rebuilt_copy(src: Path, dst: Path) -> None:
    """Makes the store at ``dst`` (already created) a copy of the sessions and
    events of the store at ``src``, whose ``analytics_days`` rows are made again
    from the sessions' start days, with no cached data (nothing carried over)."""
    with raw_connection(src) as a, raw_connection(dst) as b:
        b.execute("BEGIN")
        for table in ("analytics_days", "events", "sessions"):
            b.execute(f"DELETE FROM {table}")
        for table in ("sessions", "events"):
            cur = a.execute(f"SELECT * FROM {table}")
            marks = ", ".join("?" * len(cur.description))
            b.executemany(f"INSERT INTO {table} VALUES ({marks})", cur.fetchall())
        days = {s // DAY for (s,) in b.execute("SELECT started_at_ms FROM sessions").fetchall()}
        b.executemany("INSERT INTO analytics_days (day) VALUES (?)", [(d,) for d in days])
        b.execute("COMMIT")


def schema_version(conn: Any) -> int:
    """The schema version a store records (through a :func:`raw_connection`)."""
    if TEST_STORE == "postgresql":
        return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def set_schema_version(conn: Any, version: int) -> None:
    if TEST_STORE == "postgresql":
        conn.execute("UPDATE schema_version SET version = ?", (version,))
    else:
        conn.execute(f"PRAGMA user_version = {int(version)}")


def index_names(conn: Any) -> set[str]:
    if TEST_STORE == "postgresql":
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
    return {row[0] for row in conn.execute(sql).fetchall()}


# ------------------------------------------------------------------ format
def test_encode_decode_round_trip(store: Store) -> None:
    at = T0 + 3 * H
    store.append_events(
        [
            ev("e1", "s1", "ünï-ç", SCREEN, at, screen="écran 主页", dwell=1200),
            ev("e2", "s1", "ünï-ç", SCREEN, at + 5, screen=""),
            ev("e3", "s1", "ünï-ç", ITEM, at + 9, item="ĩtem-β", dwell=40),
            ev("e4", "s2", "", ITEM, at + 30 * H, item=""),
            ev("e5", "s2", "", CLICK, at + 31 * H),
        ],
        [session("s1", "ünï-ç", at, version=""), session("s2", "", at + H, ANDROID, "3.1-β")],
    )
    store.end_session("s1", at + 60_000, EndReason.CLOSED, derive_last_dwell=True)
    with store.read_snapshot() as conn:
        built = build_day(conn, T0 // DAY)
    assert built.sessions == 2
    assert set(built.screens.tolist()) == {"écran 主页", ""}
    assert set(built.item_ids.tolist()) == {"ĩtem-β", ""}
    assert built.s_version.tolist() == ["", "3.1-β"]
    for columns in (built, DayColumns.empty()):
        data = encode(columns)
        assert len(data) % 8 == 0
        back = decode(data)
        for f in fields(DayColumns):
            want, got = getattr(columns, f.name), getattr(back, f.name)
            assert got.dtype == want.dtype, f.name
            assert got.tolist() == want.tolist(), f.name


def test_decode_refuses_an_unknown_format() -> None:
    data = encode(DayColumns.empty())
    with pytest.raises(ValueError, match="unknown day format 7"):
        decode(data.replace(b'"format": 1,', b'"format": 7,'))


# ------------------------------------------------------------ never stale
FILTERS: list[dict[str, Any]] = [
    {},
    {"start_ms": T0 + 2 * DAY + 7 * H, "end_ms": T0 + 4 * DAY + 13 * H},
    {"platform": ANDROID},
    {"app_version": "3.1", "segment": "NEW_USER"},
    {"segment": "RETURNING_USER"},
    {"segment": "NEW_USER", "platform": IOS, "start_ms": T0 + 3 * DAY + 12 * H},
]
KINDS = ("new", "events", "late_ended", "earlier_day", "end", "expire", "close_with")
KINDS += ("orphan", "adopt", "duplicate")


def answers(store: Store, cache: Any = None, first: int = 0) -> list[tuple[dict, list]]:
    """Stats and flows for each of FILTERS, asked starting with ``FILTERS[first]``
    (so that narrow queries also get to build and cache days), in FILTERS' order."""
    got: dict[int, tuple[dict, list]] = {}
    for k in [*range(first, len(FILTERS)), *range(first)]:
        f = FILTERS[k]
        got[k] = (
            session_stats(store, now_ms=NOW, cache=cache, **f).to_dict(),
            screen_flows(store, max_steps=3, top=None, cache=cache, **f),
        )
    return [got[k] for k in range(len(FILTERS))]


class Writer:
    """Random store writes over UTC days 1-4 after T0 (T0's day stays free for
    sessions whose start a late event moves to the previous day)."""

    def __init__(self, store: Store, seed: int) -> None:
        self.store, self.rng = store, random.Random(seed)
        self.n = 0
        self.sids: list[str] = []
        self.orphans: list[tuple[str, str, int]] = []
        self.sent: list = []

    def events(self, sid: str, user: str, lo: int, hi: int, k: int) -> list:
        rng, out = self.rng, []
        for _ in range(k):
            self.n += 1
            t = rng.choice([SCREEN, SCREEN, SCREEN, ITEM, ITEM, CART, CLICK])
            screen = rng.choice(["home", "list", "détail", "cart", None]) if t == SCREEN else None
            item = f"i{rng.randrange(8)}" if t in (ITEM, CART) else None
            dwell = rng.choice([None, None, rng.randrange(6000)])
            ts = rng.randrange(lo, hi)
            out.append(ev(f"e{self.n}", sid, user, t, ts, screen=screen, item=item, dwell=dwell))
        self.sent += out
        return out

    def append(self, events: list, new: Sequence = (), close: Sequence = ()) -> None:
        received = max((e.ts_ms for e in events), default=T0) + 1000
        self.store.append_events(events, new, received_ms=received, close_sessions=close)

    def pick(self, open_: bool) -> Any:
        recs = [self.store.get_session(s) for s in self.sids]
        recs = [r for r in recs if r is not None and r.is_open == open_]
        return self.rng.choice(recs) if recs else None

    def new_record(self) -> Any:
        rng, sid = self.rng, f"s{len(self.sids) + len(self.orphans):03d}"
        start = T0 + rng.randrange(1, 5) * DAY + rng.randrange(20 * H)
        user = f"u{rng.randrange(6)}"
        return session(sid, user, start, rng.choice([IOS, ANDROID]), rng.choice(["3.0", "3.1"]))

    def step(self, kind: str) -> str:
        rng = self.rng
        rec = self.pick(open_=kind != "late_ended")
        needs_one = ("events", "late_ended", "earlier_day", "end", "expire", "close_with")
        if (kind in needs_one and rec is None) or (kind == "duplicate" and not self.sent):
            kind = "new"
        if kind == "adopt" and not self.orphans:
            kind = "orphan"
        if kind == "new":
            rec = self.new_record()
            self.sids.append(rec.session_id)
            k = rng.choice([0, 1, 2, 4])
            if k:
                lo = rec.started_at_ms
                self.append(self.events(rec.session_id, rec.user_id, lo, lo + 2 * H, k), [rec])
            else:
                self.store.start_session(rec)
        elif kind == "events":
            lo = rec.started_at_ms
            self.append(self.events(rec.session_id, rec.user_id, lo, lo + 3 * H, 2))
        elif kind == "late_ended":
            lo, hi = rec.started_at_ms - H, rec.last_event_at_ms + H
            self.append(self.events(rec.session_id, rec.user_id, lo, hi, rng.choice([1, 2])))
        elif kind == "earlier_day":
            midnight = rec.started_at_ms // DAY * DAY
            self.append(self.events(rec.session_id, rec.user_id, midnight - 3 * H, midnight, 1))
            assert self.store.get_session(rec.session_id).started_at_ms < midnight
        elif kind == "end":
            at, derive = rec.last_event_at_ms + rng.randrange(60_000), rng.random() < 0.7
            self.store.end_session(rec.session_id, at, EndReason.CLOSED, derive_last_dwell=derive)
        elif kind == "expire":
            assert self.store.expire_sessions(rec.last_seen_ms + 1)
        elif kind == "close_with":
            other, lo = self.pick(open_=True), rec.started_at_ms
            evs = self.events(rec.session_id, rec.user_id, lo, lo + H, 1)
            self.append(evs, close=[other.session_id])
            assert not self.store.get_session(other.session_id).is_open
        elif kind == "orphan":  # events before their session is stored
            rec = self.new_record()
            lo = rec.started_at_ms
            self.append(self.events(rec.session_id, rec.user_id, lo, lo + H, 2))
            self.orphans.append((rec.session_id, rec.user_id, lo))
        elif kind == "adopt":
            sid, user, at = self.orphans.pop(0)
            self.store.start_session(session(sid, user, at, ANDROID, "3.1"))
            self.sids.append(sid)
        elif kind == "duplicate":  # nothing changes (nothing must break either)
            self.append([rng.choice(self.sent)])
        return kind


def test_cached_days_are_never_stale(tmp_path: Path) -> None:
    path, copy = tmp_path / "live.db", tmp_path / "rebuilt.db"
    store = open_store(store_url(path), synchronous="OFF")
    rebuilt = open_store(store_url(copy), synchronous="OFF")
    try:
        writer = Writer(store, seed=5)
        rng = random.Random(6)
        plan = [kind for kind in KINDS[1:] for _ in range(3)] + ["new"] * 8
        rng.shuffle(plan)
        done: Counter[str] = Counter()
        reused = 0
        for i, want_kind in enumerate(["new"] * 6 + plan):
            kind = writer.step(want_kind)
            done[kind] += 1
            before = day_rows(store)
            reused += sum(has for _, has in before.values())
            got = answers(store, store.cache_analytics_days, first=i % len(FILTERS))
            # The unfiltered query built and stored every changed day.
            assert all(has for _, has in day_rows(store).values()), (i, kind)
            rebuilt_copy(path, copy)
            assert not any(has for _, has in day_rows(rebuilt).values())
            want = answers(rebuilt)
            for f, g, w in zip(FILTERS, got, want, strict=True):
                assert g == w, f"step {i} ({kind}), filters {f}"
        assert set(done) == set(KINDS) and reused > 100, (done, reused)
        # The rebuilt answers themselves agree with a computation from raw rows.
        for f in FILTERS:
            if "segment" in f:
                continue
            assert_same(got[FILTERS.index(f)][0], expected_stats(store, now_ms=NOW, **f), str(f))
            flows = screen_flows(store, max_steps=None, top=None, **f)
            assert flows == expected_flows(store, max_steps=None, **f)
    finally:
        rebuilt.close()
        store.close()


# --------------------------------------------------------------- stamps
def capture(store: Store) -> list[tuple[int, int, bytes]]:
    """Builds every uncached day without storing it."""
    built: list[tuple[int, int, bytes]] = []
    refresh_days(store, built.extend)
    return built


def test_a_day_built_before_a_write_is_not_stored(store: Store) -> None:
    d1, d2 = T0 // DAY + 1, T0 // DAY + 2
    store.append_events(
        [ev("a1", "A", "u1", SCREEN, d1 * DAY, screen="home", dwell=500)],
        [session("A", "u1", d1 * DAY)],
    )
    store.start_session(session("B", "u2", d2 * DAY + H))
    old = capture(store)
    assert [d for d, _, _ in old] == [d2, d1]  # newest first
    s1, s2 = day_rows(store)[d1][0], day_rows(store)[d2][0]
    assert [s for _, s, _ in old] == [s2, s1]
    # A write to day 1 after it was built: its old build can no longer be stored.
    store.append_events([ev("a2", "A", "u1", ITEM, d1 * DAY + 9, item="x", dwell=4)])
    assert store.cache_analytics_days([old[1]]) == 0
    t1, cached = day_rows(store)[d1]
    assert t1 > s1 and not cached
    assert store.cache_analytics_days(old) == 1  # day 2 did not move
    assert day_rows(store) == {d1: (t1, False), d2: (s2, True)}
    assert store.cache_analytics_days(old) == 0  # stored already
    new = capture(store)
    assert [(d, s) for d, s, _ in new] == [(d1, t1)]
    assert store.cache_analytics_days(new) == 1
    assert day_rows(store) == {d1: (t1, True), d2: (s2, True)}
    # What is read back is the cached day, and it is right.
    (blob,) = sql(store, "SELECT data FROM analytics_days WHERE day = ?", d1)[0]
    assert decode(blob).s_views.tolist() == [2]
    st = session_stats(store, now_ms=NOW)
    assert_same(st.to_dict(), expected_stats(store, now_ms=NOW))
    assert st.top_items == (("x", 1),)
    assert capture(store) == []


def test_refresh_days_builds_newest_first_within_the_limit(store: Store) -> None:
    days = [T0 // DAY + k for k in (0, 3, 4, 9, 12)]
    for k, d in enumerate(days):
        sid = f"s{k}"
        store.append_events(
            [ev(f"{sid}-1", sid, f"u{k % 2}", SCREEN, d * DAY + k * H, screen="home", dwell=k)],
            [session(sid, f"u{k % 2}", d * DAY + k * H)],
        )
    before = session_stats(store, now_ms=NOW).to_dict()  # no cache: nothing stored
    assert not any(has for _, has in day_rows(store).values())
    assert refresh_days(store, store.cache_analytics_days, limit=2) == 2
    assert sorted(d for d, (_, has) in day_rows(store).items() if has) == days[-2:]
    assert refresh_days(store, store.cache_analytics_days) == 3
    assert all(has for _, has in day_rows(store).values())
    assert refresh_days(store, store.cache_analytics_days, limit=2) == 0
    assert session_stats(store, now_ms=NOW).to_dict() == before
    assert_same(before, expected_stats(store, now_ms=NOW))


# -------------------------------------------------------------- schemas
# A SQLite file never opened by this version; PostgreSQL stores are always
# migrated by whoever opens them, and analytics read them through a Store.
@pytest.mark.sqlite_only
def test_sqlite_file_without_the_analytics_table_is_refused(db_path: Path, store: Store) -> None:
    store.start_session(session("A", "u1", T0))
    store.close()
    with raw_connection(db_path) as conn:
        conn.execute("DROP TABLE analytics_days")
    for call in (
        lambda: session_stats(db_path, now_ms=NOW),
        lambda: screen_flows(db_path),
        lambda: refresh_days(db_path, lambda days: 0),
    ):
        with pytest.raises(ValueError, match="not been upgraded to the analytics schema"):
            call()
    with raw_connection(db_path) as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        assert "analytics_days" not in {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master").fetchall()
        }


@pytest.mark.parametrize("how", ["delete rows", "drop table"])
def test_migration_5_makes_a_day_for_every_session_start(db_path: Path, how: str) -> None:
    starts = [T0, T0 + 5, T0 + DAY - 1, T0 + 3 * DAY, -1, -DAY, -DAY - 1]
    store = open_store(store_url(db_path))
    for k, at in enumerate(starts):
        sid = f"s{k}"
        store.append_events(
            [ev(f"{sid}-1", sid, f"u{k}", SCREEN, at, screen="home", dwell=10)],
            [session(sid, f"u{k}", at)],
        )
    refresh_days(store, store.cache_analytics_days)
    before = session_stats(store, now_ms=NOW).to_dict()
    store.close()
    with raw_connection(db_path) as conn:
        if how == "delete rows":
            conn.execute("DELETE FROM analytics_days")
        else:
            conn.execute("DROP TABLE analytics_days")
        conn.execute("DROP INDEX sessions_started")
        set_schema_version(conn, 4)
    with open_store(store_url(db_path)) as store:
        want_days = {at // DAY for at in starts}  # floor, also before 1970
        assert want_days == {T0 // DAY, T0 // DAY + 3, -1, -2}
        assert day_rows(store) == {d: (0, False) for d in want_days}
        with raw_connection(db_path) as conn:
            assert schema_version(conn) == SCHEMA_VERSION
            assert "sessions_started" in index_names(conn)
        assert session_stats(store, now_ms=NOW).to_dict() == before


# ------------------------------------------------------------ top items
def test_top_items_cut_ties_by_item_id(store: Store) -> None:
    rng = random.Random(11)
    # 3 items viewed 4 times, 30 tied at 2 views (ids not in insertion order, some
    # non-ASCII), 5 viewed once: the list holds the 3, then the first 17 tied by id.
    plan = {f"top{k}": 4 for k in range(3)}
    plan |= {f"{rng.choice('zyaéQ')}{rng.randrange(10**6):06d}": 2 for _ in range(30)}
    plan |= {f"once{k}": 1 for k in range(5)}
    assert len(plan) == 38
    n = 0
    for item, count in plan.items():
        for _ in range(count):  # spread over two days and several sessions
            n += 1
            sid = f"s{n % 7}-{n % 2}"
            at = T0 + (n % 2) * DAY + (n % 7) * H
            store.append_events(
                [ev(f"e{n}", sid, f"u{n % 7}", ITEM, at + n, item=item)],
                [session(sid, f"u{n % 7}", at)],
            )
    ranked = sorted(plan.items(), key=lambda p: (-p[1], p[0]))
    want = tuple(ranked[:TOP_ITEMS])
    assert want[2] == ("top2", 4) and want[3][1] == want[-1][1] == ranked[TOP_ITEMS][1] == 2
    assert [i for i, _ in want[3:]] == sorted(i for i, k in plan.items() if k == 2)[:17]
    cache = store.cache_analytics_days
    for _ in range(2):  # built, then from the cache
        assert session_stats(store, now_ms=NOW, cache=cache).top_items == want
    assert all(has for _, has in day_rows(store).values())
    # The second day alone (odd n): the same cut as computed from the raw rows.
    day2 = session_stats(store, now_ms=NOW, start_ms=T0 + DAY, cache=cache).to_dict()
    assert day2["top_items"] == expected_stats(store, now_ms=NOW, start_ms=T0 + DAY)["top_items"]
    assert len(day2["top_items"]) == TOP_ITEMS
