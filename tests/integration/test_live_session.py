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
