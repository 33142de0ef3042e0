"""Events are idempotent on event_id, within a batch and across calls."""

from __future__ import annotations

from sessionrec.v1 import sessionrec_pb2 as pb

from .support import sql_scalar, view, wait_for


def stored(srv, event_id: str) -> int:
    return sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events WHERE event_id = ?", (event_id,))


def test_same_event_id_across_calls_is_stored_once(client):
    sid = client.sessions.StartSession(pb.StartSessionRequest(user_id="ida"), timeout=10).session_id
    event = view("i1", session_id=sid, event_id="evt-once")

    first = client.sessions.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=10)
    assert (first.accepted, first.duplicates, list(first.event_ids)) == (1, 0, ["evt-once"])

    second = client.sessions.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=10)
    assert (second.accepted, second.duplicates, list(second.rejected)) == (0, 1, [])
    assert list(second.event_ids) == ["evt-once"]

    assert stored(client, "evt-once") == 1
    session = client.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert session.event_count == 1


def test_same_event_id_within_one_batch_is_stored_once(client):
    sid = client.sessions.StartSession(pb.StartSessionRequest(user_id="ida"), timeout=10).session_id
    events = [
        view("i1", session_id=sid, event_id="evt-twice"),
        view("i2", session_id=sid, event_id="evt-other"),
        view("i1", session_id=sid, event_id="evt-twice"),
    ]
    reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert (reply.accepted, reply.duplicates, list(reply.rejected)) == (2, 1, [])
    assert list(reply.event_ids) == ["evt-twice", "evt-other", "evt-twice"]
    assert stored(client, "evt-twice") == 1
    session = client.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert session.event_count == 2

    # And once more across calls: everything is a duplicate now.
    again = client.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert (again.accepted, again.duplicates) == (0, 3)
    assert sql_scalar(client.db_path, "SELECT COUNT(*) FROM events") == 2
    session = client.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert session.event_count == 2


def test_duplicate_without_session_opens_nothing_new(client):
    """An event sent by user id (server-side sessionization) and resent later
    must not leave an extra session behind."""
    event = view("i9", user_id="zoe", event_id="evt-sessionless")
    first = client.sessions.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=10)
    assert first.accepted == 1
    second = client.sessions.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=10)
    assert (second.accepted, second.duplicates) == (0, 1)
    assert stored(client, "evt-sessionless") == 1
    assert sql_scalar(client.db_path, "SELECT COUNT(*) FROM sessions WHERE user_id='zoe'") == 1


def test_events_without_event_id_are_all_stored(client):
    events = [view("i1", user_id="noid") for _ in range(3)]
    reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert (reply.accepted, reply.duplicates) == (3, 0)
    assert len(set(reply.event_ids)) == 3 and all(reply.event_ids)
    assert sql_scalar(client.db_path, "SELECT COUNT(*) FROM events WHERE user_id='noid'") == 3


def test_resent_duplicate_after_timeout_opens_no_empty_session(start_server):
    """A client retrying an already stored event after its session timed out:
    the duplicate changes nothing (store contract), so no new session appears."""
    srv = start_server(session_timeout_s=0.3, reaper_interval_s=0.1)
    event = view("i9", user_id="zoe", event_id="evt-retried")
    first = srv.sessions.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=10)
    assert first.accepted == 1
    closed = wait_for(
        lambda: sql_scalar(
            srv.db_path, "SELECT COUNT(*) FROM sessions WHERE user_id='zoe' AND ended_at_ms > 0"
        ),
        timeout_s=10,
    )
    assert closed == 1
    second = srv.sessions.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=10)
    assert (second.accepted, second.duplicates) == (0, 1)
    assert stored(srv, "evt-retried") == 1
    sessions = sql_scalar(srv.db_path, "SELECT COUNT(*) FROM sessions WHERE user_id='zoe'")
    assert sessions == 1, "the duplicate opened an empty session"
