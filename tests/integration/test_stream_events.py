"""SessionService.StreamEvents: per-batch acks in request order, each after its
commit; a batch with nothing storable is acked with its rejections and the
stream goes on; a request the server cannot take ends the stream with its
status after the earlier acks. Real server on 127.0.0.1, real SQLite file."""

from __future__ import annotations

import threading

import grpc
import pytest

from sessionrec.v1 import sessionrec_pb2 as pb

from .support import sql_scalar, view


@pytest.fixture
def srv(tmp_path, start_server):
    return start_server(tmp_path / "stream.db", tmp_path / "models")


def acks_of(responses) -> list[pb.TrackEventsResponse]:
    """The per-request acks, in order, out of the stream's messages (a message
    carries the acks of the requests committed together)."""
    return [ack for message in responses for ack in message.acks]


def open_session(srv, user: str = "sam") -> str:
    return srv.sessions.StartSession(pb.StartSessionRequest(user_id=user), timeout=10).session_id


def test_every_request_is_acked_in_order_and_stored_once(srv):
    sid = open_session(srv)
    requests = [
        pb.TrackEventsRequest(events=[view(f"i{k % 7}", session_id=sid, event_id=f"s{k}")])
        for k in range(300)
    ]
    requests.append(  # a retried request: duplicates, nothing new
        pb.TrackEventsRequest(events=[view("i1", session_id=sid, event_id=f"s{k}") for k in (5, 6)])
    )
    requests.append(
        pb.TrackEventsRequest(
            events=[view("i2", session_id=sid, event_id=f"many-{k}") for k in range(50)]
        )
    )
    acks = acks_of(srv.sessions.StreamEvents(iter(requests), timeout=60))
    assert len(acks) == len(requests)
    assert [a.event_ids for a in acks[:300]] == [[f"s{k}"] for k in range(300)]
    assert all(a.accepted == 1 and a.duplicates == 0 for a in acks[:300])
    assert (acks[300].accepted, acks[300].duplicates) == (0, 2)
    assert acks[301].accepted == 50
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events") == 350
    assert sql_scalar(srv.db_path, "SELECT COUNT(DISTINCT event_id) FROM events") == 350


def test_a_batch_with_nothing_storable_is_acked_with_its_rejections(srv):
    sid = open_session(srv)
    requests = [
        pb.TrackEventsRequest(events=[view("i1", session_id=sid, event_id="ok-1")]),
        pb.TrackEventsRequest(
            events=[
                pb.Event(session_id=sid, event_id="bad-1", type=pb.SCREEN_VIEW),
                view("i9", session_id="no-such-session", event_id="bad-2"),
            ]
        ),
        pb.TrackEventsRequest(events=[view("i2", session_id=sid, event_id="ok-2")]),
    ]
    first, bad, last = acks_of(srv.sessions.StreamEvents(iter(requests), timeout=30))
    assert first.accepted == 1 and last.accepted == 1
    assert bad.accepted == 0 and bad.quarantined == 2
    assert [(r.index, r.code) for r in bad.rejected] == [
        (0, grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        (1, grpc.StatusCode.NOT_FOUND.value[0]),
    ]
    assert bad.rejected[0].reason.startswith("events[0].screen")
    assert list(bad.event_ids) == ["", ""]
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM quarantine") == 2
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events") == 2


def test_a_request_the_server_cannot_take_ends_the_stream_after_the_earlier_acks(srv):
    sid = open_session(srv)
    requests = [
        pb.TrackEventsRequest(events=[view("i1", session_id=sid, event_id="before")]),
        pb.TrackEventsRequest(events=[]),  # no events at all
        pb.TrackEventsRequest(events=[view("i2", session_id=sid, event_id="after")]),
    ]
    acks = []
    with pytest.raises(grpc.RpcError) as caught:
        for message in srv.sessions.StreamEvents(iter(requests), timeout=30):
            acks.extend(message.acks)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("events: must not be empty")
    assert [a.event_ids for a in acks] == [["before"]]
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events WHERE event_id = 'before'") == 1
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events WHERE event_id = 'after'") == 0
    # The server goes on.
    again = srv.sessions.StreamEvents(
        iter([pb.TrackEventsRequest(events=[view("i3", session_id=sid, event_id="after")])]),
        timeout=30,
    )
    assert [a.accepted for a in acks_of(again)] == [1]


def test_unparseable_requests_get_invalid_argument_and_the_server_still_stops(srv):
    """grpcio leaves a stream whose request it could not parse unfinished, and
    server.stop() then waits forever; the server parses stream requests itself."""
    raw = srv.channel.stream_stream(
        "/sessionrec.v1.SessionService/StreamEvents",
        request_serializer=lambda b: b,
        response_deserializer=pb.StreamEventsResponse.FromString,
    )
    for k in range(20):
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(iter([b"\xff\xff\xff" + bytes([k])]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "request: message 0 of the stream does not parse"
    stopper = threading.Thread(target=srv.server.stop, kwargs={"grace": 0.5}, daemon=True)
    stopper.start()
    stopper.join(timeout=15)
    assert not stopper.is_alive(), "server.stop() hung"


def test_acks_are_per_request_even_when_requests_share_a_commit(srv):
    """Requests that arrive together are stored in one transaction; each ack
    still reads as if its request had been tracked alone."""
    sid = open_session(srv)
    requests = []
    for k in range(200):
        events = [view("i1", session_id=sid, event_id=f"g{k}")]
        if k % 10 == 3:  # the same id again, in a later request
            events.append(view("i1", session_id=sid, event_id=f"g{k - 1}"))
        if k % 10 == 7:  # an invalid event second in its request
            events.append(pb.Event(session_id=sid, event_id=f"bad{k}", type=pb.SCREEN_VIEW))
        requests.append(pb.TrackEventsRequest(events=events))
    acks = acks_of(srv.sessions.StreamEvents(iter(requests), timeout=60))
    assert len(acks) == 200
    for k, ack in enumerate(acks):
        if k % 10 == 3:
            assert (ack.accepted, ack.duplicates) == (1, 1)
            assert list(ack.event_ids) == [f"g{k}", f"g{k - 1}"]
        elif k % 10 == 7:
            assert (ack.accepted, ack.duplicates, ack.quarantined) == (1, 0, 1)
            (rejection,) = ack.rejected
            assert rejection.index == 1 and rejection.reason.startswith("events[1].screen")
        else:
            assert (ack.accepted, ack.duplicates, list(ack.event_ids)) == (1, 0, [f"g{k}"])
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events") == 200
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM quarantine") == 20
