"""Push-notification candidates (``service.push``) on real stores:
the lapse and rhythm rules, the active hour and send time, quiet hours, the
per-user cap in ``push_log`` (and its window, moved with ``now_ms``), the item
and offer from the real engines on the trained synthetic store, the
``sessionrec push-candidates`` CLI, and argument checks; local time from the
sessions' UTC offsets, offers judged at the send time, the caller's deadline,
and a JSONL file written before anything is recorded."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from service.catalog import Catalog
from service.offers import OfferEngine
from service.push import PushCandidate, next_hour_start, plan_push, push_candidates
from service.recommender import ModelHolder, RecommendationEngine
from sessionrec.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from sessionrec.events import EndReason, EventRecord, EventType, SessionRecord
from sessionrec.store import Store, open_store
from tests.conftest import CLUSTER_A, raw_connection, store_url, table_names

HOUR = 3600 * 1000
DAY = 24 * HOUR
#: A fixed "now": 2025-03-10 12:30 UTC.
NOW = int(dt.datetime(2025, 3, 10, 12, 30, tzinfo=dt.UTC).timestamp() * 1000)
MIDNIGHT = NOW - NOW % DAY


def at(days_ago: float, hour: int, minute: int = 0, *, now: int = NOW) -> int:
    """The time ``hour:minute`` UTC on the day ``days_ago`` days before ``now``."""
    day = now - now % DAY - int(days_ago) * DAY
    return day + hour * HOUR + minute * 60_000


def add_sessions(
    store: Store,
    user: str,
    starts: Sequence[int],
    *,
    item: str = "i1",
    open_last: bool = False,
    received_ms: int | None = None,
    offsets: Sequence[int | None] | None = None,
) -> None:
    """One closed session (a 5-minute item view) per start; the last one left
    open when ``open_last``; ``offsets[k]``: the UTC offset of session k."""
    for k, start in enumerate(starts):
        sid = f"{user}-s{start}"
        is_open = open_last and k == len(starts) - 1
        session = SessionRecord(
            sid,
            user,
            started_at_ms=start,
            last_event_at_ms=start + 300_000,
            ended_at_ms=None if is_open else start + 300_000,
            end_reason=EndReason.OPEN if is_open else EndReason.CLOSED,
            utc_offset_min=None if offsets is None else offsets[k],
        )
        event = EventRecord(f"{sid}-e", sid, user, int(EventType.ITEM_VIEW), start, item_id=item)
        result = store.append_events([event], [session], received_ms=received_ms or start)
        assert result.accepted == 1


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(store_url(tmp_path / "push.db")) as s:
        yield s


@pytest.fixture
def recommender(store: Store, tmp_path: Path) -> RecommendationEngine:
    """No model: items come from the store's popularity."""
    return RecommendationEngine(store, ModelHolder(str(tmp_path / "no-models")))


def run(store: Store, recommender: RecommendationEngine, **kw: Any) -> dict[str, PushCandidate]:
    """One run at NOW, a dry run unless ``record=True``, by user."""
    kw.setdefault("now_ms", NOW)
    kw.setdefault("record", False)
    return {c.user_id: c for c in push_candidates(store, recommender, **kw)}


def push_log(path: Path) -> list[tuple[str, int]]:
    with raw_connection(path) as conn:
        if "push_log" not in table_names(conn):
            return []
        rows = conn.execute("SELECT user_id, planned_ms FROM push_log ORDER BY planned_ms, user_id")
        return [tuple(row) for row in rows.fetchall()]


