"""The active session weighs more than old history: through the session models
blended with the long-term model, and, in the long-term model's fold-in, by
live_session_boost (5x)."""

from __future__ import annotations

from sessionrec.store import open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from training.pipeline import train

from .support import view


def clusters(reply: pb.RecommendResponse) -> str:
    """ "abba..": the cluster of each recommended item."""
    return "".join(i.item_id[0] for i in reply.items)


def test_live_session_outweighs_old_history_until_it_ends(synthetic_copy, start_server):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, live_session_boost=5.0)
    # u00's history (imported, closed sessions) is all cluster A.
    before = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", n=6), timeout=10)
    assert before.items[0].item_id.startswith("a")

    sid = srv.sessions.StartSession(pb.StartSessionRequest(user_id="u00"), timeout=10).session_id
    reply = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(i, session_id=sid) for i in ("b00", "b01")]),
        timeout=10,
    )
    assert reply.accepted == 2

    live = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", session_id=sid, n=6), timeout=10)
    assert live.strategy == "session"
    assert live.items[0].item_id.startswith("b"), clusters(live)
    assert "you viewed" in live.items[0].reason and "b0" in live.items[0].reason
    # Without session_id the user's open session is the live one all the same.
    implicit = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", n=6), timeout=10)
    assert [i.item_id for i in implicit.items] == [i.item_id for i in live.items]

    srv.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    after = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", n=6), timeout=10)
    assert after.strategy == "personalized"
    assert after.items[0].item_id.startswith("a"), clusters(after)
    assert clusters(after).count("b") < clusters(live).count("b")
    assert not {"b00", "b01"} & {i.item_id for i in after.items}  # still seen


def without_session_models(srv, synthetic_copy) -> str:
    """Trains and serves the synthetic configuration without session models: the
    long-term model alone then answers live sessions."""
    with open_store(srv.db_url) as store:
        artifact = train(
            store,
            str(synthetic_copy.models_dir),
            "als",
            dict(synthetic_copy.info["params"]),
            session_model=False,
        )
    assert artifact.session is None
    srv.admin.ReloadModel(pb.ReloadModelRequest(version=artifact.version), timeout=30)
    return artifact.version


def test_boost_alone_makes_the_live_session_outweigh_history(synthetic_copy, start_server):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, live_session_boost=5.0)
    without_session_models(srv, synthetic_copy)
    sid = srv.sessions.StartSession(pb.StartSessionRequest(user_id="u00"), timeout=10).session_id
    srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(i, session_id=sid) for i in ("b00", "b01")]),
        timeout=10,
    )
    live = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", session_id=sid, n=6), timeout=10)
    assert live.strategy == "personalized"
    assert live.items[0].item_id.startswith("b"), clusters(live)


def test_without_boost_the_session_counts_like_history(synthetic_copy, start_server):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, live_session_boost=1.0)
    without_session_models(srv, synthetic_copy)
    sid = srv.sessions.StartSession(pb.StartSessionRequest(user_id="u00"), timeout=10).session_id
    srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(i, session_id=sid) for i in ("b00", "b01")]),
        timeout=10,
    )
    live = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", session_id=sid, n=6), timeout=10)
    srv.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=10)
    after = srv.recs.Recommend(pb.RecommendRequest(user_id="u00", n=6), timeout=10)
    assert live.items[0].item_id.startswith("a"), clusters(live)
    assert [i.item_id for i in live.items] == [i.item_id for i in after.items]


def test_a_new_event_is_in_the_next_answer_though_the_last_one_was_kept(
    synthetic_copy, start_server
):
    """The server keeps what a user's history made (history_cache_mb): asking
    again with nothing new reuses it; the next stored event changes the history,
    and so the answer, at once. A server keeping nothing answers the same."""
    keeps = start_server(synthetic_copy.db_path, synthetic_copy.models_dir)
    artifact = keeps.server.models.current.artifact
    assert artifact.prepared_cache_bytes == 32 * 1024 * 1024
    sid = keeps.sessions.StartSession(pb.StartSessionRequest(user_id="u00"), timeout=10).session_id
    keeps.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("b00", session_id=sid)]), timeout=10
    )
    ask = pb.RecommendRequest(user_id="u00", session_id=sid, n=6)
    first = keeps.recs.Recommend(ask, timeout=10)
    hits = artifact.prepared_hits
    again = keeps.recs.Recommend(ask, timeout=10)
    assert artifact.prepared_hits == hits + 1
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    shown = first.items[0].item_id
    keeps.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(shown, session_id=sid)]), timeout=10
    )
    after = keeps.recs.Recommend(ask, timeout=10)
    assert artifact.prepared_hits == hits + 1  # a new history: made again
    assert shown not in {i.item_id for i in after.items}  # now seen
    assert f"you viewed {shown}" in " ".join(i.reason for i in after.items)

    keeps.server.stop(grace=0.5)
    nothing_kept = start_server(
        synthetic_copy.db_path, synthetic_copy.models_dir, history_cache_mb=0
    )
    assert nothing_kept.server.models.current.artifact.prepared_cache_bytes == 0
    same = nothing_kept.recs.Recommend(ask, timeout=10)
    assert [(i.item_id, i.score) for i in same.items] == [(i.item_id, i.score) for i in after.items]
