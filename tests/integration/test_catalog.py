"""The catalog through gRPC on a real server: UpsertItems/GetItem, Recommend
and SimilarItems filters, unavailable items, new items without interactions,
diversity, and bad input naming the field.

The synthetic store (users u00..u29 view cluster A a00..a14, u30..u59 cluster
B b00..b14, an ALS model trained on it) gets a catalog: A items are shoes, B
items books, each also in one of three sub-categories; a few popular items are
unavailable; and new items that no one has interacted with yet arrive.
"""

from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

from .support import assert_status, now_ms, ts

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DAY_MS = 24 * 3600 * 1000
A_USERS = [f"u{u:02d}" for u in range(30)]
B_USERS = [f"u{u:02d}" for u in range(30, 60)]
UNAVAILABLE = {"a00", "a01", "b00", "b02", "a-gone"}
SUB = ("running", "hiking", "casual")


def catalog_items() -> list[pb.Item]:
    items = []
    for cluster, top in (("a", "shoes"), ("b", "books")):
        for i in range(15):
            item_id = f"{cluster}{i:02d}"
            item = pb.Item(
                item_id=item_id,
                title=f"{top} {i}",
                categories=[top, SUB[i % 3]] + (["sale"] if i % 4 == 3 else []),
                available=item_id not in UNAVAILABLE,
                attributes={"brand": f"brand{i % 2}"},
            )
            if i != 14:  # a14 and b14 have no price
                item.price = 10.0 + i
            items.append(item)
    now = now_ms()
    new = [
        ("a-new", "shoes", now),
        ("a-new-old", "shoes", now - 2 * DAY_MS),
        ("a-gone", "shoes", now + 1000),  # newest of all, but unavailable
        ("b-new", "books", now),
    ]
    for item_id, top, created in new:
        item = pb.Item(
            item_id=item_id,
            categories=[top, "running"],
            price=99.0,
            available=item_id not in UNAVAILABLE,
        )
        item.created_at.CopyFrom(ts(created))
        items.append(item)
    return items


CATALOG = {i.item_id: i for i in catalog_items()}


def passes(item_id: str, f: pb.RecommendFilter) -> bool:
    """The rules, written out independently of the server."""
    item = CATALOG.get(item_id)
    if item_id in f.exclude_item_ids:
        return False
    restricted = bool(
        f.include_categories
        or f.exclude_categories
        or f.available_only
        or f.HasField("min_price")
        or f.HasField("max_price")
    )
    if item is None:
        return not restricted
    if not item.available:
        return False
    cats = set(item.categories)
    if f.include_categories and not cats & set(f.include_categories):
        return False
    if cats & set(f.exclude_categories):
        return False
    if f.HasField("min_price") and (not item.HasField("price") or item.price < f.min_price):
        return False
    return not (
        f.HasField("max_price") and (not item.HasField("price") or item.price > f.max_price)
    )


FILTERS = {
    "none": pb.RecommendFilter(),
    "shoes": pb.RecommendFilter(include_categories=["shoes"]),
    "no-sale-no-hiking": pb.RecommendFilter(exclude_categories=["sale", "hiking"]),
    "price-12-18": pb.RecommendFilter(min_price=12.0, max_price=18.0),
    "cheap-books": pb.RecommendFilter(include_categories=["books"], max_price=14.0),
    "available-only-minus-ids": pb.RecommendFilter(
        available_only=True, exclude_item_ids=["a02", "a03", "b01", "a-new"]
    ),
}


@pytest.fixture
def srv(synthetic_copy, start_server):
    server = start_server(synthetic_copy.db_path, synthetic_copy.models_dir)
    server.catalog = pb_grpc.CatalogServiceStub(server.channel)
    reply = server.catalog.UpsertItems(pb.UpsertItemsRequest(items=catalog_items()), timeout=10)
    assert (reply.inserted, reply.updated, list(reply.rejected)) == (len(CATALOG), 0, [])
    return server


def recommend(srv, user: str, n: int = 10, **fields) -> pb.RecommendResponse:
    return srv.recs.Recommend(pb.RecommendRequest(user_id=user, n=n, **fields), timeout=10)


def ids(reply: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in reply.items]


def test_recommend_never_returns_unavailable_or_filtered_out_items(srv):
    returned = 0
    for name, f in FILTERS.items():
        for user in A_USERS[::3] + B_USERS[::3] + ["stranger"]:
            reply = recommend(srv, user, n=12, filter=f)
            bad = [i for i in ids(reply) if not passes(i, f)]
            assert not bad, f"{name}: {user} got {bad}"
            returned += len(reply.items)
    assert returned > 300  # the filters leave plenty to recommend
    # Unfiltered, the unavailable items are gone even though they are the most popular.
    everything = recommend(srv, "stranger", n=1000)
    assert set(ids(everything)) == set(CATALOG) - UNAVAILABLE


