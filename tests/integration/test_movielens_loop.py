"""The whole loop through gRPC on MovieLens 100K: import -> train -> serve ->
sessions, live events and recommendations that react to them."""

from __future__ import annotations

import grpc
import pytest

from sessionrec.v1 import sessionrec_pb2 as pb
from tests.conftest import raw_connection

from .support import assert_status, now_ms, ts, view

pytestmark = pytest.mark.dataset


@pytest.fixture
def ml(movielens_copy, start_server):
    return start_server(movielens_copy.db_path, movielens_copy.models_dir)


def seen_items(db_path, user_id: str) -> set[str]:
    with raw_connection(db_path, readonly=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT item_id FROM events WHERE user_id = ? AND item_id IS NOT NULL",
            (user_id,),
        ).fetchall()
    return {r[0] for r in rows}


def item_ids(response: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in response.items]


def test_full_loop_user_1(ml, movielens_copy):
    version = movielens_copy.version
    history = seen_items(ml.db_path, "1")
    assert len(history) == 272  # MovieLens user 1

    start_ms = now_ms() - 60_000
    started = ml.sessions.StartSession(
        pb.StartSessionRequest(
            user_id="1", platform=pb.WEB, app_version="it-1.0", started_at=ts(start_ms)
        ),
        timeout=10,
    )
    sid = started.session_id
    assert sid
    assert started.started_at.ToMilliseconds() == start_ms

    first = ml.recs.Recommend(pb.RecommendRequest(user_id="1", session_id=sid, n=10), timeout=10)
    assert first.strategy == "personalized"
    assert first.model_version == version
    assert len(first.items) == 10
    assert not set(item_ids(first)) & history, "seen items must be excluded by default"
    assert all(item.reason for item in first.items)
    scores = [item.score for item in first.items]
    assert scores == sorted(scores, reverse=True)

    viewed = item_ids(first)[:3]
    events = [
        view(item, session_id=sid, event_id=f"loop-{k}", timestamp_ms=start_ms + (k + 1) * 10_000)
        for k, item in enumerate(viewed)
    ]
    tracked = ml.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert (tracked.accepted, tracked.duplicates, list(tracked.rejected)) == (3, 0, [])
    assert list(tracked.event_ids) == ["loop-0", "loop-1", "loop-2"]

    second = ml.recs.Recommend(pb.RecommendRequest(user_id="1", session_id=sid, n=10), timeout=10)
    assert second.strategy == "session"  # the three views: session models blend in
    assert len(second.items) == 10
    assert item_ids(second) != item_ids(first)
    assert not set(item_ids(second)) & set(viewed), "just-viewed items must not come back"
    assert not set(item_ids(second)) & history

    # Open session: duration runs to the last event.
    open_session = ml.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert open_session.active
    assert open_session.end_reason == pb.END_REASON_UNSPECIFIED
    assert not open_session.HasField("ended_at")
    assert open_session.last_event_at.ToMilliseconds() == start_ms + 30_000
    assert open_session.duration_ms == 30_000

    before_end = now_ms()
    ended = ml.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    assert ended.session_id == sid
    assert ended.user_id == "1"
    assert ended.end_reason == pb.CLOSED
    assert not ended.active
    assert ended.event_count == 3
    assert ended.platform == pb.WEB
    assert ended.app_version == "it-1.0"
    assert ended.ended_at.ToMilliseconds() >= before_end
    assert ended.duration_ms == ended.ended_at.ToMilliseconds() - start_ms
    assert ended.duration_ms >= 60_000
    # Dwell: 10 s to the next view twice, and the last view runs until the close.
    assert ended.total_dwell_ms == ended.ended_at.ToMilliseconds() - (start_ms + 10_000)

    got = ml.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert got == ended

    # Ending it again returns it unchanged.
    again = ml.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    assert again == ended


