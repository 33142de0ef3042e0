"""sessionrec in one minute: simulated shoppers in, a trained model out, live
recommendations back -- everything through the public gRPC API.

    python examples/demo.py                      # in-process server, temporary files
    python examples/demo.py --target 127.0.0.1:50051 \\
        --db sqlite:///data/sessionrec.db --models models   # a running `make run`

What happens:

1. A real sessionrec server starts in this process (``service.server.create_server``
   on a free port, with a temporary SQLite store and models directory), or the
   demo connects to ``--target``.
2. 400 simulated shoppers, each fond of one or two categories of a 300-item shop
   (shoes, phones, books, kitchen, toys; ids like ``shoes-017``), replay a few
   sessions each from the past two weeks: StartSession, then TrackEvents with
   SCREEN_VIEW / ITEM_VIEW / ADD_TO_CART / PURCHASE events, then EndSession.
3. An ALS model is trained on the stored events (``training.pipeline.train``, the
   same code as ``sessionrec train``) and swapped in with AdminService.ReloadModel.
4. A book lover opens the app and looks at three pairs of shoes; after every view
   the demo asks for fresh recommendations, which move toward shoes.

With ``--target``, ``--db`` and ``--models`` must be the store and models
directory of that server (training reads the store directly). The replayed
history uses fixed session and event ids, so running the demo twice against the
same server stores it once (StartSession and TrackEvents are idempotent).
Output is deterministic for a given ``--seed`` apart from versions and timings.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from sessionrec.errors import SessionrecError
from sessionrec.store import Store, open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from training.pipeline import train

CATEGORIES: dict[str, list[str]] = {
    "shoes": ["sneaker", "running shoe", "boot", "sandal", "loafer", "trail runner", "slipper"],
    "phones": ["smartphone", "phone case", "charger", "earbuds", "power bank", "smartwatch"],
    "books": ["novel", "cookbook", "thriller", "biography", "poetry", "sci-fi", "history"],
    "kitchen": ["frying pan", "chef knife", "kettle", "blender", "mug", "toaster"],
    "toys": ["puzzle", "plush bear", "robot kit", "board game", "kite", "toy car"],
}
PRICE_RANGE = {
    "shoes": (35, 180),
    "phones": (9, 900),
    "books": (7, 45),
    "kitchen": (5, 160),
    "toys": (6, 90),
}
ITEMS_PER_CATEGORY = 60
USERS = 400
HISTORY_DAYS = 14
STORY_CATEGORY = "books"
NEW_INTEREST = "shoes"
TOP_N = 5
HERO_MIN_EVENTS = 10
#: How deep the demo looks for the best-ranked item of the new interest.
DEPTH = 100
RPC_TIMEOUT_S = 30.0
#: ALS hyper-parameters: fewer factors than the library default (32, tuned on
#: MovieLens) suit a 300-item shop with five categories.
MODEL_PARAMS: dict[str, object] = {"factors": 16}
RULE = "-" * 78


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    name: str
    price: float


@dataclass
class Shopper:
    user_id: str
    likes: list[str]


@dataclass
class Totals:
    sessions: int = 0
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    timeout_closed: int = 0


# ------------------------------------------------------------------ the shop
def build_catalog(rng: random.Random) -> dict[str, Item]:
    catalog: dict[str, Item] = {}
    for category, kinds in CATEGORIES.items():
        low, high = PRICE_RANGE[category]
        for k in range(1, ITEMS_PER_CATEGORY + 1):
            item_id = f"{category}-{k:03d}"
            price = round(rng.uniform(low, high), 2)
            catalog[item_id] = Item(item_id, category, kinds[k % len(kinds)], price)
    return catalog


def popularity_weights(
    rng: random.Random, catalog: dict[str, Item]
) -> dict[str, tuple[list[Item], list[float]]]:
    """Per category: its items and a long-tailed popularity (a few bestsellers)."""
    out: dict[str, tuple[list[Item], list[float]]] = {}
    for category in CATEGORIES:
        items = [i for i in catalog.values() if i.category == category]
        ranks = list(range(len(items)))
        rng.shuffle(ranks)
        out[category] = (items, [1.0 / (r + 3) ** 1.1 for r in ranks])
    return out


def make_shoppers(rng: random.Random) -> list[Shopper]:
    names = list(CATEGORIES)
    shoppers = []
    for k in range(1, USERS + 1):
        likes = rng.sample(names, 1 if rng.random() < 0.6 else 2)
        shoppers.append(Shopper(f"user-{k:03d}", likes))
    return shoppers


def ts(ms: int) -> Timestamp:
    out = Timestamp()
    out.FromMilliseconds(ms)
    return out


def simulate_session(
    rng: random.Random,
    shopper: Shopper,
    shelves: dict[str, tuple[list[Item], list[float]]],
    session_id: str,
    start_ms: int,
) -> list[pb.Event]:
    """One visit: home -> a category -> a few products -> maybe cart and purchase."""
    events: list[pb.Event] = []
    clock = start_ms

    def add(
        etype: pb.EventType, *, screen: str = "", item: Item | None = None, dwell: int = 0
    ) -> None:
        nonlocal clock
        event = pb.Event(
            event_id=f"{session_id}-e{len(events):02d}",
            session_id=session_id,
            type=etype,
            screen=screen,
            dwell_ms=dwell,
            timestamp=ts(clock),
        )
        if item is not None:
            event.item_id = item.item_id
            if etype in (pb.ADD_TO_CART, pb.PURCHASE):
                event.value = item.price
        events.append(event)
        clock += dwell + rng.randint(300, 2_000)

    add(pb.SCREEN_VIEW, screen="home", dwell=rng.randint(2_000, 9_000))
    cart: list[Item] = []
    for _ in range(rng.choice((1, 1, 1, 2))):  # categories browsed this visit
        category = (
            rng.choice(shopper.likes) if rng.random() < 0.88 else rng.choice(list(CATEGORIES))
        )
        add(pb.SCREEN_VIEW, screen=f"category/{category}", dwell=rng.randint(3_000, 15_000))
        items, weights = shelves[category]
        for item in rng.choices(items, weights, k=rng.randint(2, 6)):
            add(pb.SCREEN_VIEW, screen="product", dwell=rng.randint(1_000, 3_000))
            add(pb.ITEM_VIEW, item=item, dwell=rng.randint(4_000, 80_000))
            if rng.random() < 0.22:
                add(pb.ADD_TO_CART, item=item)
                cart.append(item)
    if cart:
        add(pb.SCREEN_VIEW, screen="cart", dwell=rng.randint(5_000, 30_000))
        if rng.random() < 0.6:
            add(pb.SCREEN_VIEW, screen="checkout", dwell=rng.randint(10_000, 60_000))
            for item in cart:
                add(pb.PURCHASE, item=item)
    return events


# ------------------------------------------------------------------ plumbing
class Client:
    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=15)
        except grpc.FutureTimeoutError:
            raise SystemExit(f"demo: no gRPC server answers at {target}") from None
        self.sessions = pb_grpc.SessionServiceStub(self.channel)
        self.recs = pb_grpc.RecommendationServiceStub(self.channel)
        self.admin = pb_grpc.AdminServiceStub(self.channel)

    def track(self, events: list[pb.Event]) -> pb.TrackEventsResponse:
        resp = self.sessions.TrackEvents(
            pb.TrackEventsRequest(events=events), timeout=RPC_TIMEOUT_S
        )
        if resp.rejected:
            first = resp.rejected[0]
            raise SystemExit(f"demo: the server rejected event #{first.index}: {first.reason}")
        return resp

    def top(self, user_id: str, session_id: str = "", n: int = TOP_N) -> pb.RecommendResponse:
        return self.recs.Recommend(
            pb.RecommendRequest(user_id=user_id, session_id=session_id, n=n),
            timeout=RPC_TIMEOUT_S,
        )


@dataclass
class Backend:
    target: str
    db_url: str
    models_dir: str
    #: The in-process server's store (None with --target: training opens ``db_url``).
    store: Store | None


@contextlib.contextmanager
def backend(args: argparse.Namespace) -> Iterator[Backend]:
    if args.target:
        yield Backend(args.target, args.db, args.models, store=None)
        return
    from service.server import create_server
    from sessionrec.config import Config

    # The server logs through `logging`; its one expected warning ("starting without a
    # model") is shown by the demo itself via GetModelInfo, so only errors are printed.
    logging.basicConfig(level=logging.ERROR, format="    [server] %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="sessionrec-demo-") as tmp:
        config = Config.load(
            {
                "db_url": f"sqlite:///{tmp}/demo.db",
                "models_dir": f"{tmp}/models",
                "host": "127.0.0.1",
                "port": 0,
                # The demo reloads explicitly (AdminService.ReloadModel).
                "model_poll_interval_s": 0.0,
                # A throw-away store: survive process crashes, not power loss.
                "sqlite_synchronous": "NORMAL",
            },
            env={},
        )
        running, port = create_server(config)
        try:
            yield Backend(f"127.0.0.1:{port}", config.db_url, config.models_dir, running.store)
        finally:
            running.stop(grace=1.0)


def heading(step: int, title: str) -> None:
    print(f"\n[{step}/5] {title}\n{RULE}")


def short(session_id: str) -> str:
    return session_id if len(session_id) <= 14 else session_id[:12] + ".."


def print_top(resp: pb.RecommendResponse, catalog: dict[str, Item], indent: str = "    ") -> None:
    print(f"{indent}{'#':>2}  {'item':<12}{'what':<14}{'score':>7}  reason")
    shown = resp.items[:TOP_N]
    for rank, scored in enumerate(shown, 1):
        item = catalog.get(scored.item_id)
        name = item.name if item else "?"
        mark = "*" if item and item.category == NEW_INTEREST else " "
        print(
            f"{indent}{rank:>2}{mark} {scored.item_id:<12}{name:<14}{scored.score:7.3f}  "
            f"{scored.reason}"
        )
    mix = Counter(catalog[i.item_id].category if i.item_id in catalog else "?" for i in shown)
    bar = ", ".join(f"{cat} x{n}" for cat, n in mix.most_common())
    print(f"{indent}strategy={resp.strategy}  top {TOP_N}: {bar}")


def standing(resp: pb.RecommendResponse, catalog: dict[str, Item]) -> tuple[int, int, str]:
    """How the new interest ranks: items in the top 5, in the top 20, best rank."""
    ranks = [
        rank
        for rank, scored in enumerate(resp.items, 1)
        if scored.item_id in catalog and catalog[scored.item_id].category == NEW_INTEREST
    ]
    best = f"#{ranks[0]}" if ranks else f">{len(resp.items)}"
    return sum(r <= TOP_N for r in ranks), sum(r <= 20 for r in ranks), best


def duration(ms: int) -> str:
    seconds = ms / 1000
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------ the demo
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="HOST:PORT of a running server (default: in-process)")
    parser.add_argument(
        "--db", default="sqlite:///data/sessionrec.db", help="with --target: the server's store"
    )
    parser.add_argument("--models", default="models", help="with --target: its models directory")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows up under `make` too
    started = time.perf_counter()
    rng = random.Random(args.seed)
    now_ms = int(time.time() * 1000)

    print(RULE)
    print("sessionrec demo: app sessions in -> ALS model out -> live recommendations back")
    print(RULE)

    with backend(args) as be:
        heading(1, "A sessionrec server")
        client = Client(be.target)
        where = "started in this process" if be.store is not None else "connected to"
        print(f"    gRPC server {where} at {be.target}")
        print(f"    store {be.db_url}\n    models {be.models_dir}")
        info = client.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S)
        print(f"    GetModelInfo: {info.status}")

        # ----------------------------------------------------------- history
        heading(2, "Simulated shoppers replay two weeks of app sessions (gRPC only)")
        catalog = build_catalog(rng)
        shelves = popularity_weights(rng, catalog)
        shoppers = make_shoppers(rng)
        example = ", ".join(f"{i.item_id} ({i.name})" for i in list(catalog.values())[::61][:4])
        print(f"    catalog: {len(catalog)} items in {len(CATEGORIES)} categories, e.g. {example}")
        print(f"    shoppers: {len(shoppers)}, each fond of one or two categories")
        print("    each session: StartSession -> TrackEvents (screens, views, cart) -> EndSession")
        totals = Totals()
        item_counts: dict[str, Counter[str]] = {}
        sessions_of: Counter[str] = Counter()
        t0 = time.perf_counter()
        for n, shopper in enumerate(shoppers, 1):
            starts = sorted(
                now_ms - rng.randint(2 * 3600_000, HISTORY_DAYS * 86_400_000)
                for _ in range(rng.randint(2, 5))
            )
            counts = item_counts.setdefault(shopper.user_id, Counter())
            for k, start in enumerate(starts):
                sid = f"{shopper.user_id}-s{k + 1}"
                client.sessions.StartSession(
                    pb.StartSessionRequest(
                        user_id=shopper.user_id,
                        session_id=sid,
                        platform=rng.choice((pb.IOS, pb.ANDROID, pb.WEB)),
                        app_version="4.2.0",
                        started_at=ts(start),
                    ),
                    timeout=RPC_TIMEOUT_S,
                )
                events = simulate_session(rng, shopper, shelves, sid, start)
                resp = client.track(events)
                ended = client.sessions.EndSession(
                    pb.EndSessionRequest(session_id=sid), timeout=RPC_TIMEOUT_S
                )
                totals.sessions += 1
                totals.sent += len(events)
                totals.accepted += resp.accepted
                totals.duplicates += resp.duplicates
                totals.timeout_closed += ended.end_reason == pb.TIMEOUT
                sessions_of[shopper.user_id] += 1
                for e in events:
                    totals.by_type[pb.EventType.Name(e.type)] += 1
                    if e.item_id:
                        counts[catalog[e.item_id].category] += 1
            if n % 100 == 0:
                print(f"    ... {n} shoppers, {totals.sessions} sessions, {totals.sent:,} events")
        elapsed = time.perf_counter() - t0
        kinds = ", ".join(f"{k} {v:,}" for k, v in totals.by_type.most_common())
        print(
            f"    sent {totals.sent:,} events in {totals.sessions:,} sessions "
            f"({3 * totals.sessions:,} RPCs, {elapsed:.1f} s): {kinds}"
        )
        if totals.duplicates:
            print(f"    ({totals.duplicates:,} were already stored: TrackEvents is idempotent)")
        if totals.timeout_closed:
            print(
                f"    note: {totals.timeout_closed:,} replayed sessions lie hours to days in the"
                " past, beyond the 30-min\n    inactivity timeout, so the server closed them as"
                " TIMEOUT (their events are stored and counted all the same)"
            )

        # ----------------------------------------------------------- training
        heading(3, "Train ALS on the stored events, then AdminService.ReloadModel")
        books_fans = sorted(
            (s for s in shoppers if s.likes == [STORY_CATEGORY]),
            key=lambda s: (sum(item_counts[s.user_id].values()), s.user_id),
        )
        # The book lover (mostly books, at least two visits and ten item events) with
        # the shortest history: a few visits, so one new visit can visibly matter.
        hero = next(
            s.user_id
            for s in books_fans
            if sessions_of[s.user_id] >= 2
            and sum(item_counts[s.user_id].values()) >= HERO_MIN_EVENTS
            and item_counts[s.user_id][STORY_CATEGORY] >= 0.8 * sum(item_counts[s.user_id].values())
        )
        before = client.top(hero)
        picks = ", ".join(i.item_id for i in before.items[:3])
        when = "before any model" if not info.version else f"with model {info.version}"
        print(f"    {when}, Recommend({hero}) answers ({before.strategy}): {picks}, ...")

        def progress(message: str) -> None:
            print(f"    train: {message}")

        try:
            if be.store is not None:
                artifact = train(be.store, be.models_dir, "als", MODEL_PARAMS, progress=progress)
            else:
                with open_store(be.db_url) as store:
                    artifact = train(store, be.models_dir, "als", MODEL_PARAMS, progress=progress)
        except SessionrecError as exc:
            raise SystemExit(f"demo: training on {be.db_url} failed: {exc}") from exc
        info = client.admin.ReloadModel(pb.ReloadModelRequest(), timeout=RPC_TIMEOUT_S)
        if info.version != artifact.version:
            raise SystemExit(
                f"demo: the server loaded {info.version!r}, not the new {artifact.version!r}: "
                "is --models the directory that server reads?"
            )
        print(
            f"    ReloadModel: {info.status} ({info.users} users x {info.items} items, "
            f"{info.interactions:,} interactions)"
        )

        # ----------------------------------------------------------- the story
        heading(4, f"The story: {hero} loves {STORY_CATEGORY}, then discovers {NEW_INTEREST}")
        history = item_counts[hero]
        total = sum(history.values())
        shares = ", ".join(f"{c} {100 * n / total:.0f}%" for c, n in history.most_common())
        print(f"    history: {sessions_of[hero]} sessions, {total} item events ({shares})")
        if totals.duplicates:
            print(
                f"    (this store already held an earlier demo run: {hero} has seen shoes before)"
            )
        print(f"\n    Recommend({hero}, n={TOP_N}) before the new visit:")
        first = client.top(hero, n=DEPTH)
        print_top(first, catalog)
        steps = [("before", standing(first, catalog))]

        live_start = now_ms - 150_000  # the app opened 2.5 minutes ago
        live = client.sessions.StartSession(
            pb.StartSessionRequest(
                user_id=hero, platform=pb.IOS, app_version="4.2.0", started_at=ts(live_start)
            ),
            timeout=RPC_TIMEOUT_S,
        ).session_id
        print(
            f"\n    StartSession -> live session {short(live)} (iOS); {hero} opens {NEW_INTEREST}"
        )
        live_events = [
            pb.Event(session_id=live, type=pb.SCREEN_VIEW, screen="home", timestamp=ts(live_start)),
            pb.Event(
                session_id=live,
                type=pb.SCREEN_VIEW,
                screen=f"category/{NEW_INTEREST}",
                timestamp=ts(live_start + 6_000),
            ),
        ]
        client.track(live_events)
        shoe_items, shoe_weights = shelves[NEW_INTEREST]
        trending = sorted(zip(shoe_weights, shoe_items, strict=True), key=lambda p: -p[0])[:8]
        viewed = rng.sample([item for _, item in trending], 3)
        clock = live_start + 15_000
        for step, item in enumerate(viewed, 1):
            dwell = rng.randint(35_000, 60_000)
            batch = [
                pb.Event(
                    session_id=live, type=pb.SCREEN_VIEW, screen="product", timestamp=ts(clock)
                ),
                pb.Event(
                    session_id=live,
                    type=pb.ITEM_VIEW,
                    item_id=item.item_id,
                    dwell_ms=dwell,
                    timestamp=ts(clock + 500),
                ),
            ]
            client.track(batch)
            live_events += batch
            clock += dwell + 5_000
            ranked = client.top(hero, live, n=DEPTH)
            print(
                f"\n    view {step}/3: {item.item_id} ({item.name}, ${item.price:.2f}) for "
                f"{dwell // 1000} s -> Recommend({hero}, session={short(live)}):"
            )
            print_top(ranked, catalog)
            steps.append((f"view {step}", standing(ranked, catalog)))

        print(f"\n    how {NEW_INTEREST} climbs in {hero}'s recommendations:")
        print(f"      {'':<8}{'in top 5':>10}{'in top 20':>11}{'best rank':>11}")
        for label, (top5, top20, best) in steps:
            print(f"      {label:<8}{top5:>10}{top20:>11}{best:>11}")

        # ----------------------------------------------------------- summary
        heading(5, "Summary")
        got = client.sessions.GetSession(pb.GetSessionRequest(session_id=live), timeout=30)
        print(
            f"    GetSession({short(live)}): active={got.active}, events={got.event_count}, "
            f"duration {duration(got.duration_ms)} (first to last event), "
            f"dwell {duration(got.total_dwell_ms)}"
        )
        closed = client.sessions.EndSession(pb.EndSessionRequest(session_id=live), timeout=30)
        print(
            f"    EndSession -> {pb.EndReason.Name(closed.end_reason)}, "
            f"duration {duration(closed.duration_ms)}, dwell {duration(closed.total_dwell_ms)}"
        )
        print(
            f"    replayed {totals.sessions:,} sessions + 1 live, "
            f"{totals.sent + len(live_events):,} events "
            f"from {len(shoppers)} shoppers; model {info.version}"
        )
        print(f"    done in {time.perf_counter() - started:.1f} s")
        client.channel.close()
    print(RULE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