# ------------------------------------------------------------------- rules
def test_a_lapsed_user_appears_at_their_active_hour_and_regular_users_do_not(store, recommender):
    # Every two days, mostly at 19:xx (three of five), the last one 12 days ago.
    add_sessions(
        store,
        "lapsed",
        [at(20, 19, 5), at(18, 10), at(16, 19, 40), at(14, 10, 30), at(12, 19, 59)],
    )
    # Daily until yesterday: not lapsing.
    add_sessions(store, "regular", [at(d, 9) for d in range(10, 0, -1)])
    # One session, long ago: below min_sessions.
    add_sessions(store, "once", [at(30, 15)])
    # An hour ago and earlier: the active hour (11) has passed today -> tomorrow.
    add_sessions(store, "morning", [at(30, 11), at(20, 11, 45), at(10, 11, 10)])
    # Sessions after "now" do not exist yet for the run.
    add_sessions(store, "future", [at(30, 14), at(20, 14), NOW + HOUR])

    got = run(store, recommender)

    assert set(got) == {"lapsed", "morning", "future"}
    lapsed = got["lapsed"]
    assert lapsed.active_hour == 19
    assert lapsed.send_at_ms == MIDNIGHT + 19 * HOUR  # today, 19:00 UTC: after 12:30
    assert lapsed.send_at_ms > NOW
    assert lapsed.days_since_last_session == pytest.approx((NOW - at(12, 19, 59)) / DAY, abs=1e-3)
    assert lapsed.reason == "no session for 11 days (usually every 2.0 days)"
    assert lapsed.offer_id == ""  # no offers engine
    assert got["morning"].active_hour == 11
    assert got["morning"].send_at_ms == MIDNIGHT + DAY + 11 * HOUR
    assert got["future"].days_since_last_session == pytest.approx(
        (NOW - at(20, 14)) / DAY, abs=1e-3
    )
    # Most lapsed first, then by user id; at most limit.
    order = [c.user_id for c in push_candidates(store, recommender, now_ms=NOW, record=False)]
    assert order == ["future", "lapsed", "morning"]
    first = push_candidates(store, recommender, now_ms=NOW, limit=1, record=False)
    assert [c.user_id for c in first] == ["future"]


def test_ties_between_hours_go_to_the_earliest(store, recommender):
    add_sessions(store, "tie", [at(30, 20), at(25, 9), at(20, 20), at(15, 9)])
    assert run(store, recommender)["tie"].active_hour == 9


def test_a_user_with_an_active_open_session_is_never_a_candidate(store, recommender):
    # Lapsing by a tiny lapse_days, but the open session heard from them 2 minutes ago.
    add_sessions(
        store,
        "busy",
        [at(3, 9), NOW - 30 * 60_000],
        open_last=True,
        received_ms=NOW - 2 * 60_000,
    )
    assert "busy" not in run(store, recommender, lapse_days=0.01, quiet_hours=None)
    # 40 minutes later the open session is past the 30-minute timeout: not active.
    later = run(store, recommender, lapse_days=0.01, quiet_hours=None, now_ms=NOW + 40 * 60_000)
    assert "busy" in later


def test_the_rhythm_rule_catches_a_daily_user_silent_for_four_days(store, recommender):
    add_sessions(store, "daily", [at(d, 9) for d in range(18, 3, -1)])  # last: 4 days ago
    add_sessions(store, "weekly", [at(d, 9) for d in (32, 25, 18, 11, 4)])  # last: 4 days ago
    add_sessions(store, "daily-2", [at(d, 9) for d in range(16, 1, -1)])  # last: 2 days ago
    got = run(store, recommender, lapse_days=7.0)
    assert set(got) == {"daily"}
    assert got["daily"].reason == "no session for 4 days (usually every 1.0 days)"
    assert got["daily"].active_hour == 9
    assert got["daily"].send_at_ms == MIDNIGHT + DAY + 9 * HOUR
    # A looser rhythm factor leaves the daily user alone until lapse_days.
    assert run(store, recommender, lapse_days=7.0, rhythm_factor=5.0) == {}


def test_users_whose_active_hour_is_in_quiet_hours_are_left_out(store, recommender):
    for hour in (21, 22, 23, 3, 7, 8):
        add_sessions(store, f"h{hour:02d}", [at(20, hour), at(15, hour), at(10, hour)])
    # [22, 8) wraps midnight: 22 is in, 8 is out.
    assert set(run(store, recommender)) == {"h21", "h08"}
    assert set(run(store, recommender, quiet_hours=(1, 5))) == {"h21", "h22", "h23", "h07", "h08"}
    everyone = run(store, recommender, quiet_hours=None)
    assert len(everyone) == 6
    assert everyone["h03"].send_at_ms == MIDNIGHT + DAY + 3 * HOUR
    assert set(run(store, recommender, quiet_hours=(5, 5))) == set(everyone)  # empty window


