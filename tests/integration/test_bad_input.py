"""Bad input through gRPC: the right status code, a message that names the
field, and a server that keeps working (and keeps its data) afterwards."""

from __future__ import annotations

import grpc
import pytest

from sessionrec.v1 import sessionrec_pb2 as pb
from tests.conftest import raw_connection

from .support import assert_status, now_ms, rpc_error, sql_scalar, ts, view

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def srv(synthetic_copy, start_server):
    return start_server(synthetic_copy.db_path, synthetic_copy.models_dir)


@pytest.fixture
def session(srv):
    """An open session of user "alice" holding two stored events."""
    sid = srv.sessions.StartSession(pb.StartSessionRequest(user_id="alice"), timeout=10).session_id
    reply = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                view("a01", session_id=sid, event_id="keep-1"),
                view("a02", session_id=sid, event_id="keep-2"),
            ]
        ),
        timeout=10,
    )
    assert reply.accepted == 2
    return sid


def count_events(srv) -> int:
    return sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events")


# ------------------------------------------------------------- Recommend
@pytest.mark.parametrize(
    ("request_fields", "code", "field"),
    [
        ({"user_id": "", "n": 10}, INVALID, "user_id"),
        ({"user_id": "alice", "n": 0}, INVALID, "n"),
        ({"user_id": "alice", "n": 1001}, INVALID, "n"),
        ({"user_id": "alice", "n": -1}, INVALID, "n"),
        ({"user_id": "x" * 257, "n": 10}, INVALID, "user_id"),
        ({"user_id": "alice", "n": 10, "session_id": "no-such-session"}, NOT_FOUND, "session_id"),
    ],
    ids=["empty-user", "n-0", "n-1001", "n-negative", "user-too-long", "unknown-session"],
)
def test_recommend_rejects(srv, request_fields, code, field):
    err = assert_status(srv.recs.Recommend, pb.RecommendRequest(**request_fields), code, field)
    if field == "n":
        assert str(request_fields["n"]) in err.details()


def test_recommend_n_bounds_are_inclusive(srv):
    assert len(srv.recs.Recommend(pb.RecommendRequest(user_id="u00", n=1), timeout=10).items) == 1
    big = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", n=1000), timeout=10)
    assert 0 < len(big.items) <= 30  # the catalogue has 30 items


def test_recommend_with_another_users_session(srv, session):
    assert_status(
        srv.recs.Recommend,
        pb.RecommendRequest(user_id="mallory", session_id=session, n=5),
        INVALID,
        "session_id",
    )
    ok = srv.recs.Recommend(pb.RecommendRequest(user_id="alice", session_id=session, n=5))
    assert len(ok.items) == 5


# ----------------------------------------------------------- TrackEvents
def test_track_empty_batch(srv):
    assert_status(srv.sessions.TrackEvents, pb.TrackEventsRequest(), INVALID, "events")


def test_track_unknown_session(srv):
    assert_status(
        srv.sessions.TrackEvents,
        pb.TrackEventsRequest(events=[view("a01", session_id="no-such-session")]),
        NOT_FOUND,
        "events[0].session_id",
    )


