"""Session rules through gRPC: dwell times, events for closed sessions, and
server-side sessionization."""

from __future__ import annotations

import json

import pytest

from sessionrec.v1 import sessionrec_pb2 as pb

from .support import now_ms, sql_scalar, ts, view

MINUTE_MS = 60_000


def get(srv, sid: str) -> pb.Session:
    return srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)


def test_dwell_client_given_and_derived(client):
    t0 = now_ms() - 10 * MINUTE_MS
    sid = client.sessions.StartSession(
        pb.StartSessionRequest(user_id="dw", started_at=ts(t0)), timeout=10
    ).session_id
    events = [
        view("d1", session_id=sid, timestamp_ms=t0, dwell_ms=5_000),  # client-measured
        view("d2", session_id=sid, timestamp_ms=t0 + 10_000),  # -> 15 s to the next event
        pb.Event(session_id=sid, type=pb.SCREEN_VIEW, screen="cart", timestamp=ts(t0 + 25_000)),
        pb.Event(
            session_id=sid, type=pb.PURCHASE, item_id="d2", value=9.5, timestamp=ts(t0 + 30_000)
        ),  # not a view: no dwell
    ]
    reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert reply.accepted == 4

    open_session = get(client, sid)
    assert open_session.total_dwell_ms == 5_000  # only what the client measured, so far
    assert open_session.duration_ms == 30_000

    ended = client.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    # 5 s (client) + 15 s (derived) + 5 s (screen view, derived); the purchase has none.
    assert ended.total_dwell_ms == 25_000
    dwell = {
        item or screen: (d, derived)
        for item, screen, d, derived in _rows(
            client,
            "SELECT item_id, screen, dwell_ms, dwell_derived FROM events "
            "WHERE session_id = ? AND type IN (1, 2)",
            (sid,),
        )
    }
    assert dwell == {"d1": (5_000, 0), "d2": (15_000, 1), "cart": (5_000, 1)}
    assert sql_scalar(client.db_path, "SELECT value FROM events WHERE type = 4") == 9.5


def test_last_view_of_a_closed_session_runs_until_the_close(client):
    t0 = now_ms() - MINUTE_MS
    sid = client.sessions.StartSession(
        pb.StartSessionRequest(user_id="dl", started_at=ts(t0)), timeout=10
    ).session_id
    reply = client.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("x", session_id=sid, timestamp_ms=t0)]), timeout=10
    )
    assert reply.accepted == 1
    ended = client.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    assert ended.total_dwell_ms == ended.ended_at.ToMilliseconds() - t0
    assert ended.total_dwell_ms >= MINUTE_MS


def test_events_for_a_closed_session_are_stored_but_never_reopen_it(client):
    t0 = now_ms() - 5 * MINUTE_MS
    sid = client.sessions.StartSession(
        pb.StartSessionRequest(user_id="late", started_at=ts(t0)), timeout=10
    ).session_id
    client.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("l1", session_id=sid, timestamp_ms=t0 + 1_000)]),
        timeout=10,
    )
    ended = client.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    assert ended.end_reason == pb.CLOSED and ended.event_count == 1

    late = [
        view("l2", session_id=sid, timestamp_ms=t0 - MINUTE_MS),  # before the start
        view("l3", session_id=sid),  # after the close (server time)
        pb.Event(session_id=sid, type=pb.CLICK, item_id="l3", properties={"pos": "2"}),
    ]
    reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=late), timeout=10)
    assert (reply.accepted, list(reply.rejected)) == (3, [])

    after = get(client, sid)
    assert after.event_count == 4
    assert after.end_reason == pb.CLOSED and not after.active
    assert after.started_at == ended.started_at
    assert after.ended_at == ended.ended_at
    assert after.last_event_at == ended.last_event_at
    assert after.duration_ms == ended.duration_ms
    props = sql_scalar(client.db_path, "SELECT properties FROM events WHERE type = 5")
    assert json.loads(props) == {"pos": "2"}

    # The user's next event without session opens a new session.
    reply = client.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("l4", user_id="late", event_id="late-next")]),
        timeout=10,
    )
    new_sid = sql_scalar(client.db_path, "SELECT session_id FROM events WHERE event_id='late-next'")
    assert new_sid != sid
    assert get(client, new_sid).active


def test_open_session_is_reused_by_events_without_session_id(client):
    sid = client.sessions.StartSession(pb.StartSessionRequest(user_id="reuse"), timeout=10)
    for k in range(3):
        reply = client.sessions.TrackEvents(
            pb.TrackEventsRequest(events=[view(f"r{k}", user_id="reuse")]), timeout=10
        )
        assert reply.accepted == 1
    assert get(client, sid.session_id).event_count == 3
    assert sql_scalar(client.db_path, "SELECT COUNT(*) FROM sessions WHERE user_id='reuse'") == 1


@pytest.mark.parametrize("batched", [False, True], ids=["one-call-each", "one-batch"])
def test_sessionization_splits_at_the_inactivity_timeout(client, batched):
    """Events by user id with gaps longer than the timeout (30 min) belong to
    different sessions, whether they arrive one per call or in one batch (an
    offline client flushing its queue)."""
    now = now_ms()
    stamps = [now - 120 * MINUTE_MS, now - 60 * MINUTE_MS, now - MINUTE_MS]
    events = [
        view(f"g{k}", user_id="gappy", event_id=f"gap-{k}", timestamp_ms=at)
        for k, at in enumerate(stamps)
    ]
    calls = [events] if batched else [[e] for e in events]
    for batch in calls:
        reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=batch), timeout=10)
        assert reply.accepted == len(batch)

    sids = [
        sql_scalar(
            client.db_path, "SELECT session_id FROM events WHERE event_id = ?", (f"gap-{k}",)
        )
        for k in range(3)
    ]
    assert len(set(sids)) == 3, f"events 2 h, 1 h and 1 min ago share sessions: {sids}"
    first, second, third = (get(client, sid) for sid in sids)
    assert first.end_reason == second.end_reason == pb.TIMEOUT
    assert first.ended_at.ToMilliseconds() == stamps[0]
    assert second.ended_at.ToMilliseconds() == stamps[1]
    assert third.active and third.event_count == 1


def _rows(srv, query: str, params: tuple) -> list[tuple]:
    from tests.conftest import raw_connection

    with raw_connection(srv.db_path, readonly=True) as conn:
        return [tuple(row) for row in conn.execute(query, params).fetchall()]
