"""SessionManager (service/sessions.py) over a real store: sessions, validation
of tracked events, server-side sessionization and the inactivity timeout."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from service.sessions import IncomingEvent, SessionManager, now_ms
from sessionrec.errors import InvalidArgument, NotFound, SessionrecError
from sessionrec.events import EndReason, EventRecord, EventType, SessionRecord
from sessionrec.store import Store

HOUR_MS = 3_600_000
VIEW = int(EventType.ITEM_VIEW)
SCREEN = int(EventType.SCREEN_VIEW)


@pytest.fixture
def manager(store: Store) -> Iterator[SessionManager]:
    m = SessionManager(store, timeout_s=1800, max_clock_skew_s=600, max_events_per_call=50)
    yield m
    m.stop()


def view(item: str = "i1", **fields: object) -> IncomingEvent:
    return IncomingEvent(type=VIEW, item_id=item, **fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- sessions
def test_start_get_end(manager: SessionManager, store: Store) -> None:
    started = manager.start("u1", platform=2, app_version="1.4.0")
    assert started.is_open
    assert started.user_id == "u1"
    assert (started.platform, started.app_version) == (2, "1.4.0")
    assert started.event_count == 0
    assert manager.get(started.session_id) == started
    ended = manager.end(started.session_id)
    assert ended.end_reason == EndReason.CLOSED
    assert ended.ended_at_ms is not None and ended.ended_at_ms >= started.started_at_ms
    assert not manager.get(started.session_id).is_open
    # Ending twice changes nothing.
    assert manager.end(started.session_id) == ended
    assert store.count_sessions() == 1


def test_start_with_a_client_session_id_is_idempotent(
    manager: SessionManager, store: Store
) -> None:
    first = manager.start("u1", session_id="client-1", started_at_ms=now_ms() - 5000)
    second = manager.start("u1", session_id="client-1")
    assert first.session_id == second.session_id == "client-1"
    assert second.started_at_ms == first.started_at_ms
    assert store.count_sessions() == 1


def test_start_with_the_session_id_of_another_user_is_rejected(
    manager: SessionManager, store: Store
) -> None:
    manager.start("u1", session_id="shared")
    with pytest.raises(InvalidArgument, match=r"^session_id: "):
        manager.start("u2", session_id="shared")
    stored = store.get_session("shared")
    assert stored is not None and stored.user_id == "u1"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u\x01"}, "user_id"),
        ({"user_id": "u" * 300}, "user_id"),
        ({"user_id": "u1", "platform": 9}, "platform"),
        ({"user_id": "u1", "session_id": "s" * 300}, "session_id"),
        ({"user_id": "u1", "started_at_ms": -1}, "started_at"),
        ({"user_id": "u1", "started_at_ms": 10**15}, "started_at"),
    ],
)
def test_start_validates_its_arguments(
    manager: SessionManager, store: Store, kwargs: dict, field: str
) -> None:
    user = kwargs.pop("user_id")
    with pytest.raises(InvalidArgument, match=rf"^{field}: "):
        manager.start(user, **kwargs)
    assert store.count_sessions() == 0


def test_get_and_end_of_an_unknown_session_raise_not_found(manager: SessionManager) -> None:
    with pytest.raises(NotFound, match=r"^session_id: "):
        manager.get("nope")
    with pytest.raises(NotFound, match=r"^session_id: "):
        manager.end("nope")
    with pytest.raises(InvalidArgument, match=r"^session_id: required"):
        manager.get("")


def test_end_derives_the_dwell_of_the_last_view_until_the_close(
    manager: SessionManager, store: Store
) -> None:
    t0 = now_ms() - 60_000
    s = manager.start("u1", started_at_ms=t0)
    manager.track(
        [
            view("i1", session_id=s.session_id, ts_ms=t0),
            view("i2", session_id=s.session_id, ts_ms=t0 + 10_000),
            view("i3", session_id=s.session_id, ts_ms=t0 + 20_000, dwell_ms=1234),
        ]
    )
    ended = manager.end(s.session_id)
    assert ended.ended_at_ms is not None
    dwell = {e.item_id: e.dwell_ms for e in store.session_item_events(s.session_id, 10)}
    assert dwell["i1"] == 10_000  # gap to the next event
    assert dwell["i2"] == 10_000
    assert dwell["i3"] == 1234  # client dwell kept, even though it is the last view
    assert ended.total_dwell_ms == 10_000 + 10_000 + 1234


def test_end_gives_the_last_view_without_dwell_the_time_until_the_close(
    manager: SessionManager, store: Store
) -> None:
    t0 = now_ms() - 5000
    s = manager.start("u1", started_at_ms=t0)
    manager.track([view("i1", session_id=s.session_id, ts_ms=t0)])
    ended = manager.end(s.session_id)
    assert ended.ended_at_ms is not None
    (event,) = store.session_item_events(s.session_id, 10)
    assert event.dwell_ms == ended.ended_at_ms - t0
    assert event.dwell_ms >= 5000


# ------------------------------------------------------------- validation
def test_track_rejects_an_empty_batch(manager: SessionManager) -> None:
    with pytest.raises(InvalidArgument, match=r"^events: "):
        manager.track([])


def test_track_rejects_too_many_events(store: Store) -> None:
    manager = SessionManager(store, max_events_per_call=3)
    with pytest.raises(InvalidArgument, match=r"^events: at most 3"):
        manager.track([view(user_id="u1") for _ in range(4)])
    assert store.count_events() == 0
    assert manager.track([view(user_id="u1") for _ in range(3)]).accepted == 3


@pytest.mark.parametrize(
    ("event", "error", "field"),
    [
        (IncomingEvent(type=VIEW, item_id="i1"), InvalidArgument, "events[0].user_id"),
        (
            IncomingEvent(session_id="no-such-session", type=VIEW, item_id="i1"),
            NotFound,
            "events[0].session_id",
        ),
        (IncomingEvent(user_id="u1", type=99, item_id="i1"), InvalidArgument, "events[0].type"),
        (IncomingEvent(user_id="u1", type=-2, item_id="i1"), InvalidArgument, "events[0].type"),
        (IncomingEvent(user_id="u1", type=0, item_id="i1"), InvalidArgument, "events[0].type"),
        (IncomingEvent(user_id="u1", type=VIEW), InvalidArgument, "events[0].item_id"),
        (
            IncomingEvent(user_id="u1", type=int(EventType.PURCHASE)),
            InvalidArgument,
            "events[0].item_id",
        ),
        (IncomingEvent(user_id="u1", type=SCREEN), InvalidArgument, "events[0].screen"),
        (view(user_id="u1", dwell_ms=-1), InvalidArgument, "events[0].dwell_ms"),
        (view(user_id="u1", value=math.nan), InvalidArgument, "events[0].value"),
        (view(user_id="u1", value=math.inf), InvalidArgument, "events[0].value"),
        (view(user_id="u1", ts_ms=-5), InvalidArgument, "events[0].timestamp"),
        (
            view(user_id="u1", properties={f"k{i}": "v" for i in range(65)}),
            InvalidArgument,
            "events[0].properties",
        ),
        (view(user_id="u1", properties={"": "v"}), InvalidArgument, "events[0].properties"),
        (
            view(user_id="u1", properties={"k": "v" * 2000}),
            InvalidArgument,
            "events[0].properties[k]",
        ),
        (view(user_id="u1", event_id="e" * 300), InvalidArgument, "events[0].event_id"),
        (view("i\n1", user_id="u1"), InvalidArgument, "events[0].item_id"),
    ],
)
def test_track_rejects_an_invalid_event_naming_its_field(
    manager: SessionManager,
    store: Store,
    event: IncomingEvent,
    error: type[SessionrecError],
    field: str,
) -> None:
    with pytest.raises(error) as info:
        manager.track([event])
    assert str(info.value).startswith(field + ": ")
    assert store.count_events() == 0


def test_track_rejects_a_timestamp_beyond_the_clock_skew(
    manager: SessionManager, store: Store
) -> None:
    with pytest.raises(InvalidArgument, match=r"^events\[0\]\.timestamp: .*future"):
        manager.track([view(user_id="u1", ts_ms=now_ms() + 601_000 + 60_000)])
    # Within the allowed skew it is fine.
    result = manager.track([view(user_id="u1", ts_ms=now_ms() + 300_000)])
    assert result.accepted == 1
    assert store.count_events() == 1


def test_track_rejects_an_event_for_the_session_of_another_user(
    manager: SessionManager, store: Store
) -> None:
    s = manager.start("u1")
    with pytest.raises(InvalidArgument, match=r"^events\[0\]\.user_id: "):
        manager.track([view(session_id=s.session_id, user_id="u2")])
    assert store.count_events() == 0


def test_a_mixed_batch_stores_the_valid_events_and_lists_the_rejected(
    manager: SessionManager, store: Store
) -> None:
    result = manager.track(
        [
            view("i1", user_id="u1", event_id="ok-0"),
            IncomingEvent(user_id="u1", type=99, item_id="i2"),
            view("i3", user_id="u1", event_id="ok-2"),
            IncomingEvent(user_id="u1", type=VIEW),
        ]
    )
    assert (result.accepted, result.duplicates) == (2, 0)
    assert [r.index for r in result.rejected] == [1, 3]
    assert str(result.rejected[0].error).startswith("events[1].type: ")
    assert str(result.rejected[1].error).startswith("events[3].item_id: ")
    assert result.event_ids == ["ok-0", "", "ok-2", ""]
    assert store.count_events() == 2
    assert [e.item_id for e in store.user_item_events("u1", 10)] == ["i3", "i1"]


def test_an_all_invalid_batch_raises_the_first_error(manager: SessionManager, store: Store) -> None:
    with pytest.raises(InvalidArgument) as info:
        manager.track(
            [
                IncomingEvent(user_id="u1", type=VIEW, item_id="i1", dwell_ms=-3),
                IncomingEvent(user_id="u1", type=99, item_id="i1"),
            ]
        )
    assert str(info.value).startswith("events[0].dwell_ms: ")
    assert store.count_events() == 0
    assert store.count_sessions() == 0


def test_track_generates_event_ids_and_dedups_client_ones(
    manager: SessionManager, store: Store
) -> None:
    first = manager.track([view(user_id="u1", event_id="client-e1"), view(user_id="u1")])
    assert first.event_ids[0] == "client-e1"
    assert first.event_ids[1]  # generated
    again = manager.track([view(user_id="u1", event_id="client-e1")])
    assert (again.accepted, again.duplicates) == (0, 1)
    assert store.count_events() == 2


def test_track_without_timestamp_uses_the_receive_time(
    manager: SessionManager, store: Store
) -> None:
    before = now_ms()
    manager.track([view(user_id="u1")])
    after = now_ms()
    (event,) = store.user_item_events("u1", 1)
    assert before <= event.ts_ms <= after


def test_track_stores_optional_fields(manager: SessionManager, raw_db: Any) -> None:
    manager.track(
        [
            IncomingEvent(
                user_id="u1",
                type=SCREEN,
                screen="home",
                value=2.5,
                dwell_ms=800,
                event_id="e-screen",
                properties={"ab": "b"},
            )
        ]
    )
    row = raw_db.execute(
        "SELECT type, screen, item_id, value, dwell_ms, properties FROM events "
        "WHERE event_id = 'e-screen'"
    ).fetchone()
    assert tuple(row) == (SCREEN, "home", None, 2.5, 800, '{"ab": "b"}')


def test_events_refused_for_a_nul_in_an_id_are_quarantined_with_it_escaped(
    manager: SessionManager, store: Store
) -> None:
    """An id with control characters is refused; its quarantine row keeps the
    id escaped (PostgreSQL text cannot hold NUL) and the event as sent."""
    bad = IncomingEvent(user_id="u\x00", type=VIEW, item_id="i1", event_id="e\x00")
    result = manager.track([view("i1", user_id="u1", event_id="ok"), bad])
    assert (result.accepted, result.quarantined) == (1, 1)
    with pytest.raises(InvalidArgument, match="control characters"):
        manager.track([IncomingEvent(user_id="u1", type=VIEW, item_id="i1", event_id="f\x00")])
    rows = {q.event_id: q for q in store.quarantined()}
    assert set(rows) == {"e\\x00", "f\\x00"}
    assert rows["e\\x00"].user_id == "u\\x00"
    assert "contains control characters" in rows["e\\x00"].reason
    assert json.loads(rows["f\\x00"].event)["event_id"] == "f\x00"


# ---------------------------------------------------------- sessionization
def test_events_without_session_join_the_users_open_session(
    manager: SessionManager, store: Store
) -> None:
    s = manager.start("u1")
    result = manager.track([view("i1", user_id="u1"), view("i2", user_id="u1")])
    assert result.accepted == 2
    assert store.count_sessions() == 1
    assert manager.get(s.session_id).event_count == 2
    assert [e.item_id for e in store.session_item_events(s.session_id, 10)] == ["i2", "i1"]


def test_events_without_session_open_one_new_session_per_user(
    manager: SessionManager, store: Store
) -> None:
    t0 = now_ms() - 10_000
    manager.track(
        [
            view("i1", user_id="u1", ts_ms=t0 + 2000),
            view("i2", user_id="u2", ts_ms=t0),
            view("i3", user_id="u1", ts_ms=t0 + 1000),
        ]
    )
    assert store.count_sessions() == 2
    s1 = store.find_open_session("u1")
    s2 = store.find_open_session("u2")
    assert s1 is not None and s2 is not None
    assert s1.session_id != s2.session_id
    assert s1.event_count == 2
    assert (s1.started_at_ms, s1.last_event_at_ms) == (t0 + 1000, t0 + 2000)
    assert s2.event_count == 1
    # The next batch joins the sessions this one opened.
    manager.track([view("i4", user_id="u1")])
    assert store.count_sessions() == 2
    s1_after = store.get_session(s1.session_id)
    assert s1_after is not None and s1_after.event_count == 3


def idle_session(store: Store, user: str, at: int) -> SessionRecord:
    """A session that started at ``at`` and has received nothing since (by arrival)."""
    return store.start_session(
        SessionRecord(uuid.uuid4().hex, user, started_at_ms=at, last_event_at_ms=at)
    )


def test_an_event_for_an_idle_session_closes_it_with_timeout_first_and_is_stored(
    manager: SessionManager, store: Store
) -> None:
    old = now_ms() - 2 * HOUR_MS  # received nothing for longer than the 30 min timeout
    s = idle_session(store, "u1", old)
    result = manager.track([view("late", session_id=s.session_id)])
    assert result.accepted == 1
    after = store.get_session(s.session_id)
    assert after is not None
    assert after.end_reason == EndReason.TIMEOUT
    assert after.ended_at_ms == old  # at its last event, not at the new one
    assert after.event_count == 1  # the event is stored and counted
    assert [e.item_id for e in store.session_item_events(s.session_id, 10)] == ["late"]
    assert store.find_open_session("u1") is None


def test_an_idle_open_session_is_not_joined_a_new_one_is_opened(
    manager: SessionManager, store: Store
) -> None:
    old = now_ms() - 2 * HOUR_MS
    s = idle_session(store, "u1", old)
    manager.track([view("i1", user_id="u1")])
    before = store.get_session(s.session_id)
    assert before is not None
    assert before.end_reason == EndReason.TIMEOUT
    assert before.ended_at_ms == old
    assert before.event_count == 0
    current = store.find_open_session("u1")
    assert current is not None and current.session_id != s.session_id
    assert current.event_count == 1
    assert store.count_sessions() == 2


def test_a_back_dated_session_uploaded_late_stays_open(
    manager: SessionManager, store: Store
) -> None:
    """An app uploading yesterday's session: the timeout runs from arrival."""
    old = now_ms() - 24 * HOUR_MS
    s = manager.start("u1", started_at_ms=old)
    manager.track(
        [view(f"i{k}", session_id=s.session_id, ts_ms=old + k * 60_000) for k in range(1, 4)]
    )
    after = manager.get(s.session_id)
    assert after.is_open and after.end_reason == EndReason.OPEN
    assert after.event_count == 3
    assert after.duration_ms == 3 * 60_000
    ended = manager.end(s.session_id)
    assert ended.end_reason == EndReason.CLOSED