# --------------------------------------------------------------------- cap
def test_the_cap_keeps_a_user_out_until_the_window_has_passed(store, recommender, tmp_path):
    db = tmp_path / "push.db"
    add_sessions(store, "gone", [at(20, 19), at(18, 19), at(16, 19)])
    add_sessions(store, "other", [at(30, 18), at(28, 18)])

    # A dry run records nothing (the table is not even created).
    assert set(run(store, recommender)) == {"gone", "other"}
    assert push_log(db) == []

    first = run(store, recommender, record=True)
    assert set(first) == {"gone", "other"}
    send = first["gone"].send_at_ms
    assert sorted(push_log(db)) == sorted([("gone", send), ("other", first["other"].send_at_ms)])

    # The same run again (or a dry run, or three days later): both are at the cap.
    assert run(store, recommender, record=True) == {}
    assert run(store, recommender) == {}
    assert run(store, recommender, now_ms=NOW + 3 * DAY, record=True) == {}
    assert len(push_log(db)) == 2
    # Until the planned push lies a whole window back.
    assert "gone" not in run(store, recommender, now_ms=send + 7 * DAY - 1)
    again = run(store, recommender, now_ms=send + 7 * DAY, record=True)
    assert set(again) == {"gone", "other"}
    assert again["gone"].send_at_ms == send + 8 * DAY  # strictly after now: the next 19:00
    assert len(push_log(db)) == 4
    # A shorter window lets them in sooner; a higher cap lets another push in.
    later = send + 10 * DAY
    assert run(store, recommender, now_ms=later) == {}
    assert "gone" in run(store, recommender, now_ms=later, cap_window_days=1.5)
    assert "gone" in run(store, recommender, now_ms=later, max_per_user=2)


# ------------------------------------------------------- item and offer
def engines(trained, holdout_share: float = 0.0):
    """A store, recommender and offers engine on the trained synthetic copy,
    with one whole-catalog offer and an older session for u05 and u03."""
    store = open_store(trained.db_url)
    models = ModelHolder(str(trained.models_dir))
    models.load_initial()
    assert models.current is not None
    catalog = Catalog(store)
    catalog.refresh()
    offers = OfferEngine(store, models, catalog, holdout_share=holdout_share, seed=1)
    offers.upsert(
        [
            {
                "offer_id": "welcome-back",
                "title": "10% off",
                "kind": "PERCENT_OFF",
                "value": 10,
                "target": {"whole_catalog": True},
            }
        ]
    )
    started = {}
    for user in ("u05", "u03"):
        # The imported session (five days ago) plus one at the same hour five days earlier.
        (started[user],) = query(
            trained.db_path, "SELECT started_at_ms FROM sessions WHERE user_id = ?", user
        )[0]
        add_sessions(store, user, [started[user] - 5 * DAY], item="a01")
    recommender = RecommendationEngine(store, models, catalog=catalog)
    return store, recommender, offers, started


def query(path: Path, sql: str, *args: Any) -> list[tuple]:
    with raw_connection(path) as conn:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]


def test_item_and_offer_come_from_the_engines(synthetic_copy):
    store, recommender, offers, _ = engines(synthetic_copy, holdout_share=0.1)
    try:
        # Without an offers engine there is no offer (a dry run).
        plain = push_candidates(store, recommender, lapse_days=3, quiet_hours=None, record=False)
        assert [c.user_id for c in plain] == ["u03", "u05"]
        assert all(c.offer_id == "" and c.item_id for c in plain)
        log_rows = query(synthetic_copy.db_path, "SELECT COUNT(*) FROM offer_log")
        got = {
            c.user_id: c
            for c in push_candidates(store, recommender, offers, lapse_days=3, quiet_hours=None)
        }
        # Only u05 and u03 have two sessions.
        assert set(got) == {"u05", "u03"}
        u05 = got["u05"]
        seen = store.user_items("u05")
        assert u05.item_id in CLUSTER_A and u05.item_id not in seen
        assert u05.item_reason
        assert u05.offer_id == "welcome-back"
        assert u05.days_since_last_session == pytest.approx(5.0, abs=0.1)
        assert u05.reason == "no session for 4 days (usually every 5.0 days)" or (
            u05.reason == "no session for 5 days (usually every 5.0 days)"
        )
        # u03 is in the 10% offers holdout: no offer, and no counterfactual
        # exposure logged for a push that is only planned.
        assert got["u03"].item_id in CLUSTER_A
        assert got["u03"].offer_id == ""
        assert query(synthetic_copy.db_path, "SELECT COUNT(*) FROM offer_log") == log_rows
    finally:
        store.close()


