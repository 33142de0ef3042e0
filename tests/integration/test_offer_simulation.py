"""A simulated shop population against the real offers engine and SQLite store.

Three offers of equal value differ only in their true redemption rate (5%,
10%, 30%). Each visitor asks for one offer (none of them combines) and redeems
it with its true rate. Every visitor then buys with probability 20%, or 30% if
they were treated (not in the 20% holdout): the true uplift is +0.10.

Thompson sampling must move the impressions to the best offer within the
bounded run, and the report's uplift interval must cover the true uplift. The
engine and the population are seeded, so the run is reproducible."""

from __future__ import annotations

from collections import Counter

import numpy as np

from service.catalog import Catalog
from service.offers import OfferEngine
from service.recommender import ModelHolder
from service.sessions import IncomingEvent, SessionManager
from sessionrec.events import EventType
from sessionrec.store import open_store
from tests.conftest import store_url

TRUE_RATES = {"five": 0.05, "ten": 0.10, "thirty": 0.30}
BASE_CONVERSION, TREATED_CONVERSION = 0.20, 0.30
VISITORS = 1500


def test_thompson_sampling_finds_the_best_offer_and_the_uplift_is_covered(tmp_path) -> None:
    store = open_store(store_url(tmp_path / "sim.db"))
    try:
        engine = OfferEngine(
            store,
            ModelHolder(str(tmp_path / "no-models")),
            Catalog(store),
            holdout_share=0.2,
            seed=1,
        )
        sessions = SessionManager(store, offer_recorder=engine.record_events)
        engine.upsert(
            [
                {
                    "offer_id": name,
                    "kind": "AMOUNT_OFF",
                    "value": 5,
                    "target": {"whole_catalog": True},
                }
                for name in TRUE_RATES
            ]
        )
        rng = np.random.default_rng(7)
        shown: Counter[str] = Counter()
        late: Counter[str] = Counter()
        for k in range(VISITORS):
            user = f"visitor-{k}"
            result = engine.get_offers(user, 1)
            events = []
            if not result.holdout:
                assert len(result.offers) == 1
                name = result.offers[0].offer.offer_id
                shown[name] += 1
                if k >= VISITORS // 2:
                    late[name] += 1
                if rng.random() < TRUE_RATES[name]:
                    events.append(
                        IncomingEvent(
                            event_id=f"redeem-{k}",
                            user_id=user,
                            type=int(EventType.OFFER_REDEEMED),
                            offer_id=name,
                        )
                    )
            rate = BASE_CONVERSION if result.holdout else TREATED_CONVERSION
            if rng.random() < rate:
                events.append(
                    IncomingEvent(
                        event_id=f"buy-{k}",
                        user_id=user,
                        type=int(EventType.PURCHASE),
                        item_id="sku-1",
                        value=40.0,
                    )
                )
            if events:
                assert sessions.track(events).accepted == len(events)
        treated = sum(shown.values())
        assert shown["thirty"] > treated / 2, shown
        assert late["thirty"] > 0.8 * sum(late.values()), late
        report = engine.report()
        by_id = {o["offer_id"]: o for o in report["offers"]}
        assert {o: by_id[o]["impressions"] for o in TRUE_RATES} == dict(shown)
        best = by_id["thirty"]
        lo, hi = best["redemption_rate_ci"]
        assert lo <= TRUE_RATES["thirty"] <= hi, best
        # Pooled over offers (every treated visitor saw exactly one).
        lo, hi = report["totals"]["uplift"]["ci"]
        assert lo <= TREATED_CONVERSION - BASE_CONVERSION <= hi, report["totals"]
        assert lo > 0, "the uplift is detectable at this size"
    finally:
        store.close()