@pytest.mark.parametrize(
    ("make_event", "field"),
    [
        (lambda sid: pb.Event(session_id=sid, type=99, item_id="a01"), "events[0].type"),
        (lambda sid: pb.Event(session_id=sid, type=0, item_id="a01"), "events[0].type"),
        (lambda sid: pb.Event(session_id=sid, type=pb.ITEM_VIEW), "events[0].item_id"),
        (lambda sid: pb.Event(session_id=sid, type=pb.ADD_TO_CART), "events[0].item_id"),
        (lambda sid: pb.Event(session_id=sid, type=pb.SCREEN_VIEW), "events[0].screen"),
        (
            lambda sid: view("a01", session_id=sid, timestamp_ms=now_ms() + DAY_MS),
            "events[0].timestamp",
        ),
        (lambda sid: view("a01"), "events[0].user_id"),
        (lambda sid: view("a01", session_id=sid, user_id="mallory"), "events[0].user_id"),
        (lambda sid: view("a01", session_id=sid, dwell_ms=-5), "events[0].dwell_ms"),
        (lambda sid: view("a01", session_id=sid, value=float("nan")), "events[0].value"),
        (lambda sid: view("a01", session_id=sid, event_id="e" * 300), "events[0].event_id"),
        (lambda sid: view("a\x01", session_id=sid), "events[0].item_id"),
        (
            lambda sid: view("a01", session_id=sid, properties={f"k{i}": "v" for i in range(65)}),
            "events[0].properties",
        ),
        (lambda sid: view("a01", session_id=sid, properties={"": "v"}), "events[0].properties"),
        (
            lambda sid: view("a01", session_id=sid, properties={"k": "v" * 1025}),
            "events[0].properties",
        ),
        (lambda sid: view("a01", session_id=sid, timestamp_ms=-1000), "events[0].timestamp"),
        (lambda sid: view("a01", session_id=sid, dwell_ms=2**63 - 1), "events[0].dwell_ms"),
        (
            lambda sid: pb.Event(
                session_id=sid, type=pb.ITEM_VIEW, item_id="a01", timestamp={"nanos": -5}
            ),
            "events[0].timestamp",
        ),
        (
            lambda sid: pb.Event(
                session_id=sid, type=pb.ITEM_VIEW, item_id="a01", timestamp={"seconds": 2**62}
            ),
            "events[0].timestamp",
        ),
    ],
    ids=[
        "type-99",
        "type-0",
        "item-view-without-item",
        "add-to-cart-without-item",
        "screen-view-without-screen",
        "one-day-in-the-future",
        "no-user-no-session",
        "user-mismatch",
        "negative-dwell",
        "nan-value",
        "event-id-too-long",
        "control-character-in-item",
        "too-many-properties",
        "empty-property-key",
        "property-value-too-long",
        "before-1970",
        "dwell-overflowing-sqlite",
        "negative-nanos",
        "seconds-out-of-range",
    ],
)
def test_track_rejects_single_event(srv, session, make_event, field):
    before = count_events(srv)
    err = assert_status(
        srv.sessions.TrackEvents,
        pb.TrackEventsRequest(events=[make_event(session)]),
        INVALID,
        field,
    )
    if field == "events[0].type":
        assert "99" in err.details() or "required" in err.details()
    assert count_events(srv) == before


def test_small_clock_skew_is_accepted(srv, session):
    """Up to max_clock_skew_s (600 s) in the future is a device clock, not an error."""
    reply = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(
            events=[view("a03", session_id=session, timestamp_ms=now_ms() + 5 * 60_000)]
        ),
        timeout=10,
    )
    assert (reply.accepted, list(reply.rejected)) == (1, [])


def test_track_too_many_events(srv, session):
    events = [view("a01", session_id=session) for _ in range(501)]
    assert_status(srv.sessions.TrackEvents, pb.TrackEventsRequest(events=events), INVALID, "events")


def test_mixed_batch_stores_the_valid_events(srv, session):
    before = count_events(srv)
    events = [
        view("a03", session_id=session, event_id="mix-0"),
        pb.Event(session_id=session, type=pb.ITEM_VIEW, event_id="mix-1"),  # no item
        view("a04", session_id=session, event_id="mix-2"),
        pb.Event(session_id=session, type=0, item_id="a05", event_id="mix-3"),  # no type
        view("a06", session_id="no-such-session", event_id="mix-4"),  # unknown session
        view("a07", user_id="alice", event_id="mix-5"),  # joins alice's open session
    ]
    reply = srv.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert reply.accepted == 3
    assert reply.duplicates == 0
    assert [r.index for r in reply.rejected] == [1, 3, 4]
    assert [r.code for r in reply.rejected] == [
        INVALID.value[0],
        INVALID.value[0],
        NOT_FOUND.value[0],
    ]
    assert reply.rejected[0].reason.startswith("events[1].item_id")
    assert reply.rejected[1].reason.startswith("events[3].type")
    assert reply.rejected[2].reason.startswith("events[4].session_id")
    assert list(reply.event_ids) == ["mix-0", "", "mix-2", "", "", "mix-5"]

    assert count_events(srv) == before + 3
    with raw_connection(srv.db_path, readonly=True) as conn:
        stored = conn.execute(
            "SELECT event_id FROM events WHERE event_id LIKE 'mix-%' ORDER BY event_id"
        ).fetchall()
    assert [r[0] for r in stored] == ["mix-0", "mix-2", "mix-5"]
    got = srv.sessions.GetSession(pb.GetSessionRequest(session_id=session), timeout=10)
    assert got.event_count == 5  # 2 from the fixture + 3


