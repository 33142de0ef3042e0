"""Issue 7 through gRPC: erasure (DeleteUser), personal data refused at the door,
quarantined events, per-user rate limits with a retry hint, load shedding,
message size, retention (``sessionrec purge``), and logs that never carry
payloads. Real servers on 127.0.0.1, real stores."""

from __future__ import annotations

import json
import logging
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from sessionrec.events import EndReason
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import TEST_STORE, raw_connection, table_names

from .support import health_status, now_ms, rpc_error, sql_scalar, view

EMAIL = "jane.roe.4711@example.org"
DAY_MS = 86_400_000


@pytest.fixture
def srv(synthetic_copy, start_server):
    return start_server(synthetic_copy.db_path, synthetic_copy.models_dir)


def start(srv, user: str) -> str:
    return srv.sessions.StartSession(pb.StartSessionRequest(user_id=user), timeout=10).session_id


def track(srv, events, **kwargs) -> pb.TrackEventsResponse:
    return srv.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10, **kwargs)


def rows_mentioning(db_path: Path, text: str) -> dict[str, int]:
    """Rows of every table with ``text`` in any text column (a full scan)."""
    found: dict[str, int] = {}
    position = "strpos" if TEST_STORE == "postgresql" else "instr"
    with raw_connection(db_path) as conn:
        for table in sorted(table_names(conn)):
            columns = [d[0] for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
            cond = " OR ".join(f"{position}(CAST({c} AS TEXT), ?) > 0" for c in columns)
            n = conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {cond}", [text] * len(columns)
            ).fetchone()[0]
            if n:
                found[table] = n
    return found


def file_bytes(db_path: Path) -> bytes:
    """The store file and its WAL, as bytes."""
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


# ------------------------------------------------------------------ erasure
def test_delete_user_erases_every_row_and_recommend_is_cold_start_at_once(srv):
    user = "erase-me-5512"
    sid = start(srv, user)
    items = ["a01", "a02", "a03", "a04"]
    reply = track(
        srv,
        [view(i, session_id=sid, event_id=f"{user}-{k}") for k, i in enumerate(items)]
        + [pb.Event(session_id=sid, event_id=f"{user}-bad", type=pb.SCREEN_VIEW)],
    )
    assert (reply.accepted, reply.quarantined) == (4, 1)
    srv.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    second = start(srv, user)  # an open session too
    track(srv, [view("a05", session_id=second, event_id=f"{user}-5")])
    warm = srv.recs.Recommend(pb.RecommendRequest(user_id=user, n=5), timeout=10)
    assert warm.strategy != "popular"
    other = srv.recs.Recommend(pb.RecommendRequest(user_id="bob", n=5), timeout=10)
    before = rows_mentioning(srv.db_path, user)
    assert {"events", "sessions", "quarantine"} <= before.keys()

    erased = srv.admin.DeleteUser(pb.DeleteUserRequest(user_id=user), timeout=10)
    assert erased.deleted["events"] == 5
    assert erased.deleted["sessions"] == 2
    assert erased.deleted["quarantine"] == 1
    assert rows_mentioning(srv.db_path, user) == {}
    assert rows_mentioning(srv.db_path, sid) == {}
    cold = srv.recs.Recommend(pb.RecommendRequest(user_id=user, n=5), timeout=10)
    assert cold.strategy == "popular"
    # Everybody else is untouched; erasing again is not an error.
    assert srv.recs.Recommend(pb.RecommendRequest(user_id="bob", n=5), timeout=10) == other
    again = srv.admin.DeleteUser(pb.DeleteUserRequest(user_id=user), timeout=10)
    assert sum(again.deleted.values()) == 0
    assert rpc_error(srv.admin.DeleteUser, pb.DeleteUserRequest()).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


# ---------------------------------------------------- personal data, quarantine
@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("contact", EMAIL, "e-mail address"),
        ("card", "4111 1111 1111 1111", "card number"),
        ("phone", "+49 30 1234 5678", "phone number"),
    ],
)
def test_personal_data_is_refused_and_never_stored(srv, key, value, kind):
    sid = start(srv, "carol")
    reply = track(
        srv,
        [
            view("a01", session_id=sid, event_id="pii-ok"),
            view("a02", session_id=sid, event_id="pii-bad", properties={key: value}),
        ],
    )
    assert reply.accepted == 1 and reply.quarantined == 1
    (rejection,) = reply.rejected
    assert rejection.index == 1
    assert rejection.reason.startswith(f"events[1].properties[{key}]: looks like a {kind}")
    if TEST_STORE == "sqlite":  # not even in the file's free pages or its WAL
        assert value.encode() not in file_bytes(srv.db_path)
    assert rows_mentioning(srv.db_path, value) == {}
    kept = json.loads(sql_scalar(srv.db_path, "SELECT event FROM quarantine"))
    assert kept["event_id"] == "pii-bad"
    assert kept["properties"] == {"(removed)": f"(removed: looks like a {kind})"}