def test_known_user_viewing_items_outside_the_list_gets_a_different_list(ml):
    user = "2"
    history = seen_items(ml.db_path, user)
    before = ml.recs.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
    assert before.strategy == "personalized"
    shown = set(item_ids(before))
    picks = [str(i) for i in range(1, 1683) if str(i) not in history | shown][:3]
    assert len(picks) == 3

    tracked = ml.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(item, user_id=user) for item in picks]), timeout=10
    )
    assert tracked.accepted == 3

    after = ml.recs.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
    assert after.strategy == "session"
    assert len(after.items) == 10
    assert item_ids(after) != item_ids(before)
    assert not set(item_ids(after)) & set(picks)


def test_new_user_gets_personalized_after_three_views_and_popular_before(ml, movielens_copy):
    version = movielens_copy.version
    cold = ml.recs.Recommend(pb.RecommendRequest(user_id="brand-new-0", n=10), timeout=10)
    assert cold.strategy == "popular"
    assert cold.model_version == version
    assert len(cold.items) == 10
    assert all(item.reason for item in cold.items)

    user = "brand-new-1"
    items = ["50", "172", "181"]  # Star Wars, Empire Strikes Back, Return of the Jedi
    tracked = ml.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(item, user_id=user) for item in items]), timeout=10
    )
    assert (tracked.accepted, list(tracked.rejected)) == (3, [])

    warm = ml.recs.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
    assert warm.strategy == "session"
    assert warm.model_version == version
    assert len(warm.items) == 10
    assert not set(item_ids(warm)) & set(items)
    assert all(item.reason for item in warm.items), [i.reason for i in warm.items]
    assert item_ids(warm) != item_ids(cold)

    # include_seen brings the viewed items back into reach.
    with_seen = ml.recs.Recommend(
        pb.RecommendRequest(user_id=user, n=50, include_seen=True), timeout=10
    )
    assert set(items) & set(item_ids(with_seen))

    # The events opened a server-side session for the new user.
    # (sessionization: every event of the batch joined one session)
    with raw_connection(ml.db_path, readonly=True) as conn:
        sessions = conn.execute(
            "SELECT session_id, event_count FROM sessions WHERE user_id = ?", (user,)
        ).fetchall()
    assert len(sessions) == 1 and sessions[0][1] == 3
    session = ml.sessions.GetSession(pb.GetSessionRequest(session_id=sessions[0][0]), timeout=10)
    assert session.active and session.event_count == 3


def test_heavy_users_never_get_items_they_already_rated(ml):
    """include_seen is false by default: nothing the user interacted with comes back,
    also for users whose history is longer than the server's history_limit (500)."""
    violations = {}
    for user in ("405", "655", "13"):  # 737, 685 and 636 ratings
        history = seen_items(ml.db_path, user)
        assert len(history) > 500
        reply = ml.recs.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
        assert reply.strategy == "personalized"
        assert len(reply.items) == 10
        again = sorted(set(item_ids(reply)) & history, key=int)
        if again:
            violations[user] = again
    assert violations == {}, f"already rated items recommended (top 10): {violations}"


def test_similar_items(ml, movielens_copy):
    reply = ml.recs.SimilarItems(pb.SimilarItemsRequest(item_id="50", n=7), timeout=10)
    assert len(reply.items) == 7
    assert "50" not in item_ids(reply)
    assert len(set(item_ids(reply))) == 7
    assert reply.model_version == movielens_copy.version
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)
    assert all(i.reason for i in reply.items)

    assert_status(
        ml.recs.SimilarItems,
        pb.SimilarItemsRequest(item_id="no-such-movie", n=5),
        grpc.StatusCode.NOT_FOUND,
        "item_id",
    )


def test_model_info_matches_the_trained_artifact(ml, movielens_copy):
    info = ml.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.version == movielens_copy.version
    assert info.algorithm == "als"
    assert (info.users, info.items, info.interactions) == (943, 1682, 100_000)
    assert info.HasField("trained_at") and info.HasField("loaded_at")
    assert '"factors": 32' in info.params_json
    assert movielens_copy.version in info.status