# --------------------------------------------------------------------- CLI
def test_cli_writes_valid_jsonl_and_records_unless_dry_run(synthetic_copy, cli, tmp_path):
    store, _, _, started = engines(synthetic_copy)
    store.close()
    out = tmp_path / "push.jsonl"
    base = [
        "push-candidates",
        "--db",
        synthetic_copy.db_url,
        "--models",
        str(synthetic_copy.models_dir),
        "--out",
        str(out),
        "--lapse-days",
        "3",
        "--quiet-hours",
        "none",
    ]
    dry = cli(*base, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.json()["candidates"] == 2 and dry.json()["recorded"] == 0
    assert push_log(synthetic_copy.db_path) == []

    result = cli(*base)
    assert result.returncode == 0, result.stderr
    summary = result.json()
    assert summary["candidates"] == 2 and summary["recorded"] == 2 and not summary["dry_run"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in rows] == ["u03", "u05"]  # u03's sessions are older
    expected = {f.name for f in fields(PushCandidate)} | {"send_at"}
    for row in rows:
        assert set(row) == expected
        sent = dt.datetime.fromisoformat(row["send_at"].replace("Z", "+00:00"))
        assert int(sent.timestamp() * 1000) == row["send_at_ms"]
        assert sent.minute == 0 and sent.hour == row["active_hour"]
        assert row["item_id"] in CLUSTER_A
    by_user = {r["user_id"]: r for r in rows}
    assert by_user["u05"]["active_hour"] == (started["u05"] // HOUR) % 24
    assert by_user["u05"]["offer_id"] == "welcome-back"  # u05 is outside the 10% holdout
    assert by_user["u03"]["offer_id"] == ""  # u03 is inside it
    assert sorted(u for u, _ in push_log(synthetic_copy.db_path)) == ["u03", "u05"]

    capped = cli(*base)
    assert capped.returncode == 0, capped.stderr
    assert capped.json()["candidates"] == 0 and capped.json()["skipped"]["cap"] == 2
    assert out.read_text() == ""


def test_cli_bad_arguments_fail_clearly(synthetic_copy, cli, tmp_path):
    out = tmp_path / "bad.jsonl"
    base = ["push-candidates", "--db", synthetic_copy.db_url, "--out", str(out)]
    bad = cli(*base, "--lapse-days", "0")
    assert bad.returncode == 2
    assert "push-candidates: error: lapse_days: must be > 0" in bad.stderr
    assert not out.exists()
    bad = cli(*base, "--quiet-hours", "late")
    assert bad.returncode == 2 and "--quiet-hours: expected START-END" in bad.stderr


# -------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lapse_days": 0}, "lapse_days: must be > 0"),
        ({"lapse_days": float("nan")}, "lapse_days: must be a finite number"),
        ({"rhythm_factor": -1.0}, "rhythm_factor: must be > 0"),
        ({"min_sessions": 0}, "min_sessions: must be >= 1"),
        ({"min_sessions": 2.5}, "min_sessions: must be an integer"),
        ({"max_per_user": 0}, "max_per_user: must be >= 1"),
        ({"cap_window_days": 0}, "cap_window_days: must be > 0"),
        ({"limit": 0}, "limit: must be >= 1"),
        ({"quiet_hours": (22, 24)}, "quiet_hours: hours must be integers 0..23"),
        ({"quiet_hours": (22,)}, "quiet_hours: must be (start, end) hours"),
        ({"quiet_hours": "22-8"}, "quiet_hours: must be (start, end) hours"),
        ({"now_ms": -5}, "now_ms: must be epoch milliseconds >= 0"),
        ({"record": "yes"}, "record: must be True or False"),
    ],
)
def test_bad_arguments_name_the_parameter(store, recommender, kwargs, message):
    with pytest.raises(InvalidArgument, match="^" + re.escape(message)):
        push_candidates(store, recommender, **kwargs)


@pytest.mark.sqlite_only  # an in-memory SQLite store (no file another process could read)
def test_an_in_memory_store_is_refused(tmp_path):
    with open_store("sqlite:///:memory:") as mem:
        engine = RecommendationEngine(mem, ModelHolder(str(tmp_path / "m")))
        with pytest.raises(FailedPrecondition, match=r"^store: "):
            push_candidates(mem, engine)


