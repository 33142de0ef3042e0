"""Offer definitions (sessionrec/offers.py) and the store's offer log limits
(caps, budget, single use, idempotency) on a real store."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sessionrec.errors import InvalidArgument
from sessionrec.offers import (
    HOLDOUT,
    IMPRESSION,
    REDEMPTION,
    TREATED,
    in_holdout,
    offer_from_dict,
)
from sessionrec.store import OfferLogEntry, Store, open_store
from tests.conftest import store_url


def offer(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "offer_id": "o1",
        "kind": "PERCENT_OFF",
        "value": 10,
        "target": {"categories": ["shoes"]},
    }
    base.update(fields)
    return base


def test_an_offer_round_trips_through_its_dictionary() -> None:
    o = offer_from_dict(
        offer(
            title="10% off shoes",
            valid_from="2026-01-01T00:00:00Z",
            valid_until="2026-02-01T00:00:00Z",
            eligibility={"segment": "RETURNING_USER", "platforms": ["IOS"], "min_sessions": 2},
            max_per_user=3,
            budget="100",  # int64 in proto JSON arrives as text
            single_use=True,
        )
    )
    assert o.valid_from_ms == 1_767_225_600_000
    assert o.eligibility.platforms == (1,)
    assert o.budget == 100
    assert offer_from_dict(o.to_dict()) == o
    assert o.valid_at(1_767_225_600_000) and not o.valid_at(o.valid_until_ms or 0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"value": -5}, "offers[0].value"),
        ({"value": 0}, "offers[0].value"),
        ({"value": 150}, "offers[0].value"),  # a percentage above 100
        ({"kind": "HALF_PRICE"}, "offers[0].kind"),
        ({"offer_id": ""}, "offers[0].offer_id"),
        ({"target": {}}, "offers[0].target"),
        ({"target": {"item_ids": ["a"], "whole_catalog": True}}, "offers[0].target"),
        ({"target": {"item_ids": ["a", "a"]}}, "offers[0].target.item_ids"),
        (
            {"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
            "offers[0].valid_until",
        ),
        ({"valid_until": "next tuesday"}, "offers[0].valid_until"),
        ({"max_per_user": -1}, "offers[0].max_per_user"),
        ({"eligibility": {"platforms": ["TOASTER"]}}, "offers[0].eligibility.platforms[0]"),
        ({"eligibility": {"segment": "VIP"}}, "offers[0].eligibility.segment"),
        ({"colour": "red"}, "offers[0].colour"),
        ({"combinable": "yes"}, "offers[0].combinable"),
    ],
)
def test_bad_offers_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        offer_from_dict(offer(**fields), "offers[0]")
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_the_holdout_is_stable_and_close_to_its_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    held = [u for u in users if in_holdout(u, 0.1)]
    assert 0.09 < len(held) / len(users) < 0.11
    assert held == [u for u in users if in_holdout(u, 0.1)]
    assert not any(in_holdout(u, 0.0) for u in users[:100])


# --------------------------------------------------------------- the store
def entry(log_id: str, kind: int = IMPRESSION, user: str = "u1", session: str = "s1", **kw: Any):
    return OfferLogEntry(
        log_id, kw.get("offer_id", "o1"), user, session, kind, 1000, kw.get("arm", TREATED)
    )


def test_caps_budget_and_single_use_hold(store: Store) -> None:
    o = offer_from_dict(offer(max_per_user=2, max_per_session=1, budget=2, single_use=True))
    store.upsert_offers([o])
    limits = {"o1": o}
    assert store.record_offer_log([entry("i1")], limits) == [None]
    # A second impression in the same session: over the per-session cap.
    (why,) = store.record_offer_log([entry("i2")], limits)
    assert why is not None and "per session" in why
    assert store.record_offer_log([entry("i3", session="s2")], limits) == [None]
    # Third impression for the user: over the per-user cap.
    (why,) = store.record_offer_log([entry("i4", session="s3")], limits)
    assert why is not None and "per user" in why
    # The same log id again counts once (idempotent), even over a cap.
    assert store.record_offer_log([entry("i1")], limits) == [None]
    counts = store.offer_counts(["o1"], "u1", "s2")["o1"]
    assert (counts.impressions, counts.user_impressions, counts.session_impressions) == (2, 2, 1)
    # Redemptions: single use per user, two in total.
    assert store.record_offer_log([entry("r1", REDEMPTION)], limits) == [None]
    (why,) = store.record_offer_log([entry("r2", REDEMPTION)], limits)
    assert why is not None and "single-use" in why
    assert store.record_offer_log([entry("r3", REDEMPTION, user="u2")], limits) == [None]
    (why,) = store.record_offer_log([entry("r4", REDEMPTION, user="u3")], limits)
    assert why is not None and "budget" in why
    assert store.offer_counts(["o1"], "u9", None)["o1"].redemptions == 2
    # Holdout exposures are logged, never capped, never counted as impressions.
    assert store.record_offer_log([entry("h1", arm=HOLDOUT, user="u1")], limits) == [None]
    assert store.offer_counts(["o1"], "u1", None)["o1"].impressions == 2


def test_groups_committed_together_are_judged_in_order(store: Store) -> None:
    # Three callers' impressions in one transaction: the first takes the user's
    # last slot, the second (same user) is refused, another user's goes in;
    # one group of two entries for a second offer is judged entry by entry.
    o1 = offer_from_dict(offer(max_per_user=1))
    o2 = offer_from_dict({**offer(max_per_user=1), "offer_id": "o2"})
    store.upsert_offers([o1, o2])
    limits = {"o1": o1, "o2": o2}
    got = store.record_offer_logs(
        [
            [entry("g1")],
            [entry("g2", session="s2")],
            [entry("g3", user="u2"), entry("g4", user="u2", offer_id="o2")],
            [entry("g5", user="u2", offer_id="o2", session="s9")],
        ],
        limits,
    )
    assert got[0] == [None] and got[2] == [None, None]
    assert got[1][0] is not None and "per user" in got[1][0]
    assert got[3][0] is not None and "per user" in got[3][0]
    assert store.offer_counts(["o1", "o2"], "u2", None)["o2"].user_impressions == 1
    assert store.offer_counts(["o1"], "u1", None)["o1"].impressions == 2


def test_concurrent_writers_never_exceed_a_budget(db_path) -> None:
    """16 threads, each with its own store connection, redeem at once: exactly
    the budget gets through."""
    with open_store(store_url(db_path)) as store:
        o = offer_from_dict(offer(budget=5))
        store.upsert_offers([o])
    stores = [open_store(store_url(db_path)) for _ in range(16)]
    results: list[str | None] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def redeem(k: int) -> None:
        barrier.wait()
        for j in range(4):
            got = stores[k].record_offer_log(
                [entry(f"r{k}-{j}", REDEMPTION, user=f"u{k}-{j}")], {"o1": o}
            )
            with lock:
                results.extend(got)

    threads = [threading.Thread(target=redeem, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.close()
    assert len(results) == 64
    assert sum(r is None for r in results) == 5
    with open_store(store_url(db_path)) as store:
        assert store.offer_counts(["o1"], "x", None)["o1"].redemptions == 5


def test_offers_upsert_list_delete(store: Store) -> None:
    v0 = store.offers_version()
    assert store.upsert_offers(
        [offer_from_dict(offer()), offer_from_dict(offer(offer_id="o2"))]
    ) == (2, 0)
    v1 = store.offers_version()
    assert store.upsert_offers([offer_from_dict(offer(value=20))]) == (0, 1)
    v2 = store.offers_version()
    assert [o.offer_id for o in store.list_offers()] == ["o1", "o2"]
    assert store.list_offers()[0].value == 20
    assert store.delete_offer("o2") and not store.delete_offer("o2")
    assert len({v0, v1, v2, store.offers_version()}) == 4


def test_the_offers_version_moves_on_every_change(store: Store) -> None:
    """Deleting the newest offer and adding another must not give back an old
    version (caches compare it)."""
    store.upsert_offers([offer_from_dict(offer(offer_id="a"))])
    store.upsert_offers([offer_from_dict(offer(offer_id="b"))])
    seen = {store.offers_version()}
    assert store.delete_offer("b")
    seen.add(store.offers_version())
    store.upsert_offers([offer_from_dict(offer(offer_id="c"))])
    seen.add(store.offers_version())
    assert len(seen) == 3


def test_a_per_session_cap_needs_a_session(store: Store) -> None:
    o = offer_from_dict(offer(max_per_session=1))
    (why,) = store.record_offer_log([entry("i1", session=None)], {"o1": o})  # type: ignore[arg-type]
    assert why is not None and "needs one" in why


@pytest.mark.sqlite_only  # SQLite's planner, and its virtual machine's steps
def test_the_offer_counts_read_only_the_users_and_sessions_own_impressions(
    store: Store,
) -> None:
    """How much work ``offer_counts`` does must not grow with everyone else's
    impressions (it did: SQLite read every treated impression of an offer to
    find one session's). Counted in SQLite virtual-machine steps, not time."""
    offers = {f"o{k}": offer_from_dict(offer(offer_id=f"o{k}")) for k in range(5)}
    store.upsert_offers(list(offers.values()))
    ids = sorted(offers)
    steps = [0]

    def counted() -> int:
        steps[0] += 1
        return 0

    def work() -> int:
        reader = store._reader()  # type: ignore[attr-defined]
        reader.set_progress_handler(counted, 1)
        steps[0] = 0
        try:
            counts = store.offer_counts(ids, "u1", "s1")
        finally:
            reader.set_progress_handler(None, 1)
        assert counts["o0"].session_impressions == 1
        assert counts["o0"].user_impressions == 1
        return steps[0]

    store.record_offer_log([entry("mine", offer_id="o0")], offers)
    before = work()
    others = [
        entry(f"x{k}", user=f"u{k + 2}", session=f"s{k + 2}", offer_id=ids[k % 5])
        for k in range(3000)
    ]
    store.record_offer_log(others, offers)
    after = work()
    assert after < 1.5 * before + 50, (before, after)  # unfixed: 259 -> 15,288 steps
