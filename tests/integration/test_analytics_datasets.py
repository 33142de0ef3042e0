"""GetSessionStats through gRPC on real data, against statistics computed here
independently from the raw dataset files (not from the store):

* MovieLens 100K (``u.data``): every rating is an ITEM_VIEW; the importer splits
  each user's events into sessions at gaps of more than 30 minutes.
* the DIGINETICA sample: sessions are the file's ``sessionId``; an event's time
  is ``eventdate`` (UTC midnight) + ``timeframe`` ms; ``NA`` users belong to the
  session's known user, else to ``anon-<sessionId>``. The rows the importer
  reports as bad (sessions naming two known users) are left out here too.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from sessionrec.store import open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import store_url
from training.datasets import MOVIELENS_100K, SHARED_DATASETS
from training.formats import import_dataset

DIGINETICA = SHARED_DATASETS / "diginetica-cikm2016-sample" / "sample_train-item-views.csv"
DAY_MS = 24 * 3600 * 1000
EDGES_S = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000)


def expected_stats(events: dict[str, list[tuple[int, str]]], sessions_of) -> dict:
    """Statistics from ``{user: [(ts_ms, item), ...]}`` and a function giving
    each user's sessions as lists of (ts_ms, item)."""
    sessions: list[tuple[str, list[tuple[int, str]]]] = []
    for user, rows in events.items():
        for s in sessions_of(user, rows):
            sessions.append((user, s))
    durations = np.asarray([s[-1][0] - s[0][0] for _, s in sessions], dtype=float)
    lengths = np.asarray([len(s) for _, s in sessions], dtype=float)
    seconds = durations / 1000
    histogram = [
        int(
            (
                (seconds >= lo) & (seconds < (EDGES_S[k + 1] if k + 1 < len(EDGES_S) else np.inf))
            ).sum()
        )
        for k, lo in enumerate(EDGES_S)
    ]
    views = Counter(item for _, s in sessions for _, item in s)
    top = sorted(views.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    activity = np.zeros((7, 24), dtype=int)
    for _, s in sessions:
        for ts, _item in s:
            when = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
            activity[when.weekday(), when.hour] += 1
    starts: dict[str, list[int]] = defaultdict(list)
    for user, s in sessions:
        starts[user].append(s[0][0])
    return {
        "sessions": len(sessions),
        "users": len(starts),
        "duration": [float(np.percentile(durations, q)) for q in (50, 90, 99)],
        "histogram": histogram,
        "events_mean": float(lengths.mean()),
        "events_p50": float(np.median(lengths)),
        "bounces": int((lengths <= 1).sum()),
        "top": [{"item_id": i, "views": n} for i, n in top],
        "activity": activity.tolist(),
        "starts": starts,
    }


def retention(starts: dict[str, list[int]], now_ms: int, days=(1, 7, 30)) -> list[tuple]:
    out = []
    for d in days:
        eligible = returned = 0
        for user_starts in starts.values():
            first = min(user_starts)
            if first + d * DAY_MS > now_ms:
                continue
            eligible += 1
            returned += any(s >= first + d * DAY_MS for s in user_starts)
        out.append((d, eligible, returned))
    return out


def assert_matches(got: dict, want: dict, end_reason: str) -> None:
    assert got["sessions"] == want["sessions"]
    assert got["users"] == want["users"]
    assert [got["duration_ms"][p] for p in ("p50", "p90", "p99")] == pytest.approx(want["duration"])
    assert [b["sessions"] for b in got["duration_histogram"]] == want["histogram"]
    assert got["events_per_session"]["mean"] == pytest.approx(want["events_mean"])
    assert got["events_per_session"]["p50"] == pytest.approx(want["events_p50"])
    assert got["bounces"] == want["bounces"]
    assert got["top_items"] == want["top"]
    assert got["activity_utc"] == want["activity"]
    assert got["end_reasons"][end_reason] == want["sessions"]
    days = [(p["day"], p["eligible"], p["returned"]) for p in got["retention"]["days"]]
    assert days == retention(want["starts"], got["now_ms"])
    assert got["retention"]["cohort_users"] == want["users"]


def stats(srv, **fields) -> dict:
    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    reply = stub.GetSessionStats(pb.GetSessionStatsRequest(**fields), timeout=60)
    got = json.loads(reply.json)
    assert reply.sessions == got["sessions"] and reply.users == got["users"]
    return got


def test_movielens_session_stats_match_an_independent_computation(movielens_copy, start_server):
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(MOVIELENS_100K) as fh:
        for line in fh:
            user, item, _rating, ts = line.split("\t")
            events[user].append((int(ts) * 1000, item))

    def sessions_of(user, rows):
        rows = sorted(rows, key=lambda r: r[0])
        out = [[rows[0]]]
        for r in rows[1:]:
            if r[0] - out[-1][-1][0] > 1800 * 1000:
                out.append([r])
            else:
                out[-1].append(r)
        return out

    want = expected_stats(events, sessions_of)
    srv = start_server(movielens_copy.db_path, movielens_copy.models_dir)
    assert_matches(stats(srv), want, "TIMEOUT")


@pytest.mark.skipif(not DIGINETICA.exists(), reason=f"DIGINETICA sample not found at {DIGINETICA}")
def test_diginetica_session_stats_match_an_independent_computation(tmp_path: Path, start_server):
    db = tmp_path / "dg.db"
    with open_store(store_url(db)) as store:
        report = import_dataset(store, DIGINETICA, "diginetica")
    bad_lines = {b.line for b in report.bad}
    assert len(bad_lines) == 3  # two sessions naming two known users (see the importer)
    rows = []
    with open(DIGINETICA) as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter=";"), start=1):
            if line_no == 1 or line_no in bad_lines:
                continue
            sid, user, item, timeframe, eventdate = row
            day = dt.datetime.fromisoformat(eventdate).replace(tzinfo=dt.UTC)
            rows.append((sid, user, item, int(day.timestamp() * 1000) + int(timeframe)))
    known = defaultdict(set)
    for sid, user, _item, _ts in rows:
        if user != "NA":
            known[sid].add(user)
    by_session: dict[str, list[tuple[int, str]]] = defaultdict(list)
    owner = {}
    for sid, _user, item, ts in rows:
        by_session[sid].append((ts, item))
        owner[sid] = next(iter(known[sid])) if known[sid] else f"anon-{sid}"
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    sessions_by_user: dict[str, list[list[tuple[int, str]]]] = defaultdict(list)
    for sid, evs in by_session.items():
        evs.sort(key=lambda r: r[0])
        events[owner[sid]].extend(evs)
        sessions_by_user[owner[sid]].append(evs)
    want = expected_stats(events, lambda user, _rows: sessions_by_user[user])
    srv = start_server(db, tmp_path / "models")
    assert_matches(stats(srv), want, "TIMEOUT")


def test_get_session_stats_bad_input_and_anomalies(synthetic_copy, start_server) -> None:
    import grpc

    from .support import assert_status, ts

    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir)
    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    now = 2_000_000_000_000
    assert_status(
        stub.GetSessionStats,
        pb.GetSessionStatsRequest(start=ts(now), end=ts(now - 1)),
        invalid,
        "end",
    )
    assert_status(
        stub.GetSessionStats, pb.GetSessionStatsRequest(skip_below_ms=-1), invalid, "skip_below_ms"
    )
    assert_status(stub.GetSessionStats, pb.GetSessionStatsRequest(platform=42), invalid, "platform")
    # A time range adds the anomalies (empty here: the synthetic store has no screens).
    got = stats(srv, start=ts(0), end=ts(now))
    assert got["anomalies"] == [] and got["sessions"] == 60
    assert "anomalies" not in stats(srv)
    # One session per synthetic user: all are first sessions.
    assert stats(srv, segment=pb.NEW_USER)["sessions"] == 60
    assert stats(srv, segment=pb.RETURNING_USER)["sessions"] == 0
    assert_status(stub.GetSessionStats, pb.GetSessionStatsRequest(segment=9), invalid, "segment")