def test_get_push_candidates_through_grpc(tmp_path: Path, start_server) -> None:
    """AnalyticsService.GetPushCandidates on a real server: the lapsed user comes
    back with their active hour, a regular one does not; a dry run records
    nothing, a real run caps the user for the next run."""
    from sessionrec.store import open_store
    from sessionrec.v1 import sessionrec_pb2 as pb
    from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

    now = int(time.time() * 1000)
    db = tmp_path / "push.db"
    with open_store(store_url(db)) as s:
        add_sessions(s, "gone", [at(d, 17, now=now) for d in (30, 25, 20, 15)])
        add_sessions(s, "daily", [at(d, 17, now=now) for d in range(9, 0, -1)])
    srv = start_server(db, tmp_path / "models", push_quiet_start_hour=1, push_quiet_end_hour=5)
    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    dry = stub.GetPushCandidates(pb.GetPushCandidatesRequest(dry_run=True), timeout=30)
    assert [c.user_id for c in dry.candidates] == ["gone"]
    gone = dry.candidates[0]
    assert gone.active_hour == 17
    assert gone.send_at.ToMilliseconds() > now
    assert gone.send_at.ToMilliseconds() % DAY == 17 * HOUR
    assert "no session for" in gone.reason
    again = stub.GetPushCandidates(pb.GetPushCandidatesRequest(), timeout=30)
    assert [c.user_id for c in again.candidates] == ["gone"]  # the dry run recorded nothing
    capped = stub.GetPushCandidates(pb.GetPushCandidatesRequest(), timeout=30)
    assert list(capped.candidates) == []  # one push per user per 7 days


# -------------------------------------------------------------- local time
def test_the_active_hour_and_send_time_follow_the_users_utc_offset(store, recommender):
    # UTC+2, every session at 19:00 UTC: 21:00 local, pushed at 19:00 UTC today.
    add_sessions(store, "east", [at(d, 19) for d in (20, 15, 10)], offsets=[120] * 3)
    # Only the latest session reported +120: the older ones are read with it too.
    add_sessions(store, "upgraded", [at(d, 19) for d in (20, 15, 10)], offsets=[None, None, 120])
    # Summer time ended between sessions: 19:00 UTC at +120 and 20:00 UTC at +60
    # are all 21:00 local; the push goes out at 21:00 of the latest offset.
    add_sessions(store, "dst", [at(20, 19), at(15, 19), at(10, 20)], offsets=[120, 120, 60])
    # UTC+5:30 at 15:30 UTC: 21:00 local.
    add_sessions(store, "india", [at(d, 15, 30) for d in (20, 15, 10)], offsets=[330] * 3)
    # Never reported an offset: UTC.
    add_sessions(store, "unknown", [at(d, 19) for d in (20, 15, 10)])

    got = run(store, recommender)

    assert set(got) == {"east", "upgraded", "dst", "india", "unknown"}
    for user in ("east", "upgraded"):
        assert got[user].active_hour == 21
        assert got[user].utc_offset_minutes == 120
        assert got[user].send_at_ms == MIDNIGHT + 19 * HOUR  # 21:00 at UTC+2, after 12:30 UTC
    assert (got["dst"].active_hour, got["dst"].utc_offset_minutes) == (21, 60)
    assert got["dst"].send_at_ms == MIDNIGHT + 20 * HOUR
    assert (got["india"].active_hour, got["india"].utc_offset_minutes) == (21, 330)
    assert got["india"].send_at_ms == MIDNIGHT + 15 * HOUR + 30 * 60_000
    assert (got["unknown"].active_hour, got["unknown"].utc_offset_minutes) == (19, None)
    assert got["unknown"].send_at_ms == MIDNIGHT + 19 * HOUR