def test_quarantine_keeps_bad_events_once_and_the_cli_lists_them(srv, cli):
    sid = start(srv, "dave")
    batch = [
        view("a01", session_id=sid, event_id="q-ok"),
        pb.Event(session_id=sid, event_id="q-no-screen", type=pb.SCREEN_VIEW),
        view("a02", session_id=sid, event_id="q-dwell", dwell_ms=-5),
    ]
    first = track(srv, batch)
    assert (first.accepted, first.duplicates, first.quarantined) == (1, 0, 2)
    retry = track(srv, batch)  # a retrying client: nothing stored twice
    assert (retry.accepted, retry.duplicates, retry.quarantined) == (0, 1, 2)
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM quarantine") == 2
    # A batch with no valid event fails, and its events are still kept apart.
    err = rpc_error(
        srv.sessions.TrackEvents,
        pb.TrackEventsRequest(events=[pb.Event(session_id=sid, event_id="q-all-bad", type=99)]),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("events[0].type")
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM quarantine") == 3
    listed = cli("quarantine", "--db", srv.db_url, "--limit", "10")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["event"]["event_id"] for r in rows} == {"q-no-screen", "q-dwell", "q-all-bad"}
    by_id = {r["event"]["event_id"]: r for r in rows}
    assert by_id["q-dwell"]["reason"].startswith("events[2].dwell_ms")
    assert by_id["q-dwell"]["error"] == "InvalidArgument"


# ------------------------------------------------------------------ limits
def test_per_user_event_rate_limit_refuses_with_a_retry_hint(synthetic_copy, start_server):
    srv = start_server(
        synthetic_copy.db_path,
        synthetic_copy.models_dir,
        rate_limit_user_events_per_s=2.0,
        max_events_per_call=10,
    )
    busy, calm = start(srv, "busy"), start(srv, "calm")
    ok = track(srv, [view("a01", session_id=busy, event_id=f"r{k}") for k in range(10)])
    assert ok.accepted == 10
    # The same user again at once: refused with a hint; another user goes on.
    mixed = track(
        srv,
        [view("a02", session_id=busy, event_id="r-over"), view("a03", session_id=calm)],
    )
    assert mixed.accepted == 1 and mixed.quarantined == 0
    (refused,) = mixed.rejected
    assert refused.index == 0 and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "retry in" in refused.reason
    call = srv.sessions.TrackEvents.with_call
    with pytest.raises(grpc.RpcError) as caught:
        call(pb.TrackEventsRequest(events=[view("a04", session_id=busy)]), timeout=10)
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("events[0].events: over the limit of 2 events per second")
    hint = dict(err.trailing_metadata())["retry-after-ms"]
    assert 0 < int(hint) <= 1000
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events WHERE event_id = 'r-over'") == 0
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM quarantine") == 0