# ------------------------------------------------------- session methods
def test_start_session_without_user(srv):
    assert_status(srv.sessions.StartSession, pb.StartSessionRequest(), INVALID, "user_id")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": "alice", "platform": 42}, "platform"),
        ({"user_id": "alice", "app_version": "v" * 300}, "app_version"),
        ({"user_id": "alice", "session_id": "s" * 300}, "session_id"),
        ({"user_id": "al\nice"}, "user_id"),
    ],
    ids=["unknown-platform", "app-version-too-long", "session-id-too-long", "control-char"],
)
def test_start_session_rejects(srv, request_fields, field):
    assert_status(
        srv.sessions.StartSession, pb.StartSessionRequest(**request_fields), INVALID, field
    )


def test_start_session_in_the_future(srv):
    assert_status(
        srv.sessions.StartSession,
        pb.StartSessionRequest(user_id="alice", started_at=ts(now_ms() + DAY_MS)),
        INVALID,
        "started_at",
    )


def test_start_session_id_of_another_user(srv, session):
    assert_status(
        srv.sessions.StartSession,
        pb.StartSessionRequest(user_id="mallory", session_id=session),
        INVALID,
        "session_id",
    )


def test_start_session_is_idempotent_on_session_id(srv):
    one = srv.sessions.StartSession(pb.StartSessionRequest(user_id="bob", session_id="s-bob"))
    two = srv.sessions.StartSession(pb.StartSessionRequest(user_id="bob", session_id="s-bob"))
    assert one == two
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM sessions WHERE session_id='s-bob'") == 1


@pytest.mark.parametrize("method", ["EndSession", "GetSession"])
def test_unknown_session(srv, method):
    request = (pb.EndSessionRequest if method == "EndSession" else pb.GetSessionRequest)(
        session_id="no-such-session"
    )
    assert_status(getattr(srv.sessions, method), request, NOT_FOUND, "session_id")


@pytest.mark.parametrize("method", ["EndSession", "GetSession"])
def test_empty_session_id(srv, method):
    request = (pb.EndSessionRequest if method == "EndSession" else pb.GetSessionRequest)()
    assert_status(getattr(srv.sessions, method), request, INVALID, "session_id")


# ---------------------------------------------------------- SimilarItems
def test_similar_items_bad_input(srv):
    assert_status(
        srv.recs.SimilarItems, pb.SimilarItemsRequest(item_id="nope", n=5), NOT_FOUND, "item_id"
    )
    assert_status(srv.recs.SimilarItems, pb.SimilarItemsRequest(n=5), INVALID, "item_id")
    assert_status(srv.recs.SimilarItems, pb.SimilarItemsRequest(item_id="a01", n=0), INVALID, "n")


def test_reload_unknown_version(srv):
    assert_status(
        srv.admin.ReloadModel,
        pb.ReloadModelRequest(version="no-such-version"),
        NOT_FOUND,
        "version",
    )
    info = srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.algorithm == "als"


