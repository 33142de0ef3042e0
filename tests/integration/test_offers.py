"""The offers engine through gRPC on a real server: definitions, eligibility
rules, caps and budgets (also under 16 concurrent clients), the live session
steering the ranking, redemption events, the holdout and the report.

The synthetic store (u00..u29 viewed cluster A, u30..u59 cluster B, five days
ago, ALS trained) gets a catalog: A items are shoes, B items books."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import grpc
import pytest

from sessionrec.offers import in_holdout
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import store_url

from .support import assert_status, now_ms, ts, view

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DAY_MS = 24 * 3600 * 1000


def catalog() -> list[pb.Item]:
    return [
        pb.Item(item_id=f"{c}{i:02d}", categories=[top], price=10.0 + i)
        for c, top in (("a", "shoes"), ("b", "books"))
        for i in range(15)
    ]


def offer(offer_id: str, **fields: Any) -> pb.Offer:
    fields.setdefault("kind", pb.PERCENT_OFF)
    fields.setdefault("value", 10.0)
    fields.setdefault("combinable", True)
    if "target" not in fields:
        fields["target"] = pb.OfferTarget(whole_catalog=True)
    return pb.Offer(offer_id=offer_id, title=offer_id, **fields)


def shoes(**kw: Any) -> pb.OfferTarget:
    return pb.OfferTarget(categories=["shoes"], **kw)


def books() -> pb.OfferTarget:
    return pb.OfferTarget(categories=["books"])


@pytest.fixture
def srv(synthetic_copy, start_server):
    server = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, offer_holdout_share=0)
    server.catalog = pb_grpc.CatalogServiceStub(server.channel)
    server.offers = pb_grpc.OfferServiceStub(server.channel)
    server.catalog.UpsertItems(pb.UpsertItemsRequest(items=catalog()), timeout=10)
    return server


def upsert(srv, *offers: pb.Offer) -> pb.UpsertOffersResponse:
    return srv.offers.UpsertOffers(pb.UpsertOffersRequest(offers=offers), timeout=10)


def get(srv, user: str, n: int = 10, **kw: Any) -> pb.GetOffersResponse:
    return srv.offers.GetOffers(pb.GetOffersRequest(user_id=user, n=n, **kw), timeout=10)


def ids(reply: pb.GetOffersResponse) -> list[str]:
    return [o.offer_id for o in reply.offers]


def start(srv, user: str, platform: int = pb.WEB) -> str:
    return srv.sessions.StartSession(
        pb.StartSessionRequest(user_id=user, platform=platform), timeout=10
    ).session_id


def track(srv, *events: pb.Event) -> pb.TrackEventsResponse:
    return srv.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)


def test_a_session_viewing_shoes_ranks_the_shoe_offer_first(srv):
    upsert(
        srv,
        offer("shoe-10", target=shoes()),
        offer("book-10", target=books()),
        offer("free-ship", kind=pb.FREE_SHIPPING, value=10.0),
    )
    # u40 is a books reader; this session is all shoes.
    sid = start(srv, "u40")
    track(srv, *[view(i, session_id=sid) for i in ("a03", "a04", "a05")])
    firsts = Counter(ids(get(srv, "u40", n=3, session_id=sid, preview=True))[0] for _ in range(30))
    assert firsts.most_common(1)[0][0] == "shoe-10", firsts
    reply = get(srv, "u40", n=3, session_id=sid, preview=True)
    by_id = {o.offer_id: o for o in reply.offers}
    assert by_id["shoe-10"].reason == "you viewed 3 shoes this session"
    assert by_id["shoe-10"].kind == pb.PERCENT_OFF and by_id["shoe-10"].title == "shoe-10"


def test_a_changed_target_is_ranked_by_its_new_items(srv):
    """What ranking keeps of an offer's target follows the offer when it changes."""
    upsert(srv, offer("pick", target=pb.OfferTarget(item_ids=["a03"])))
    sid = start(srv, "u41")
    track(srv, view("a03", session_id=sid), view("a04", session_id=sid))
    first = get(srv, "u41", session_id=sid, preview=True).offers[0]
    assert first.reason == "you viewed 1 items this session"
    upsert(srv, offer("pick", target=pb.OfferTarget(item_ids=["b01", "a04"])))
    again = get(srv, "u41", session_id=sid, preview=True).offers[0]
    assert again.reason == "you viewed 1 items this session"
    upsert(srv, offer("pick", target=pb.OfferTarget(item_ids=["b01"])))
    last = get(srv, "u41", session_id=sid, preview=True).offers[0]
    assert last.offer_id == "pick" and not last.reason.startswith("you viewed"), last.reason