def test_per_user_call_rate_limit_on_recommend_and_offers(synthetic_copy, start_server):
    srv = start_server(
        synthetic_copy.db_path, synthetic_copy.models_dir, rate_limit_user_calls_per_s=0.5
    )
    offers = pb_grpc.OfferServiceStub(srv.channel)
    srv.recs.Recommend(pb.RecommendRequest(user_id="eve", n=3), timeout=10)  # burst of 1
    err = rpc_error(srv.recs.Recommend, pb.RecommendRequest(user_id="eve", n=3))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("user_id: over the limit of 0.5 calls per second")
    assert int(dict(err.trailing_metadata())["retry-after-ms"]) > 0
    # GetOffers shares the budget; another user is not affected.
    err = rpc_error(offers.GetOffers, pb.GetOffersRequest(user_id="eve", n=1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    srv.recs.Recommend(pb.RecommendRequest(user_id="frank", n=3), timeout=10)


def test_overload_is_shed_not_queued_and_loses_nothing(tmp_path, start_server):
    srv = start_server(tmp_path / "shed.db", tmp_path / "models", max_concurrent_rpcs=1)
    sid = start(srv, "grace")
    batches = [
        [view("a01", session_id=sid, event_id=f"b{b}-{k}") for k in range(500)] for b in range(12)
    ]
    with futures.ThreadPoolExecutor(12) as pool:
        calls = [
            pool.submit(srv.sessions.TrackEvents.future, pb.TrackEventsRequest(events=b), 30)
            for b in batches
        ]
        outcomes = []
        for call in calls:
            try:
                outcomes.append(call.result().result().accepted)
            except grpc.RpcError as exc:
                outcomes.append(exc.code())
    shed = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
    done = [o for o in outcomes if isinstance(o, int)]
    assert len(shed) + len(done) == len(batches), outcomes
    assert shed and done, outcomes
    assert all(n == 500 for n in done)
    # Acknowledged batches are stored whole, refused ones not at all.
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events") == 500 * len(done)
    assert health_status(srv.channel) == 1  # SERVING


def test_a_message_over_the_size_limit_is_refused(tmp_path, start_server):
    srv = start_server(tmp_path / "big.db", tmp_path / "models", max_message_bytes=32 * 1024)
    sid = start(srv, "heidi")
    big = [view("a01", session_id=sid, properties={"note": "x" * 1000}) for _ in range(40)]
    err = rpc_error(srv.sessions.TrackEvents, pb.TrackEventsRequest(events=big))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert track(srv, big[:5]).accepted == 5


# --------------------------------------------------------------- retention
def test_purge_removes_old_ended_sessions_only(tmp_path, start_server, cli):
    srv = start_server(tmp_path / "old.db", tmp_path / "models", max_clock_skew_s=600)
    now = now_ms()
    old = srv.sessions.StartSession(
        pb.StartSessionRequest(user_id="ivan", started_at=_ts(now - 400 * DAY_MS)), timeout=10
    ).session_id
    track(srv, [view("a01", session_id=old, timestamp_ms=now - 400 * DAY_MS + 1000)])
    srv.sessions.EndSession(pb.EndSessionRequest(session_id=old), timeout=10)
    # Ended now (EndSession time), so it is young by its end: kept.
    kept_by_end = old
    ancient = srv.sessions.StartSession(
        pb.StartSessionRequest(user_id="judy", started_at=_ts(now - 500 * DAY_MS)), timeout=10
    ).session_id
    track(srv, [view("a02", session_id=ancient, timestamp_ms=now - 500 * DAY_MS + 1000)])
    # Timed out 500 days ago (as an imported session would be).
    srv.server.store.end_session(
        ancient, now - 500 * DAY_MS + 2000, EndReason.TIMEOUT, derive_last_dwell=False
    )
    fresh = start(srv, "ken")
    track(srv, [view("a03", session_id=fresh)])
    result = cli("purge", "--db", srv.db_url, "--older-than", "365d")
    assert result.returncode == 0, result.stderr
    deleted = json.loads(result.stdout)["deleted"]
    assert deleted["sessions"] == 1 and deleted["events"] == 1
    with raw_connection(srv.db_path) as conn:
        left = {r[0] for r in conn.execute("SELECT session_id FROM sessions").fetchall()}
    assert left == {kept_by_end, fresh}
    bad = cli("purge", "--db", srv.db_url, "--older-than", "soon")
    assert bad.returncode != 0 and "--older-than" in bad.stderr


def _ts(ms: int):
    from .support import ts

    return ts(ms)


# --------------------------------------------------------------------- logs
def test_logs_never_carry_event_payloads_or_user_ids(srv, caplog):
    caplog.set_level(logging.DEBUG)
    marker = "payload-marker-90210"
    sid = start(srv, "log-user-31337")
    track(
        srv,
        [
            view("a01", session_id=sid, properties={"note": marker}),
            pb.Event(session_id=sid, type=pb.SCREEN_VIEW, properties={"note": marker}),
            view("a02", session_id=sid, properties={"mail": EMAIL}),
        ],
    )
    srv.admin.DeleteUser(pb.DeleteUserRequest(user_id="log-user-31337"), timeout=10)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "expected the server to log something (the erasure at least)"
    for secret in (marker, EMAIL, "log-user-31337"):
        assert secret not in text