def test_old_session_less_events_do_not_join_todays_session(
    manager: SessionManager, store: Store
) -> None:
    today = manager.track([view("now", user_id="u1")])
    current = store.find_open_session("u1")
    assert today.accepted == 1 and current is not None
    yesterday = now_ms() - 24 * HOUR_MS
    manager.track([view("old", user_id="u1", ts_ms=yesterday)])
    assert store.count_sessions() == 2
    assert store.find_open_session("u1").session_id == current.session_id  # type: ignore[union-attr]
    assert [e.item_id for e in store.session_item_events(current.session_id, 10)] == ["now"]


def test_a_tiny_timeout_closes_a_session_once_idle(store: Store) -> None:
    import time

    manager = SessionManager(store, timeout_s=0.05)
    s = manager.start("u1")
    time.sleep(0.15)
    manager.track([view("i1", session_id=s.session_id)])
    after = manager.get(s.session_id)
    assert after.end_reason == EndReason.TIMEOUT
    assert after.ended_at_ms == s.started_at_ms
    assert after.event_count == 1


def test_get_closes_an_idle_session(manager: SessionManager, store: Store) -> None:
    old = now_ms() - 2 * HOUR_MS
    s = idle_session(store, "u1", old)
    got = manager.get(s.session_id)
    assert got.end_reason == EndReason.TIMEOUT
    assert got.ended_at_ms == old
    # end() of a timed-out session keeps the timeout.
    assert manager.end(s.session_id).end_reason == EndReason.TIMEOUT