def test_ineligible_expired_and_capped_offers_are_never_returned(srv):
    now = now_ms()
    upsert(
        srv,
        offer("expired", valid_until=ts(now - DAY_MS), valid_from=ts(now - 2 * DAY_MS)),
        offer("future", valid_from=ts(now + DAY_MS)),
        offer("ios-only", eligibility=pb.OfferEligibility(platforms=[pb.IOS])),
        offer("new-users", eligibility=pb.OfferEligibility(segment=pb.NEW_USER)),
        offer("returning", eligibility=pb.OfferEligibility(segment=pb.RETURNING_USER)),
        offer("loyal", eligibility=pb.OfferEligibility(min_sessions=3)),
        offer("lapsed", eligibility=pb.OfferEligibility(lapsed_days=3)),
        offer("long-lapsed", eligibility=pb.OfferEligibility(lapsed_days=30)),
        offer("viewed-a07", eligibility=pb.OfferEligibility(session_items=["a07"])),
        offer("cart-b01", eligibility=pb.OfferEligibility(cart_items=["b01"])),
        offer("once-per-session", max_per_session=1),
        offer("twice-per-user", max_per_user=2),
        offer("always"),
    )
    # u05: returning (sessions 5 days ago), on WEB, one session so far (plus this).
    sid = start(srv, "u05", pb.WEB)
    track(srv, view("a07", session_id=sid))
    first = set(ids(get(srv, "u05", session_id=sid)))
    assert first == {
        "returning",
        "lapsed",
        "viewed-a07",
        "once-per-session",
        "twice-per-user",
        "always",
    }
    second = set(ids(get(srv, "u05", session_id=sid)))
    assert second == first - {"once-per-session"}
    third = set(ids(get(srv, "u05", session_id=sid)))
    assert third == second - {"twice-per-user"}
    # A new user on iOS with b01 in the cart.
    sid2 = start(srv, "fresh-1", pb.IOS)
    track(
        srv,
        pb.Event(type=pb.ADD_TO_CART, item_id="b01", session_id=sid2, event_id="cart-1"),
    )
    fresh = set(ids(get(srv, "fresh-1", session_id=sid2)))
    assert fresh == {
        "ios-only",
        "new-users",
        "cart-b01",
        "once-per-session",
        "twice-per-user",
        "always",
    }
    # The cart item bought: the cart offer goes.
    track(
        srv, pb.Event(type=pb.PURCHASE, item_id="b01", session_id=sid2, event_id="buy-1", value=20)
    )
    assert "cart-b01" not in ids(get(srv, "fresh-1", session_id=sid2, preview=True))


def test_non_combinable_offers_are_shown_alone_and_priority_goes_first(srv):
    upsert(
        srv,
        offer("big", value=50.0, combinable=False),
        offer("small", value=5.0),
        offer("pinned", value=1.0, priority=5),
    )
    reply = get(srv, "u01", n=3, preview=True)
    assert ids(reply) == ["pinned", "small"]  # "big" cannot join a list


