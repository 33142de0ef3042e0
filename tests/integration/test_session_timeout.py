"""Inactivity timeout through gRPC: the reaper closes idle sessions at their
last event; late events are still stored but never reopen them."""

from __future__ import annotations

import pytest

from sessionrec.v1 import sessionrec_pb2 as pb

from .support import now_ms, sql_scalar, view, wait_for

TIMEOUT_S = 1.0


@pytest.fixture
def srv(start_server):
    return start_server(session_timeout_s=TIMEOUT_S, reaper_interval_s=0.2)


def ended_in_store(srv, sid: str):
    return sql_scalar(srv.db_path, "SELECT ended_at_ms FROM sessions WHERE session_id = ?", (sid,))


def test_reaper_times_out_idle_session_at_last_event(srv):
    sid = srv.sessions.StartSession(pb.StartSessionRequest(user_id="tess"), timeout=10).session_id
    last_ms = now_ms()
    events = [
        view("t1", session_id=sid, event_id="t-1", timestamp_ms=last_ms - 300),
        view("t2", session_id=sid, event_id="t-2", timestamp_ms=last_ms),
    ]
    reply = srv.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert reply.accepted == 2

    # The reaper (not a read through the API) closes it: watch the file itself.
    ended_ms = wait_for(lambda: ended_in_store(srv, sid), timeout_s=15)
    assert ended_ms == last_ms

    session = srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert session.end_reason == pb.TIMEOUT
    assert not session.active
    assert session.ended_at.ToMilliseconds() == last_ms
    assert session.last_event_at.ToMilliseconds() == last_ms
    assert session.event_count == 2
    assert session.duration_ms == last_ms - session.started_at.ToMilliseconds()
    # Timeout derives the first view's dwell (to the next event); the last stays unknown.
    assert session.total_dwell_ms == 300

    # A late event for the timed-out session is stored and counted ...
    late = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("t3", session_id=sid, event_id="t-3")]), timeout=10
    )
    assert (late.accepted, list(late.rejected)) == (1, [])
    after = srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert after.event_count == 3
    # ... but the session stays closed, where it was.
    assert after.end_reason == pb.TIMEOUT
    assert not after.active
    assert after.ended_at == session.ended_at
    assert after.started_at == session.started_at
    assert after.last_event_at == session.last_event_at
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events WHERE session_id = ?", (sid,)) == 3

    # Ending it explicitly changes nothing either.
    ended = srv.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    assert ended.end_reason == pb.TIMEOUT and ended.ended_at == session.ended_at


def test_next_event_by_user_id_opens_a_new_session_after_timeout(srv):
    first = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("n1", user_id="nina", event_id="n-1")]), timeout=10
    )
    assert first.accepted == 1
    first_sid = sql_scalar(srv.db_path, "SELECT session_id FROM events WHERE event_id = 'n-1'")
    assert wait_for(lambda: ended_in_store(srv, first_sid), timeout_s=15)

    second = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("n2", user_id="nina", event_id="n-2")]), timeout=10
    )
    assert second.accepted == 1
    second_sid = sql_scalar(srv.db_path, "SELECT session_id FROM events WHERE event_id = 'n-2'")
    assert second_sid != first_sid
    old = srv.sessions.GetSession(pb.GetSessionRequest(session_id=first_sid), timeout=10)
    new = srv.sessions.GetSession(pb.GetSessionRequest(session_id=second_sid), timeout=10)
    assert (old.end_reason, old.event_count) == (pb.TIMEOUT, 1)
    assert new.active and new.event_count == 1 and new.user_id == "nina"


def test_get_session_times_out_without_waiting_for_the_reaper(start_server):
    """Every read checks the timeout first: a long reaper interval does not matter."""
    srv = start_server(session_timeout_s=0.2, reaper_interval_s=3600)
    sid = srv.sessions.StartSession(pb.StartSessionRequest(user_id="rita"), timeout=10).session_id
    started = srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert started.active or started.end_reason == pb.TIMEOUT

    closed = wait_for(
        lambda: (
            srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10).end_reason
            == pb.TIMEOUT
        ),
        timeout_s=10,
    )
    assert closed
    session = srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert session.ended_at == session.started_at  # no events: it ends where it started
    assert session.duration_ms == 0
