"""Every algorithm, trained for real and served through gRPC."""

from __future__ import annotations

import grpc
import pytest

from sessionrec.store import open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from training.pipeline import train

from .support import assert_status, view

# implicit's CosineRecommender hands its own base class a COO matrix and warns about it.
pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")

PARAMS = {
    "als": {"factors": 8, "iterations": 10, "num_threads": 1},
    "bpr": {"factors": 8, "iterations": 60, "num_threads": 1},
    "itemknn": {"K": 20, "num_threads": 1},
    "popular": {},
}


@pytest.fixture
def srv(synthetic_copy, start_server):
    return start_server(synthetic_copy.db_path, synthetic_copy.models_dir)


@pytest.mark.parametrize("algorithm", sorted(PARAMS))
def test_serve_algorithm(srv, algorithm):
    with open_store(srv.db_url) as store:
        artifact = train(
            store, str(srv.models_dir), algorithm, dict(PARAMS[algorithm]), make_current=False
        )
    info = srv.admin.ReloadModel(pb.ReloadModelRequest(version=artifact.version), timeout=30)
    assert (info.version, info.algorithm) == (artifact.version, algorithm)
    assert info.items == 30

    # A newcomer who viewed three cluster-B items.
    viewed = ["b00", "b01", "b02"]
    reply = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(i, user_id=f"new-{algorithm}") for i in viewed]),
        timeout=10,
    )
    assert reply.accepted == 3
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id=f"new-{algorithm}", n=5), timeout=10)
    assert rec.model_version == artifact.version
    assert len(rec.items) == 5
    assert not {i.item_id for i in rec.items} & set(viewed)
    assert all(i.reason for i in rec.items)
    # The newcomer's events form a live session: the session models rank, blended
    # with the long-term model (popularity has no user model to blend).
    assert rec.strategy == "session"
    assert rec.items[0].item_id.startswith("b"), [i.item_id for i in rec.items]

    # Session co-occurrence (every model) plus the model's item similarity: no
    # session ever mixed the clusters, so b00's neighbours are b items, and each
    # says which sessions put it there.
    similar = srv.recs.SimilarItems(pb.SimilarItemsRequest(item_id="b00", n=3), timeout=10)
    assert len(similar.items) == 3
    assert "b00" not in {i.item_id for i in similar.items}
    assert all(i.item_id.startswith("b") for i in similar.items), similar
    assert all(i.reason.startswith("viewed with b00 in ") for i in similar.items), similar

    if algorithm == "popular":  # without session models, popularity relates nothing
        with open_store(srv.db_url) as store:
            bare = train(store, str(srv.models_dir), "popular", session_model=False)
        srv.admin.ReloadModel(pb.ReloadModelRequest(version=bare.version), timeout=30)
        assert_status(
            srv.recs.SimilarItems,
            pb.SimilarItemsRequest(item_id="b00", n=3),
            grpc.StatusCode.FAILED_PRECONDITION,
            "algorithm",
        )