def test_next_hour_start_in_local_time():
    # 12:30 UTC is 14:30 at UTC+2: 14:00 local has passed (tomorrow, 12:00 UTC),
    # 15:00 local is 13:00 UTC today.
    assert next_hour_start(NOW, 14, 120) == MIDNIGHT + DAY + 12 * HOUR
    assert next_hour_start(NOW, 15, 120) == MIDNIGHT + 13 * HOUR
    # 12:30 UTC is 02:30 the next day at UTC+14; 01:00 there is 11:00 UTC tomorrow.
    assert next_hour_start(NOW, 1, 840) == MIDNIGHT + DAY + 11 * HOUR
    # 12:30 UTC is 00:30 at UTC-12: 23:00 there is 11:00 UTC tomorrow.
    assert next_hour_start(NOW, 23, -720) == MIDNIGHT + DAY + 11 * HOUR
    for offset in (-720, -300, 0, 330, 840):
        for hour in range(24):
            send = next_hour_start(NOW, hour, offset)
            assert NOW < send <= NOW + DAY
            assert ((send + offset * 60_000) // HOUR) % 24 == hour
            assert (send + offset * 60_000) % HOUR == 0


def test_quiet_hours_are_local(store, recommender):
    # 20:00 UTC is outside 22-8 in UTC, but 23:00 at UTC+3: left out.
    add_sessions(store, "owl", [at(d, 20) for d in (20, 15, 10)], offsets=[180] * 3)
    # 02:00 UTC is inside 22-8 in UTC, but 21:00 at UTC-5: a candidate, pushed
    # at 02:00 UTC (tomorrow: today's has passed).
    add_sessions(store, "west", [at(d, 2) for d in (20, 15, 10)], offsets=[-300] * 3)
    # The same sessions without offsets: the other way round.
    add_sessions(store, "owl-utc", [at(d, 20) for d in (20, 15, 10)])
    add_sessions(store, "west-utc", [at(d, 2) for d in (20, 15, 10)])

    plan = plan_push(store, recommender, now_ms=NOW, record=False)

    got = {c.user_id: c for c in plan.candidates}
    assert set(got) == {"west", "owl-utc"}
    assert plan.skipped_quiet_hours == 2  # owl and west-utc
    assert (got["west"].active_hour, got["west"].utc_offset_minutes) == (21, -300)
    assert got["west"].send_at_ms == MIDNIGHT + DAY + 2 * HOUR
    assert got["owl-utc"].active_hour == 20
    # Without quiet hours the owl is a candidate at 23:00 local = 20:00 UTC.
    owl = run(store, recommender, quiet_hours=None)["owl"]
    assert (owl.active_hour, owl.send_at_ms) == (23, MIDNIGHT + 20 * HOUR)


def test_start_session_keeps_the_utc_offset_and_push_uses_it(tmp_path: Path, start_server):
    """Through gRPC: StartSession stores utc_offset_minutes (GetSession returns
    it; unset stays unset), refuses an out-of-range one naming the field, and
    GetPushCandidates reports the local active hour and the offset."""
    import grpc

    from sessionrec.v1 import sessionrec_pb2 as pb
    from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

    srv = start_server()
    now = int(time.time() * 1000)
    for bad in (841, -841, 100_000):
        with pytest.raises(grpc.RpcError) as err:
            srv.sessions.StartSession(
                pb.StartSessionRequest(user_id="tz", utc_offset_minutes=bad), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("utc_offset_minutes: must be between -840 and 840")
    assert sql_count(srv.db_path, "SELECT COUNT(*) FROM sessions") == 0

    for d in (30, 25, 20, 15):
        request = pb.StartSessionRequest(user_id="tz", utc_offset_minutes=120)
        request.started_at.FromMilliseconds(at(d, 17, now=now))
        sid = srv.sessions.StartSession(request, timeout=10).session_id
        ended = srv.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
        assert ended.HasField("utc_offset_minutes") and ended.utc_offset_minutes == 120
    for edge in (840, -840, 0):
        sid = srv.sessions.StartSession(
            pb.StartSessionRequest(user_id=f"edge{edge}", utc_offset_minutes=edge), timeout=10
        ).session_id
        got = srv.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
        assert got.HasField("utc_offset_minutes") and got.utc_offset_minutes == edge
    plain = srv.sessions.StartSession(pb.StartSessionRequest(user_id="plain"), timeout=10)
    got = srv.sessions.GetSession(pb.GetSessionRequest(session_id=plain.session_id), timeout=10)
    assert not got.HasField("utc_offset_minutes")
    assert sql_count(srv.db_path, "SELECT COUNT(*) FROM sessions WHERE utc_offset_min IS NULL") == 1

    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    reply = stub.GetPushCandidates(pb.GetPushCandidatesRequest(dry_run=True), timeout=30)
    assert [c.user_id for c in reply.candidates] == ["tz"]
    tz = reply.candidates[0]
    assert tz.active_hour == 19  # 17:00 UTC at UTC+2
    assert tz.HasField("utc_offset_minutes") and tz.utc_offset_minutes == 120
    assert tz.send_at.ToMilliseconds() % DAY == 17 * HOUR
    assert tz.send_at.ToMilliseconds() > now


def sql_count(path: Path, sql: str) -> int:
    return int(query(path, sql)[0][0])


# -------------------------------------------------- offer at the send time
def test_the_offer_must_be_valid_when_the_push_is_sent(store, recommender, tmp_path):
    from sessionrec.offers import iso

    now = int(time.time() * 1000)
    # Active six hours from now (UTC), so the push goes out in 5-6 hours.
    hour = (now // HOUR + 6) % 24
    add_sessions(store, "back", [at(d, hour, now=now) for d in (20, 15, 10)])
    models = ModelHolder(str(tmp_path / "no-models"))
    offers = OfferEngine(store, models, Catalog(store), holdout_share=0.0, seed=1)

    def whole(offer_id: str, priority: int, **valid: int) -> dict[str, Any]:
        offer: dict[str, Any] = {
            "offer_id": offer_id,
            "kind": "PERCENT_OFF",
            "value": 10,
            "priority": priority,
            "target": {"whole_catalog": True},
        }
        offer.update({name: iso(ms) for name, ms in valid.items()})
        return offer

    offers.upsert(
        [
            whole("ends-soon", 3, valid_until=now + HOUR),  # valid now, gone by the push
            whole("later", 2, valid_from=now + 2 * HOUR),  # not yet valid now, but at the push
            whole("always", 1),
        ]
    )
    # Now, the best offer is the one that ends within the hour...
    assert offers.get_offers("back", 1, preview=True).offers[0].offer.offer_id == "ends-soon"

    # No quiet hours: the active hour follows the wall clock (it is the offer
    # that is under test, not the hour).
    plan = {"now_ms": now, "record": False, "quiet_hours": None}
    (cand,) = push_candidates(store, recommender, offers, **plan)

    assert now + 5 * HOUR <= cand.send_at_ms <= now + 6 * HOUR
    # ...but the push goes out after it ended: the best one valid then.
    assert cand.offer_id == "later"
    offers.delete("later")
    (cand,) = push_candidates(store, recommender, offers, **plan)
    assert cand.offer_id == "always"
    with pytest.raises(InvalidArgument, match=r"^at_ms: only with preview"):
        offers.get_offers("back", 1, at_ms=cand.send_at_ms)


# ----------------------------------------------------------------- deadline
def lapsing_crowd(store: Store, users: int, now: int) -> None:
    """``users`` users with two sessions each, the last one ten days ago (one batch)."""
    events, sessions = [], []
    for u in range(users):
        for k, start in enumerate((now - 20 * DAY + u * 1000, now - 10 * DAY + u * 1000)):
            sid = f"crowd{u}-s{k}"
            sessions.append(
                SessionRecord(
                    sid,
                    f"crowd{u}",
                    started_at_ms=start,
                    last_event_at_ms=start + 1000,
                    ended_at_ms=start + 1000,
                    end_reason=EndReason.CLOSED,
                )
            )
            events.append(
                EventRecord(f"{sid}-e", sid, f"crowd{u}", int(EventType.ITEM_VIEW), start, "i1")
            )
    store.append_events(events, sessions, received_ms=now - DAY)


def test_plan_push_stops_when_asked_and_records_nothing(store, recommender, tmp_path):
    lapsing_crowd(store, 50, NOW)
    asked = []

    def after(n: int):
        def should_stop() -> bool:
            asked.append(1)
            return len(asked) > n

        return should_stop

    # At the first question, after ten users' content, and at the last one (50
    # users' content, then before recording and again holding the write lock).
    for n in (0, 10, 51):
        asked.clear()
        with pytest.raises(DeadlineExceeded, match=r"^deadline: .*nothing recorded"):
            push_candidates(store, recommender, now_ms=NOW, quiet_hours=None, should_stop=after(n))
    assert push_log(tmp_path / "push.db") == []
    got = push_candidates(
        store, recommender, now_ms=NOW, quiet_hours=None, should_stop=lambda: False
    )
    assert len(got) == 50 and len(push_log(tmp_path / "push.db")) == 50


def test_get_push_candidates_gives_up_with_the_caller(tmp_path: Path, start_server) -> None:
    """A deadline far shorter than the work: DEADLINE_EXCEEDED, and the server
    does not finish behind the caller's back (nobody is capped), then serves on."""
    import grpc
    from grpc_health.v1 import health_pb2

    from sessionrec.v1 import sessionrec_pb2 as pb
    from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

    users = 5000
    now = int(time.time() * 1000)
    db = tmp_path / "crowd.db"
    with open_store(store_url(db)) as s:
        lapsing_crowd(s, users, now)
    srv = start_server(db, tmp_path / "models", push_quiet_start_hour=0, push_quiet_end_hour=0)
    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    everyone = pb.GetPushCandidatesRequest(limit=users)
    started = time.monotonic()
    dry = stub.GetPushCandidates(pb.GetPushCandidatesRequest(limit=users, dry_run=True), timeout=60)
    full_s = time.monotonic() - started
    assert len(dry.candidates) == users

    with pytest.raises(grpc.RpcError) as err:
        stub.GetPushCandidates(everyone, timeout=min(0.3, full_s / 3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Long enough for a run that ignored the deadline to finish and record.
    time.sleep(2 * full_s + 0.5)
    assert push_log(db) == []

    health = srv.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    recorded = stub.GetPushCandidates(everyone, timeout=60)
    assert len(recorded.candidates) == users  # nobody was capped by the abandoned call
    assert len(push_log(db)) == users


# ---------------------------------------------------------- file, then log
def test_deliver_gets_exactly_what_is_recorded_and_a_failure_records_nothing(
    store, recommender, tmp_path
):
    db = tmp_path / "push.db"
    add_sessions(store, "gone", [at(20, 19), at(18, 19), at(16, 19)])
    add_sessions(store, "other", [at(30, 18), at(28, 18)])

    def broken(candidates: list[PushCandidate]) -> None:
        assert push_log(db) == []  # called before anything is recorded
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        push_candidates(store, recommender, now_ms=NOW, deliver=broken)
    assert push_log(db) == []

    delivered: list[list[str]] = []
    got = push_candidates(
        store,
        recommender,
        now_ms=NOW,
        deliver=lambda cs: delivered.append([c.user_id for c in cs]),
    )
    assert delivered == [[c.user_id for c in got]] == [["other", "gone"]]
    assert sorted(u for u, _ in push_log(db)) == ["gone", "other"]
    # Capped: an empty delivery; a dry run delivers too.
    delivered.clear()
    assert push_candidates(store, recommender, now_ms=NOW, deliver=delivered.append) == []
    push_candidates(
        store, recommender, now_ms=NOW + 8 * DAY, record=False, deliver=delivered.append
    )
    assert [[c.user_id for c in cs] for cs in delivered] == [[], ["other", "gone"]]


def test_cli_records_nothing_when_the_file_cannot_be_written(synthetic_copy, cli, tmp_path):
    store, _, _, _ = engines(synthetic_copy)
    store.close()
    base = [
        "push-candidates",
        "--db",
        synthetic_copy.db_url,
        "--models",
        str(synthetic_copy.models_dir),
        "--lapse-days",
        "3",
        "--quiet-hours",
        "none",
    ]
    missing = cli(*base, "--out", str(tmp_path / "no-such-dir" / "push.jsonl"))
    assert missing.returncode == 2
    assert "push-candidates: error: --out: no such directory" in missing.stderr
    assert push_log(synthetic_copy.db_path) == []

    # The out path is a directory: the file is written, but cannot take its
    # place; nothing is recorded, and no temp file is left behind.
    target = tmp_path / "out" / "push.jsonl"
    target.mkdir(parents=True)
    failed = cli(*base, "--out", str(target))
    assert failed.returncode == 2, failed.stdout
    assert "push-candidates: error:" in failed.stderr and "push.jsonl" in failed.stderr
    assert push_log(synthetic_copy.db_path) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["push.jsonl"]
    assert list(target.iterdir()) == []

    # Written and recorded once the path is a file's.
    target.rmdir()
    ok = cli(*base, "--out", str(target))
    assert ok.returncode == 0, ok.stderr
    assert ok.json()["recorded"] == 2
    assert len(target.read_text().splitlines()) == 2
    assert sorted(u for u, _ in push_log(synthetic_copy.db_path)) == ["u03", "u05"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["push.jsonl"]