def test_a_new_item_without_interactions_is_shown_within_its_category(srv):
    for user in A_USERS:
        reply = recommend(srv, user)
        assert reply.strategy == "personalized"
        last = reply.items[-1]
        # The newest available shoe takes the exploration slot (the last one) of
        # shoe lovers; the unavailable one is never shown.
        assert (last.item_id, last.reason) == ("a-new", "new in shoes"), ids(reply)
        assert last.score == reply.items[-2].score
        assert sum(1 for i in reply.items if i.reason.startswith("new")) == 1
    for user in B_USERS:
        reply = recommend(srv, user)
        assert reply.items[-1].item_id == "b-new"
        assert not {"a-new", "a-new-old", "a-gone"} & set(ids(reply))
    # Two slots of 20: both new shoes, newest first.
    twenty = recommend(srv, "u01", n=20)
    assert ids(twenty)[-2:] == ["a-new", "a-new-old"]
    # A books reader filtering on shoes gets the new shoe.
    assert "a-new" in ids(recommend(srv, "u40", filter=FILTERS["shoes"]))
    # Below five slots there is no exploration slot.
    assert not {"a-new", "b-new"} & set(ids(recommend(srv, "u01", n=4)))


def test_catalog_changes_apply_to_the_next_recommendation(srv):
    before = recommend(srv, "u05", n=5)
    top = before.items[0].item_id
    reply = srv.catalog.UpsertItems(
        pb.UpsertItemsRequest(items=[pb.Item(item_id=top, categories=["shoes"], available=False)]),
        timeout=10,
    )
    assert (reply.inserted, reply.updated) == (0, 1)
    assert top not in ids(recommend(srv, "u05", n=5))
    # Only the new items fit: strategy "new", the user's categories first.
    only_new = recommend(srv, "u05", n=5, filter=pb.RecommendFilter(min_price=99))
    assert only_new.strategy == "new"
    assert [(i.item_id, i.reason) for i in only_new.items] == [
        ("a-new", "new in shoes"),
        ("a-new-old", "new in shoes"),
        ("b-new", "new in running"),
    ]


def test_similar_items_respect_the_filter(srv):
    for name, f in FILTERS.items():
        for seed in ("a05", "b07", "a01"):  # a01 is unavailable: still a fine seed
            reply = srv.recs.SimilarItems(
                pb.SimilarItemsRequest(item_id=seed, n=15, filter=f), timeout=10
            )
            assert reply.strategy in ("similar", "new")
            bad = [i for i in ids(reply) if not passes(i, f) or i == seed]
            assert not bad, f"{name}: {seed} -> {bad}"
    plain = srv.recs.SimilarItems(pb.SimilarItemsRequest(item_id="a05", n=10), timeout=10)
    assert ids(plain)[-1] == "a-new"  # the exploration slot, in the seed's category
    assert all(CATALOG[i].categories[0] == "shoes" for i in ids(plain)[:5])


def test_similar_items_of_a_new_item_go_by_its_categories(srv):
    reply = srv.recs.SimilarItems(pb.SimilarItemsRequest(item_id="a-new", n=6), timeout=10)
    assert reply.strategy == "similar"
    assert len(reply.items) == 6
    assert all("shoes" in CATALOG[i].categories for i in ids(reply))
    # Same categories (shoes + running) first.
    assert set(CATALOG[reply.items[0].item_id].categories) >= {"shoes", "running"}
    assert reply.items[0].reason.endswith("like a-new")
    assert_status(
        srv.recs.SimilarItems, pb.SimilarItemsRequest(item_id="nowhere", n=5), NOT_FOUND, "item_id"
    )


def test_the_category_cap_and_mmr(srv):
    capped = recommend(srv, "u03", n=10, max_per_category=2)
    counts = Counter(c for i in ids(capped) for c in CATALOG[i].categories)
    assert max(counts.values()) <= 2
    # Every item is a shoe or a book, so two of each is all the cap allows.
    assert counts["shoes"] == counts["books"] == 2 and len(capped.items) == 4

    reordered = 0
    for user in A_USERS[:10]:
        relevance = recommend(srv, user, n=5)
        assert ids(recommend(srv, user, n=5, mmr_lambda=1.0)) == ids(relevance)
        novel = recommend(srv, user, n=5, mmr_lambda=0.0)
        assert ids(novel)[0] == ids(relevance)[0]
        # Pure novelty: the second item shares no category with the first (a book).
        assert not set(CATALOG[ids(novel)[0]].categories) & set(CATALOG[ids(novel)[1]].categories)
        reordered += "shoes" in CATALOG[ids(relevance)[1]].categories
    assert reordered  # for some users relevance alone had two shoes on top
    similar = srv.recs.SimilarItems(
        pb.SimilarItemsRequest(item_id="a05", n=10, max_per_category=3), timeout=10
    )
    counts = Counter(c for i in ids(similar) for c in CATALOG[i].categories)
    assert max(counts.values()) <= 3 and len(similar.items) >= 4