# -------------------------------------------------------------- recovery
def test_server_survives_a_barrage_of_bad_requests(srv, session, synthetic_copy):
    stored_before = count_events(srv)
    bad_calls = [
        (srv.recs.Recommend, pb.RecommendRequest(user_id="", n=10)),
        (srv.recs.Recommend, pb.RecommendRequest(user_id="alice", n=0)),
        (srv.recs.Recommend, pb.RecommendRequest(user_id="alice", n=1001)),
        (srv.recs.Recommend, pb.RecommendRequest(user_id="alice", n=5, session_id="nope")),
        (srv.recs.Recommend, pb.RecommendRequest(user_id="bob", n=5, session_id=session)),
        (srv.sessions.TrackEvents, pb.TrackEventsRequest()),
        (srv.sessions.TrackEvents, pb.TrackEventsRequest(events=[view("a1", session_id="x")])),
        (srv.sessions.TrackEvents, pb.TrackEventsRequest(events=[pb.Event(type=99)])),
        (srv.sessions.TrackEvents, pb.TrackEventsRequest(events=[pb.Event(user_id="a")])),
        (srv.sessions.StartSession, pb.StartSessionRequest()),
        (srv.sessions.EndSession, pb.EndSessionRequest(session_id="nope")),
        (srv.sessions.GetSession, pb.GetSessionRequest(session_id="nope")),
        (srv.recs.SimilarItems, pb.SimilarItemsRequest(item_id="nope", n=3)),
    ]
    for _round in range(3):
        for call, request in bad_calls:
            err = None
            try:
                call(request, timeout=10)
            except grpc.RpcError as exc:
                err = exc
            assert err is not None
            assert err.code() in (INVALID, NOT_FOUND), (err.code(), err.details())
            assert err.details() and "internal" not in err.details().lower()

    # Still answering, with everything stored before still there.
    assert count_events(srv) == stored_before
    got = srv.sessions.GetSession(pb.GetSessionRequest(session_id=session), timeout=10)
    assert got.event_count == 2 and got.active
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id="alice", n=5), timeout=10)
    assert rec.strategy == "session"  # alice's two events are a live session
    assert rec.model_version == synthetic_copy.version
    more = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("a05", session_id=session)]), timeout=10
    )
    assert more.accepted == 1
    assert count_events(srv) == stored_before + 1


def test_start_session_with_an_unreadable_started_at(srv):
    assert_status(
        srv.sessions.StartSession,
        pb.StartSessionRequest(user_id="alice", started_at={"nanos": 2_000_000_000}),
        INVALID,
        "started_at",
    )


def test_a_huge_dwell_cannot_break_a_session_or_the_reaper(srv, session):
    """Two maximal dwell values would overflow SQLite's sum: they are refused,
    and the session still reads and ends."""
    err = assert_status(
        srv.sessions.TrackEvents,
        pb.TrackEventsRequest(
            events=[view(f"a0{k}", session_id=session, dwell_ms=2**63 - 1) for k in (3, 4)]
        ),
        INVALID,
        "events[0].dwell_ms",
    )
    assert "a year" in err.details()
    got = srv.sessions.GetSession(pb.GetSessionRequest(session_id=session), timeout=10)
    assert got.event_count == 2
    ended = srv.sessions.EndSession(pb.EndSessionRequest(session_id=session), timeout=10)
    assert ended.end_reason == pb.CLOSED


def test_reload_a_version_name_too_long_for_the_file_system(srv):
    """256 characters pass the id check but not the file system (found by the fuzz suite)."""
    for version in ("x" * 256, "é" * 128):
        err = rpc_error(srv.admin.ReloadModel, pb.ReloadModelRequest(version=version))
        assert err.code() == NOT_FOUND, err.details()
        assert err.details().startswith("version: no model version")


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(-62_135_596_801, 0), (253_402_300_800, 0), (0, -1), (0, 10**9)]
)
@pytest.mark.parametrize("name", ["valid_from", "valid_until"])
def test_upsert_offers_with_an_unreadable_validity_time(srv, seconds, nanos, name):
    """Found by the fuzz suite: such a Timestamp used to reach json_format (INTERNAL)."""
    from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

    offer = pb.Offer(offer_id="o1", title="t")
    getattr(offer, name).seconds = seconds
    getattr(offer, name).nanos = nanos
    stub = pb_grpc.OfferServiceStub(srv.channel)
    assert_status(
        stub.UpsertOffers, pb.UpsertOffersRequest(offers=[offer]), INVALID, f"offers[0].{name}"
    )