def test_expire_idle_closes_only_idle_sessions(manager: SessionManager, store: Store) -> None:
    old = now_ms() - 2 * HOUR_MS
    idle = idle_session(store, "u1", old)
    # Stored directly (arriving long ago): track() would close the idle session first.
    store.append_events(
        [EventRecord("e1", idle.session_id, "u1", VIEW, old + 1000, item_id="i1")],
        received_ms=old + 1000,
    )
    fresh = manager.start("u2")
    assert manager.expire_idle() == 1
    idle_after = store.get_session(idle.session_id)
    fresh_after = store.get_session(fresh.session_id)
    assert idle_after is not None and fresh_after is not None
    assert idle_after.end_reason == EndReason.TIMEOUT
    assert idle_after.ended_at_ms == old + 1000
    assert fresh_after.is_open
    assert manager.expire_idle() == 0


def test_a_superseded_open_session_closes_at_its_last_event_with_the_batch(
    manager: SessionManager, store: Store
) -> None:
    """One event joins the user's open session, a later one (past the timeout
    gap) opens a new session: the old one closes at *its* last event, in the
    same transaction, with the joined event counted and its dwell derived."""
    base = now_ms() - 2 * HOUR_MS
    s = manager.start("u1", started_at_ms=base)
    manager.track(
        [
            view("i1", user_id="u1", ts_ms=base + 60_000),
            view("i2", user_id="u1", ts_ms=base + 120_000),
            view("i3", user_id="u1", ts_ms=base + HOUR_MS),
        ]
    )
    old = store.get_session(s.session_id)
    assert old is not None
    assert old.end_reason == EndReason.TIMEOUT
    assert old.ended_at_ms == old.last_event_at_ms == base + 120_000
    assert old.event_count == 2
    assert old.total_dwell_ms == 60_000  # i1's dwell runs until i2
    current = store.find_open_session("u1")
    assert current is not None and current.session_id != s.session_id
    assert current.event_count == 1 and current.started_at_ms == base + HOUR_MS


def test_oversized_dwell_and_unreadable_timestamps_are_rejected(manager: SessionManager) -> None:
    sid = manager.start("u1").session_id
    result = manager.track(
        [
            view("ok", session_id=sid),
            view("big", session_id=sid, dwell_ms=400 * 24 * HOUR_MS),
            IncomingEvent(
                session_id=sid, type=int(EventType.ITEM_VIEW), item_id="x", timestamp_error="bad"
            ),
        ]
    )
    assert result.accepted == 1
    reasons = {r.index: str(r.error) for r in result.rejected}
    assert reasons[1].startswith("events[1].dwell_ms:")
    assert reasons[2] == "events[2].timestamp: bad"