def test_get_item_round_trips(srv):
    item = srv.catalog.GetItem(pb.GetItemRequest(item_id="a14"), timeout=10)
    assert not item.HasField("price")  # no price is not a price of 0
    assert list(item.categories) == ["shoes", "casual"] and item.available
    assert dict(item.attributes) == {"brand": "brand0"}
    assert abs(item.created_at.ToMilliseconds() - now_ms()) < 60_000  # the first upsert
    gone = srv.catalog.GetItem(pb.GetItemRequest(item_id="a-gone"), timeout=10)
    assert gone.available is False and gone.price == 99.0
    assert_status(srv.catalog.GetItem, pb.GetItemRequest(item_id="zz"), NOT_FOUND, "item_id")
    assert_status(srv.catalog.GetItem, pb.GetItemRequest(item_id=""), INVALID, "item_id")


def test_upserts_are_idempotent_and_partial_batches_report_rejections(srv):
    again = srv.catalog.UpsertItems(pb.UpsertItemsRequest(items=catalog_items()[:5]), timeout=10)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 5)
    mixed = srv.catalog.UpsertItems(
        pb.UpsertItemsRequest(
            items=[
                pb.Item(item_id="c01", categories=["toys"], price=0.0),
                pb.Item(item_id="c02", price=-5),
                pb.Item(item_id="c03", categories=[""]),
            ]
        ),
        timeout=10,
    )
    assert (mixed.inserted, mixed.catalog_version) == (1, again.catalog_version + 1)
    assert [(r.index, r.reason, r.code) for r in mixed.rejected] == [
        (1, "items[1].price: must be >= 0, got -5.0", INVALID.value[0]),
        (2, "items[2].categories[0]: required", INVALID.value[0]),
    ]
    toy = srv.catalog.GetItem(pb.GetItemRequest(item_id="c01"), timeout=10)
    assert toy.HasField("price") and toy.price == 0.0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"min_price": -1}, "filter.min_price"),
        ({"min_price": 5, "max_price": 4}, "filter.max_price"),
        ({"include_categories": ["ok", ""]}, "filter.include_categories[1]"),
        ({"exclude_item_ids": ["x" * 300]}, "filter.exclude_item_ids[0]"),
        ({"max_per_category": -1}, "max_per_category"),
        ({"mmr_lambda": 1.5}, "mmr_lambda"),
    ],
)
def test_bad_filters_are_invalid_argument_naming_the_field(srv, fields, field):
    if field.startswith("filter."):
        fields = {"filter": pb.RecommendFilter(**fields)}
    recommend_request = pb.RecommendRequest(user_id="u01", n=5, **fields)
    assert_status(srv.recs.Recommend, recommend_request, INVALID, field)
    similar_request = pb.SimilarItemsRequest(item_id="a05", n=5, **fields)
    assert_status(srv.recs.SimilarItems, similar_request, INVALID, field)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (pb.Item(item_id=""), "items[0].item_id"),
        (pb.Item(item_id="x", price=float("nan")), "items[0].price"),
        (pb.Item(item_id="x", attributes={"k": "v" * 2000}), "items[0].attributes[k]"),
        (pb.Item(item_id="x", title="t\x00"), "items[0].title"),
        (pb.Item(item_id="x", created_at={"seconds": -5}), "items[0].created_at"),
        (pb.Item(item_id="x", created_at={"seconds": 1, "nanos": -1}), "items[0].created_at"),
    ],
)
def test_an_upsert_without_valid_items_is_invalid_argument_naming_the_field(srv, item, field):
    assert_status(srv.catalog.UpsertItems, pb.UpsertItemsRequest(items=[item]), INVALID, field)
    assert_status(srv.catalog.UpsertItems, pb.UpsertItemsRequest(), INVALID, "items")


def test_popularity_from_the_store_respects_the_catalog_too(srv, start_server, tmp_path):
    """A server without a model (same store, empty models dir) ranks by the
    store's popularity: filters, unavailable items and new items work the same."""
    bare = start_server(srv.db_path, tmp_path / "no-models", catalog_refresh_interval_s=0.05)
    assert bare.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).algorithm == "none"
    for name, f in FILTERS.items():
        reply = recommend(bare, "stranger", n=10, filter=f)
        assert reply.strategy in ("popular", "new")
        assert reply.items and all(passes(i, f) for i in ids(reply)), name
    plain = recommend(bare, "stranger", n=10)
    assert plain.items[-1].reason.startswith("new in")
    # A change written by another server shows after the refresh interval.
    srv.catalog.UpsertItems(
        pb.UpsertItemsRequest(items=[pb.Item(item_id=plain.items[0].item_id, available=False)]),
        timeout=10,
    )
    deadline = time.monotonic() + 5
    while plain.items[0].item_id in ids(recommend(bare, "stranger", n=10)):
        assert time.monotonic() < deadline, "the catalog change never reached the other server"
        time.sleep(0.05)


def test_the_exploration_share_can_be_turned_off(synthetic_copy, start_server):
    server = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, cold_item_share=0)
    stub = pb_grpc.CatalogServiceStub(server.channel)
    stub.UpsertItems(pb.UpsertItemsRequest(items=catalog_items()), timeout=10)
    for user in ("u01", "u40"):
        reply = recommend(server, user, n=20)
        assert len(reply.items) == 20
        assert not any(i.reason.startswith("new") for i in reply.items)
        assert not UNAVAILABLE & set(ids(reply))
