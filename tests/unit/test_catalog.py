"""service/catalog.py: filter and diversity validation, masks over a ranker's
items, the catalog snapshot and its refresh, upsert rejections, new-item
picking, MMR and the category cap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.catalog import (
    NO_FILTER,
    Catalog,
    CatalogSnapshot,
    Diversity,
    Entry,
    IncomingItem,
    ItemFilter,
    Profile,
    RankerView,
    assemble,
    check_diversity,
    check_filter,
    cold_slots,
    mmr,
    pick_cold,
)
from sessionrec.errors import InvalidArgument
from sessionrec.items import ItemRecord, check_item
from sessionrec.store import Store


def snapshot_of(*items: ItemRecord, version: int = 1) -> CatalogSnapshot:
    return CatalogSnapshot(version, {i.item_id: i for i in items})


# a..d in the catalog, e (known to the ranker) is not; b is unavailable.
CATALOG = snapshot_of(
    check_item(item_id="a", categories=["shoes"], price=10.0),
    check_item(item_id="b", categories=["shoes", "sale"], price=30.0, available=False),
    check_item(item_id="c", categories=["bags"]),
    check_item(item_id="d", categories=["bags", "sale"], price=5.0),
)
IDS = ["a", "b", "c", "d", "e"]


def allowed(view: RankerView, f: ItemFilter) -> list[str]:
    mask = view.mask(check_filter(f))
    return (
        list(view.ids) if mask is None else [i for i, ok in zip(view.ids, mask, strict=True) if ok]
    )


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (ItemFilter(include_categories=("shoes", "")), "filter.include_categories[1]: required"),
        (ItemFilter(exclude_categories=("x" * 257,)), "filter.exclude_categories[0]: longer"),
        (ItemFilter(include_categories=("a\nb",)), "filter.include_categories[0]: contains"),
        (ItemFilter(exclude_item_ids=("ok", "")), "filter.exclude_item_ids[1]: required"),
        (ItemFilter(min_price=-0.01), "filter.min_price: must be >= 0"),
        (ItemFilter(max_price=math.nan), "filter.max_price: must be a finite number"),
        (ItemFilter(min_price=math.inf), "filter.min_price: must be a finite number"),
        (ItemFilter(min_price=20.0, max_price=10.0), "filter.max_price: must be >= filter.min"),
        (ItemFilter(include_categories=tuple(f"c{i}" for i in range(101))), "filter.include_"),
    ],
)
def test_a_bad_filter_is_refused_naming_the_field(bad: ItemFilter, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_filter(bad)
    assert str(exc.value).startswith(field)


def test_equal_filters_normalize_to_one_mask_key() -> None:
    one = check_filter(ItemFilter(include_categories=("b", "a", "b"), min_price=1.0))
    two = check_filter(ItemFilter(include_categories=("a", "b"), min_price=1.0))
    assert one.mask_key == two.mask_key
    assert one.include_categories == ("a", "b")
    # A price range of one point is fine.
    check_filter(ItemFilter(min_price=3.0, max_price=3.0))


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Diversity(max_per_category=-1), "max_per_category: must be >= 0"),
        (Diversity(mmr_lambda=1.5), "mmr_lambda: must be between 0 and 1"),
        (Diversity(mmr_lambda=-0.1), "mmr_lambda"),
        (Diversity(mmr_lambda=math.nan), "mmr_lambda"),
    ],
)
def test_bad_diversity_is_refused_naming_the_field(bad: Diversity, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_diversity(bad)
    assert str(exc.value).startswith(field)
    assert check_diversity(Diversity(2, 0.0)) == Diversity(2, 0.0)


# --------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (NO_FILTER, ["a", "c", "d", "e"]),  # b is unavailable: never allowed
        (ItemFilter(include_categories=("shoes",)), ["a"]),  # e has no categories
        (ItemFilter(include_categories=("shoes", "bags")), ["a", "c", "d"]),
        # e might be in an excluded category: left out too.
        (ItemFilter(exclude_categories=("bags",)), ["a"]),
        (ItemFilter(exclude_categories=("sale",)), ["a", "c"]),
        (ItemFilter(min_price=6.0), ["a"]),  # no price (c, e): left out
        (ItemFilter(max_price=10.0), ["a", "d"]),
        (ItemFilter(min_price=5.0, max_price=5.0), ["d"]),
        (ItemFilter(available_only=True), ["a", "c", "d"]),  # e is not in the catalog
        (ItemFilter(exclude_item_ids=("a", "zz")), ["c", "d", "e"]),
        (ItemFilter(include_categories=("nothing",)), []),
    ],
)
def test_masks_follow_the_filter_and_agree_with_allows(f: ItemFilter, expected: list[str]) -> None:
    view = RankerView(CATALOG, np.asarray(IDS))
    assert allowed(view, f) == expected
    checked = check_filter(f)
    assert [i for i in IDS if checked.allows(CATALOG.get(i), i)] == expected


def test_without_unavailable_items_or_a_filter_there_is_no_mask() -> None:
    view = RankerView(snapshot_of(check_item(item_id="a")), IDS)
    assert view.mask(NO_FILTER) is None
    assert RankerView(CatalogSnapshot(0, {}), IDS).mask(NO_FILTER) is None
    # Excluded ids alone make a mask, from a fresh array each time.
    only = view.mask(check_filter(ItemFilter(exclude_item_ids=("c",))))
    assert only is not None and only.tolist() == [True, True, False, True, True]


def test_masks_are_cached_per_filter_and_excluded_ids_never_leak_into_the_cache() -> None:
    view = RankerView(CATALOG, IDS)
    shoes = check_filter(ItemFilter(include_categories=("shoes", "bags")))
    first = view.mask(shoes)
    assert view.mask(check_filter(ItemFilter(include_categories=("bags", "shoes")))) is first
    without_a = view.mask(
        check_filter(ItemFilter(include_categories=("shoes", "bags"), exclude_item_ids=("a",)))
    )
    assert without_a is not None and not without_a[0]
    again = view.mask(shoes)
    assert again is first and again is not None and again[0]


def test_a_view_knows_the_rankers_cold_items_newest_first_and_category_popularity() -> None:
    snapshot = snapshot_of(
        check_item(item_id="a", categories=["shoes"]),
        check_item(item_id="new1", categories=["shoes"], created_at_ms=100),
        check_item(item_id="new2", categories=["shoes", "bags"], created_at_ms=300),
        check_item(item_id="gone", categories=["shoes"], created_at_ms=900, available=False),
        check_item(item_id="plain", created_at_ms=200),
    )
    view = RankerView(snapshot, ["a", "z"], np.asarray([4.0, 9.0]))
    assert [i.item_id for i in view.cold] == ["new2", "plain", "new1"]
    assert [i.item_id for i in view.cold_by_category["shoes"]] == ["new2", "new1"]
    assert [i.item_id for i in view.cold_uncategorized] == ["plain"]
    assert view.category_popularity == {"shoes": 4.0}


# ------------------------------------------------------------------- catalog
def test_refresh_reads_only_what_changed(store: Store) -> None:
    catalog = Catalog(store)
    assert catalog.refresh().version == 0
    store.upsert_items([check_item(item_id="a"), check_item(item_id="b")])
    first = catalog.refresh()
    assert first.version == 1 and sorted(first.items) == ["a", "b"]
    assert catalog.refresh() is first  # nothing changed: the same snapshot
    store.upsert_items([check_item(item_id="b", available=False), check_item(item_id="c")])
    second = catalog.refresh()
    assert second.version == 2 and sorted(second.items) == ["a", "b", "c"]
    assert second.items["a"] is first.items["a"]  # not read again
    assert second.items["b"].available is False
    assert first.items["b"].available is True  # snapshots never change


def test_views_follow_the_catalog_version(store: Store) -> None:
    catalog = Catalog(store)
    before = catalog.view("model-1", IDS)
    assert catalog.view("model-1", IDS) is before
    store.upsert_items([check_item(item_id="a", available=False)])
    catalog.refresh()
    after = catalog.view("model-1", IDS)
    assert after is not before
    assert allowed(after, NO_FILTER) == ["b", "c", "d", "e"]


def test_upsert_stores_the_valid_items_and_lists_the_rejected_ones(store: Store) -> None:
    catalog = Catalog(store, max_items_per_call=10)
    result = catalog.upsert(
        [
            IncomingItem(item_id="a", categories=["shoes"], price=3.0),
            IncomingItem(item_id="b", price=-1.0),
            IncomingItem(item_id="a", title="again"),
            IncomingItem(item_id="c", timestamp_error="nanos must be 0..999999999, got -1"),
            IncomingItem(item_id="", title="no id"),
            IncomingItem(item_id="d", attributes={"": "x"}),
            IncomingItem(item_id="e", categories=["ok", ""]),
        ]
    )
    assert (result.inserted, result.updated, result.unchanged) == (1, 0, 0)
    reasons = {r.index: str(r.error) for r in result.rejected}
    assert reasons[1] == "items[1].price: must be >= 0, got -1.0"
    assert reasons[2].startswith(
        "items[2].item_id: 'a' repeated in this request (first at items[0])"
    )
    assert reasons[3].startswith("items[3].created_at: nanos")
    assert reasons[4] == "items[4].item_id: required"
    assert reasons[5].startswith("items[5].attributes: keys")
    assert reasons[6] == "items[6].categories[1]: required"
    # The server's snapshot sees the upsert at once.
    assert sorted(catalog.snapshot.items) == ["a"]
    assert catalog.get("a").categories == ("shoes",)


def test_an_upsert_with_no_valid_item_fails_with_the_first_reason(store: Store) -> None:
    catalog = Catalog(store, max_items_per_call=2)
    with pytest.raises(InvalidArgument, match=r"^items: must not be empty"):
        catalog.upsert([])
    with pytest.raises(InvalidArgument, match=r"^items: at most 2 per call, got 3"):
        catalog.upsert([IncomingItem(item_id=str(i)) for i in range(3)])
    with pytest.raises(InvalidArgument, match=r"^items\[0\]\.price: must be a finite number"):
        catalog.upsert([IncomingItem(item_id="x", price=math.inf), IncomingItem(item_id="")])
    assert store.catalog_version() == 0


# ----------------------------------------------------------------- new items
@pytest.mark.parametrize(
    ("n", "share", "slots"),
    [(1, 0.1, 0), (4, 0.1, 0), (5, 0.1, 1), (10, 0.1, 1), (20, 0.1, 2), (25, 0.1, 2),
     (10, 0.0, 0), (4, 0.5, 2), (3, 1.0, 3), (1000, 0.1, 100)],
)  # fmt: skip
def test_cold_slots(n: int, share: float, slots: int) -> None:
    assert cold_slots(n, share) == slots


NEW = snapshot_of(
    check_item(item_id="w1", categories=["shoes"]),
    check_item(item_id="w2", categories=["bags"]),
    check_item(item_id="s-old", categories=["shoes"], created_at_ms=100, price=50.0),
    check_item(item_id="s-new", categories=["shoes"], created_at_ms=300, price=80.0),
    check_item(
        item_id="s-red", categories=["shoes"], created_at_ms=200, attributes={"color": "red"}
    ),
    check_item(item_id="b-new", categories=["bags"], created_at_ms=400, price=20.0),
    check_item(item_id="hat", categories=["hats"], created_at_ms=999),
    check_item(item_id="plain", created_at_ms=500),
)


def pick(k: int, f: ItemFilter = NO_FILTER, liked: list[str] = (), **kw) -> list[str]:
    view = RankerView(NEW, ["w1", "w2"], np.asarray([1.0, 5.0]))  # bags are more popular
    taste = Profile()
    taste.add(NEW, liked)
    picks = pick_cold(view, k, check_filter(f), skip=kw.get("skip", set()), liked=taste)
    return [f"{p.item.item_id}:{p.reason}" for p in picks]


def test_new_items_come_from_the_liked_categories_first_newest_first() -> None:
    assert pick(2, liked=["w1"]) == ["s-new:new in shoes", "s-red:new in shoes"]
    # Without a taste: the most popular categories first (bags 5, shoes 1, hats 0).
    assert pick(3) == ["b-new:new in bags", "s-new:new in shoes", "s-red:new in shoes"]
    assert pick(5)[-1] == "hat:new in hats"
    # Items without a category come last, however new.
    assert pick(10)[-1] == "plain:new item"


def test_shared_attributes_beat_recency_within_a_category() -> None:
    liked = Profile()
    liked.add(NEW, ["w1"])
    liked.attributes[("color", "red")] += 1
    view = RankerView(NEW, ["w1", "w2"])
    picks = pick_cold(view, 1, NO_FILTER, skip=set(), liked=liked)
    assert [p.item.item_id for p in picks] == ["s-red"]


def test_new_items_respect_the_filter_and_the_skip_list() -> None:
    assert pick(5, ItemFilter(min_price=60.0)) == ["s-new:new in shoes"]
    assert pick(5, ItemFilter(include_categories=("shoes",)), liked=["w2"]) == [
        "s-new:new in shoes",
        "s-red:new in shoes",
        "s-old:new in shoes",
    ]
    assert pick(2, ItemFilter(exclude_categories=("shoes", "bags")), liked=["w1"]) == [
        "hat:new in hats",
        "plain:new item",
    ]
    assert pick(1, liked=["w1"], skip={"s-new"}) == ["s-red:new in shoes"]
    assert pick(0, liked=["w1"]) == []


# ----------------------------------------------------------------- diversity
CATS = {"a1": ("a",), "a2": ("a",), "a3": ("a",), "b1": ("b",), "ab": ("a", "b"), "n1": ()}


def entries(*ids: str) -> list[Entry]:
    return [Entry(i, 10.0 - k, f"r{i}") for k, i in enumerate(ids)]


def cats(item_id: str) -> tuple[str, ...]:
    return CATS.get(item_id, ())


def test_mmr_trades_relevance_for_new_categories() -> None:
    ranked = entries("a1", "a2", "a3", "b1")
    assert [e.item_id for e in mmr(ranked, 1.0, cats)] == ["a1", "a2", "a3", "b1"]
    assert [e.item_id for e in mmr(ranked, 0.5, cats)] == ["a1", "b1", "a2", "a3"]
    # Pure novelty: after a1, b1 (no overlap); then every a-item overlaps fully.
    assert [e.item_id for e in mmr(ranked, 0.0, cats)][:2] == ["a1", "b1"]
    # Scores stay the model's.
    assert {e.item_id: e.score for e in mmr(ranked, 0.5, cats)}["b1"] == 7.0


def test_the_category_cap_holds_and_later_items_fill_in() -> None:
    out = assemble(entries("a1", "a2", "ab", "a3", "b1", "n1"), [], 4, 0, 1, cats)
    assert [e.item_id for e in out] == ["a1", "b1", "n1"]  # ab needs a and b below the cap
    out = assemble(entries("a1", "a2", "ab", "a3", "b1", "n1"), [], 4, 0, 2, cats)
    assert [e.item_id for e in out] == ["a1", "a2", "b1", "n1"]
    out = assemble(entries("a1", "a2", "ab"), [], 2, 0, 0, cats)
    assert [e.item_id for e in out] == ["a1", "a2"]


def test_new_items_take_the_last_slots_with_the_score_above_them() -> None:
    new = [Entry("x1", 0.0, "new in a"), Entry("x2", 0.0, "new in b")]
    out = assemble(entries("a1", "a2", "a3", "b1"), new, 4, 1, 0, cats)
    assert [(e.item_id, e.score) for e in out] == [("a1", 10), ("a2", 9), ("a3", 8), ("x1", 8)]
    # Too few ranked items: new ones fill the rest.
    out = assemble(entries("a1"), new, 4, 1, 0, cats)
    assert [e.item_id for e in out] == ["a1", "x1", "x2"]
    # All slots new (nothing ranked): score 0.
    out = assemble([], new[:1], 3, 1, 0, cats)
    assert [(e.item_id, e.score) for e in out] == [("x1", 0.0)]


def test_the_cap_applies_to_new_items_too_and_ranked_items_take_their_place() -> None:
    CATS.update({"x1": ("a",)})
    try:
        new = [Entry("x1", 0.0, "new in a")]
        out = assemble(entries("a1", "a2", "b1", "n1"), new, 3, 1, 1, cats)
        assert [e.item_id for e in out] == ["a1", "b1", "n1"]
    finally:
        del CATS["x1"]
