"""A server that starts with no model: popularity from the store, then a model
trained on the same store is loaded with ReloadModel."""

from __future__ import annotations

from collections import defaultdict

import grpc

from sessionrec.store import open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from training.pipeline import train

from .support import assert_status, view


def store_popularity(rows) -> list[tuple[str, int]]:
    """Distinct users per item, most popular first, ties by item id (like the server)."""
    users: dict[str, set[str]] = defaultdict(set)
    for user, item, _etype, _ts in rows:
        users[item].add(user)
    return sorted(((item, len(us)) for item, us in users.items()), key=lambda p: (-p[1], p[0]))


def test_popularity_only_then_reload_a_trained_model(client, make_synthetic_rows, synthetic):
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.algorithm == "none"
    assert info.version == ""
    assert "popularity" in info.status

    assert_status(
        client.recs.SimilarItems,
        pb.SimilarItemsRequest(item_id="a00", n=5),
        grpc.StatusCode.FAILED_PRECONDITION,
        "model",
    )
    # Reloading with nothing in the models dir is refused the same way.
    assert_status(
        client.admin.ReloadModel,
        pb.ReloadModelRequest(),
        grpc.StatusCode.FAILED_PRECONDITION,
        "models_dir",
    )

    # Live events through gRPC (server receive time), batched per user.
    rows = make_synthetic_rows(seed=11)
    by_user: dict[str, list[pb.Event]] = defaultdict(list)
    for user, item, _etype, _ts in rows:
        by_user[user].append(view(item, user_id=user))
    for events in by_user.values():
        reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
        assert reply.accepted == len(events) and not reply.rejected

    expected = store_popularity(rows)
    popular = client.recs.Recommend(pb.RecommendRequest(user_id="visitor", n=5), timeout=10)
    assert popular.strategy == "popular"
    assert popular.model_version == ""
    assert [(i.item_id, int(i.score)) for i in popular.items] == expected[:5]
    assert all(i.reason.startswith("popular") for i in popular.items)

    # A known user's own items are left out of the popularity list.
    u00_items = {item for user, item, _e, _t in rows if user == "u00"}
    own = client.recs.Recommend(pb.RecommendRequest(user_id="u00", n=5), timeout=10)
    assert own.strategy == "popular"
    assert [i.item_id for i in own.items] == [
        item for item, _n in expected if item not in u00_items
    ][:5]

    # Train on the very store the server writes to, then hot-load it.
    with open_store(client.db_url) as store:
        artifact = train(store, str(client.models_dir), "als", dict(synthetic.info["params"]))
    still = client.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert still.algorithm == "none", "polling is off: nothing loads before ReloadModel"

    loaded = client.admin.ReloadModel(pb.ReloadModelRequest(), timeout=30)
    assert loaded.version == artifact.version
    assert loaded.algorithm == "als"
    assert loaded.items == 30 and loaded.users == 60
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.version == artifact.version
    assert artifact.version in info.status

    rec = client.recs.Recommend(pb.RecommendRequest(user_id="u00", n=5), timeout=10)
    assert rec.strategy == "session"  # u00's events of a moment ago: a live session
    assert rec.model_version == artifact.version
    assert len(rec.items) == 5
    assert not {i.item_id for i in rec.items} & u00_items
    # u00 lives in cluster A: its best unseen items come from cluster A.
    assert rec.items[0].item_id.startswith("a"), [i.item_id for i in rec.items]

    similar = client.recs.SimilarItems(pb.SimilarItemsRequest(item_id="b03", n=4), timeout=10)
    assert len(similar.items) == 4
    assert "b03" not in {i.item_id for i in similar.items}
    assert similar.model_version == artifact.version


def test_popularity_does_not_stay_empty_once_events_arrive(client):
    """A fresh deployment: the first Recommend comes before any event. The empty
    answer must not be cached: once events are stored, popularity reflects them."""
    first = client.recs.Recommend(pb.RecommendRequest(user_id="early", n=5), timeout=10)
    assert first.strategy == "popular"
    assert list(first.items) == []

    events = [view("hit", user_id=f"fan-{k}") for k in range(3)]
    reply = client.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
    assert reply.accepted == 3

    later = client.recs.Recommend(pb.RecommendRequest(user_id="early", n=5), timeout=10)
    assert [(i.item_id, int(i.score)) for i in later.items] == [("hit", 3)]