def test_redemptions_use_the_budget_and_single_use_offers_disappear(srv):
    upsert(srv, offer("once", single_use=True), offer("five", budget=5))
    sid = start(srv, "u02")
    assert "once" in ids(get(srv, "u02", session_id=sid))
    redeemed = track(
        srv, pb.Event(type=pb.OFFER_REDEEMED, offer_id="once", session_id=sid, event_id="red-1")
    )
    assert redeemed.accepted == 1
    assert "once" not in ids(get(srv, "u02", session_id=sid))
    again = track(
        srv,
        pb.Event(type=pb.OFFER_REDEEMED, offer_id="once", session_id=sid, event_id="red-2"),
        view("a01", session_id=sid),
    )
    assert again.accepted == 1 and len(again.rejected) == 1
    assert again.rejected[0].index == 0
    assert again.rejected[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert again.rejected[0].reason.startswith("events[0].offer_id:")
    # A retried redemption (same event id) is stored and counted once.
    assert (
        track(
            srv, pb.Event(type=pb.OFFER_REDEEMED, offer_id="once", session_id=sid, event_id="red-1")
        ).duplicates
        == 1
    )


def test_sixteen_concurrent_clients_never_exceed_caps_or_budgets(srv):
    upsert(srv, offer("capped", max_per_user=3), offer("budget", budget=5))
    shown: list[str] = []
    outcomes: list[tuple[int, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(4):
                got = ids(get(srv, "u07", n=5))  # the same user everywhere
                redemption = pb.Event(
                    type=pb.OFFER_REDEEMED,
                    offer_id="budget",
                    user_id=f"buyer-{k}-{_}",
                    event_id=f"c{k}-{_}",
                )
                try:
                    track(srv, redemption)
                    outcome = (1, 0)
                except grpc.RpcError as exc:  # the batch's only event was refused
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    assert "budget of 5" in (exc.details() or "")
                    outcome = (0, 1)
                with lock:
                    shown.extend(got)
                    outcomes.append(outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert Counter(shown)["capped"] == 3
    assert sum(a for a, _ in outcomes) == 5 and sum(r for _, r in outcomes) == 59


def test_bad_offers_are_invalid_argument_and_leave_stored_offers_alone(srv):
    upsert(srv, offer("keep", value=7.0))
    for bad, field in (
        (offer("neg", value=-1.0), "offers[0].value"),
        (
            offer("backwards", valid_from=ts(now_ms()), valid_until=ts(now_ms() - DAY_MS)),
            "offers[0].valid_until",
        ),
        (offer("ghost", target=pb.OfferTarget(item_ids=["nope"])), "offers[0].target.item_ids[0]"),
        (offer("ghost-cat", target=pb.OfferTarget(categories=["toys"])), "offers[0].target"),
        (offer("keep", value=-3.0), "offers[0].value"),
    ):
        assert_status(srv.offers.UpsertOffers, pb.UpsertOffersRequest(offers=[bad]), INVALID, field)
    listed = srv.offers.ListOffers(pb.ListOffersRequest(), timeout=10).offers
    assert [(o.offer_id, o.value) for o in listed] == [("keep", 7.0)]
    # A mixed batch stores the valid offer and lists the bad one.
    reply = upsert(srv, offer("good"), offer("bad", value=0.0))
    assert reply.inserted == 1 and [r.index for r in reply.rejected] == [1]
    assert_status(srv.offers.GetOffers, pb.GetOffersRequest(user_id="u1", n=0), INVALID, "n")
    assert_status(srv.offers.GetOffers, pb.GetOffersRequest(n=3), INVALID, "user_id")
    assert_status(
        srv.offers.DeleteOffer,
        pb.DeleteOfferRequest(offer_id="nope"),
        grpc.StatusCode.NOT_FOUND,
        "offer_id",
    )
    bad_event = track(
        srv,
        pb.Event(type=pb.OFFER_REDEEMED, user_id="u1", event_id="x1"),
        view("a01", user_id="u1"),
    )
    assert bad_event.rejected[0].reason.startswith("events[0].offer_id: required")


def test_holdout_users_get_no_offers_and_the_report_compares_arms(synthetic_copy, start_server):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, offer_holdout_share=0.5)
    stub = pb_grpc.OfferServiceStub(srv.channel)
    pb_grpc.CatalogServiceStub(srv.channel).UpsertItems(
        pb.UpsertItemsRequest(items=catalog()), timeout=10
    )
    stub.UpsertOffers(pb.UpsertOffersRequest(offers=[offer("all")]), timeout=10)
    users = [f"u{u:02d}" for u in range(60)]
    for user in users:
        reply = stub.GetOffers(pb.GetOffersRequest(user_id=user, n=3), timeout=10)
        assert reply.holdout == in_holdout(user, 0.5)
        assert bool(reply.offers) != reply.holdout
        if user in users[:20]:  # some users of both arms buy afterwards
            srv.sessions.TrackEvents(
                pb.TrackEventsRequest(
                    events=[
                        pb.Event(
                            type=pb.PURCHASE,
                            item_id="a01",
                            user_id=user,
                            value=30.0,
                            event_id=f"buy-{user}",
                        )
                    ]
                ),
                timeout=10,
            )
    report = json.loads(stub.GetOfferReport(pb.GetOfferReportRequest(), timeout=10).json)
    (entry,) = report["offers"]
    held = sum(in_holdout(u, 0.5) for u in users)
    assert entry["holdout"]["users"] == held and entry["treated"]["users"] == 60 - held
    assert entry["impressions"] == 60 - held
    bought_held = sum(in_holdout(u, 0.5) for u in users[:20])
    assert entry["holdout"]["converted"] == bought_held
    assert entry["treated"]["converted"] == 20 - bought_held
    assert entry["treated"]["revenue"] == pytest.approx(30.0 * (20 - bought_held))
    lo, hi = entry["uplift"]["ci"]
    assert lo <= entry["uplift"]["conversion"] <= hi


def test_the_cli_imports_yaml_lists_and_writes_the_report(synthetic_copy, tmp_path):
    from tests.conftest import run_cli

    url = store_url(synthetic_copy.db_path)
    path = tmp_path / "offers.yaml"
    path.write_text(
        "offers:\n"
        "  - offer_id: shoe-10\n"
        "    kind: PERCENT_OFF\n"
        "    value: 10\n"
        "    target: {item_ids: [a01, a02]}\n"
        "    valid_until: 2099-01-01T00:00:00Z\n"
        "  - offer_id: broken\n"
        "    kind: AMOUNT_OFF\n"
        "    value: -5\n"
        "    target: {whole_catalog: true}\n"
    )
    done = run_cli(
        "offers", "import", "--db", url, "--models", str(synthetic_copy.models_dir), str(path)
    )
    assert done.returncode == 0, done.stderr
    assert done.json() == {"inserted": 1, "updated": 0, "rejected": 1}
    assert "offers[1].value: must be > 0" in done.stderr
    listed = run_cli("offers", "list", "--db", url)
    assert [o["offer_id"] for o in listed.json()] == ["shoe-10"]
    assert listed.json()[0]["valid_until"] == "2099-01-01T00:00:00Z"
    html = tmp_path / "offers.html"
    report = run_cli("offers", "report", "--db", url, "--html", str(html))
    assert report.returncode == 0, report.stderr
    assert report.json()["offers"] == []  # nothing shown yet
    assert html.read_text().startswith("<!DOCTYPE html>")
    bad = run_cli("offers", "import", "--db", url, str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


def test_the_readme_example(tmp_path, start_server):
    """The worked example of the README, on a fresh store without a model."""
    srv = start_server(tmp_path / "shop.db", tmp_path / "models")
    catalog_stub = pb_grpc.CatalogServiceStub(srv.channel)
    offers = pb_grpc.OfferServiceStub(srv.channel)
    catalog_stub.UpsertItems(
        pb.UpsertItemsRequest(
            items=[
                pb.Item(item_id="runner-1", categories=["shoes"], price=80),
                pb.Item(item_id="runner-2", categories=["shoes"], price=95),
                pb.Item(item_id="novel-1", categories=["books"], price=15),
            ]
        ),
        timeout=10,
    )
    offers.UpsertOffers(
        pb.UpsertOffersRequest(
            offers=[
                pb.Offer(
                    offer_id="shoes-15",
                    kind=pb.PERCENT_OFF,
                    value=15,
                    combinable=True,
                    target=pb.OfferTarget(categories=["shoes"]),
                ),
                pb.Offer(
                    offer_id="books-15",
                    kind=pb.PERCENT_OFF,
                    value=15,
                    combinable=True,
                    target=pb.OfferTarget(categories=["books"]),
                ),
                pb.Offer(
                    offer_id="free-ship",
                    kind=pb.FREE_SHIPPING,
                    value=5,
                    combinable=True,
                    target=pb.OfferTarget(whole_catalog=True),
                    max_per_session=1,
                ),
            ]
        ),
        timeout=10,
    )
    firsts = []
    for user in ["ana"] + [f"shopper-{k}" for k in range(19)]:
        sid = start(srv, user)
        track(srv, *[view(i, session_id=sid) for i in ("runner-1", "runner-2")])
        reply = offers.GetOffers(pb.GetOffersRequest(user_id=user, session_id=sid, n=3), timeout=10)
        if reply.holdout:
            continue
        firsts.append(reply.offers[0].offer_id)
        if user == "ana":
            assert reply.offers[0].offer_id == "shoes-15"
            assert reply.offers[0].reason == "you viewed 2 shoes this session"
            assert {o.offer_id for o in reply.offers} == {"shoes-15", "books-15", "free-ship"}
            redeemed = track(
                srv,
                pb.Event(
                    session_id=sid,
                    type=pb.OFFER_REDEEMED,
                    offer_id="shoes-15",
                    event_id="ana-redeem-1",
                ),
            )
            assert redeemed.accepted == 1
    assert len(firsts) >= 15  # the 10% holdout takes a few
    assert firsts.count("shoes-15") >= len(firsts) - 1, firsts


def test_offer_event_errors_say_what_is_wrong(srv):
    upsert(srv, offer("live"), offer("per-session", max_per_session=1))
    reply = track(
        srv,
        pb.Event(type=pb.OFFER_REDEEMED, offer_id="ghost", user_id="u1", event_id="g1"),
        view("a01", user_id="u1"),
    )
    assert reply.rejected[0].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert reply.rejected[0].reason.startswith("events[0].offer_id: unknown offer")
    assert_status(
        srv.sessions.TrackEvents,
        pb.TrackEventsRequest(
            events=[pb.Event(type=pb.OFFER_REDEEMED, offer_id="live", user_id="u1")]
        ),
        INVALID,
        "events[0].event_id",
    )
    # Without a session, a per-session capped offer is not offered at all.
    assert ids(get(srv, "u03", preview=True)) == ["live"]


def test_a_holdout_preview_exposes_nobody(synthetic_copy, start_server):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, offer_holdout_share=0.99)
    stub = pb_grpc.OfferServiceStub(srv.channel)
    stub.UpsertOffers(pb.UpsertOffersRequest(offers=[offer("all")]), timeout=10)
    user = next(f"u{u:02d}" for u in range(60) if in_holdout(f"u{u:02d}", 0.99))
    assert stub.GetOffers(pb.GetOffersRequest(user_id=user, n=1, preview=True), timeout=10).holdout
    report = json.loads(stub.GetOfferReport(pb.GetOfferReportRequest(), timeout=10).json)
    assert report["offers"] == []
    stub.GetOffers(pb.GetOffersRequest(user_id=user, n=1), timeout=10)
    report = json.loads(stub.GetOfferReport(pb.GetOfferReportRequest(), timeout=10).json)
    assert report["offers"][0]["holdout"]["users"] == 1
