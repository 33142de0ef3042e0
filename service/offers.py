"""The offers engine: which offers a user may see now, ranked, capped, measured.

``OfferEngine.get_offers``:

1. The holdout: a stable share of users (hash of the user id) gets no offers;
   the offers they would have got are logged as counterfactual exposures, so
   the report can compare treated and holdout users per offer.
2. Eligibility: validity window, segment (new/returning), minimum sessions,
   lapsed days, platform, items viewed in the live session or in the cart.
3. Limits: per-user and per-session impression caps, the redemption budget,
   single use (read from the offer log).
4. Ranking: ``priority`` first, then affinity x value x a tempered Thompson
   draw of the offer's redemption rate (Beta(1 + redemptions, 1 + impressions -
   redemptions) ** 0.25): new offers get a chance, losing ones fade. Affinity
   multiplies the model's best score among the target's items (the
   live-session blend when there is one) with the share of the live session
   spent on the target.
5. Combining: an offer that may not be combined is shown alone.
6. Impressions: the returned offers are recorded in one write transaction that
   checks the caps again, so concurrent calls never exceed them (``preview``
   leaves recording to the client's OFFER_IMPRESSION events, checked the same way).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.catalog import Catalog
from service.recommender import ModelHolder, live_session, requested_session
from service.sessions import GroupCommit
from service.validation import require_id
from sessionrec.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SessionrecError,
)
from sessionrec.events import EventRecord, EventType, ItemEvent
from sessionrec.offer_report import arm_stats, build_report
from sessionrec.offers import (
    HOLDOUT,
    IMPRESSION,
    REDEMPTION,
    TREATED,
    Offer,
    in_holdout,
    offer_from_dict,
)
from sessionrec.store import OfferCounts, OfferLogEntry, Store

MAX_OFFERS = 100
DAY_MS = 24 * 3600 * 1000
#: Affinity = (FLOOR + (1 - FLOOR) x the model's best score among the target's
#: items) x (FLOOR + (1 - FLOOR) x the share of the live session on the target);
#: a neutral 0.5 for what is unknown (no model, no session, whole catalog).
FLOOR = 0.25
#: The Thompson draw enters as draw ** TEMPER: the bandit still orders offers of
#: equal fit by their sampled rates, but a fresh offer's uniform draw cannot
#: overturn a strong affinity as often.
TEMPER = 0.25


@dataclass(frozen=True)
class RankedOffer:
    offer: Offer
    score: float
    reason: str


@dataclass(frozen=True)
class OffersResult:
    offers: list[RankedOffer]
    holdout: bool


@dataclass(frozen=True)
class OfferRejection:
    index: int
    error: SessionrecError


@dataclass(frozen=True)
class _Target:
    """An offer's target as ranking needs it, worked out once per offer and
    catalog view: the model's numbers of its items (int64; empty for the whole
    catalog or when the model knows none), what a live item must be or belong
    to, and how reasons name it."""

    numbers: np.ndarray
    items: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    label: str = ""


@dataclass
class _Context:
    """What eligibility and affinity need to know about the user right now."""

    now_ms: int  # when eligibility is judged: now, or get_offers' at_ms
    session_id: str | None
    platform: int
    live_items: list[str]  # item ids of the live session's events, in time order
    cart: set[str]
    sessions: int
    last_before_ms: int | None
    history: list[ItemEvent]
    live_since: int | None


#: ``Store.record_offer_log``'s signature: entries, the offers by id -> per entry
#: None (recorded) or why not (a cap or budget reached).
RecordLog = Callable[[Sequence[OfferLogEntry], Mapping[str, Offer]], list[str | None]]


class OfferEngine:
    def __init__(
        self,
        store: Store,
        models: ModelHolder,
        catalog: Catalog,
        *,
        holdout_share: float = 0.1,
        session_timeout_s: float = 1800.0,
        live_session_boost: float = 5.0,
        history_limit: int = 500,
        seed: int | None = None,
        record_log: RecordLog | None = None,
    ):
        self.store = store
        # Concurrent calls' impressions are committed together (one fsync).
        self._group: GroupCommit[OfferLogEntry, list[str | None]] = GroupCommit(
            lambda groups: self.store.record_offer_logs(groups, self.offers())
        )
        #: Records shown offers (caps checked): into the store, by group commit; in a
        #: worker process, by the primary (``service.workers.PrimaryOfferLog``).
        self.record_log: RecordLog = record_log or self._record_grouped
        self.models = models
        self.catalog = catalog
        self.holdout_share = holdout_share
        self.timeout_ms = int(session_timeout_s * 1000)
        self.live_boost = live_session_boost
        self.history_limit = history_limit
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._cache: tuple[int, dict[str, Offer]] = (-1, {})
        self._cache_lock = threading.Lock()
        #: Per catalog view (or snapshot, with no model): offer id -> (offer, target).
        self._targets: tuple[Any, dict[str, tuple[Offer, _Target]]] = (None, {})

    def _record_grouped(
        self, entries: Sequence[OfferLogEntry], offers: Mapping[str, Offer]
    ) -> list[str | None]:
        """``Store.record_offer_log`` in one transaction with the entries of
        concurrent calls, judged against the offer definitions current then."""
        return self._group.submit([entries])[0]

    # ------------------------------------------------------------ definitions
    def offers(self) -> dict[str, Offer]:
        version = self.store.offers_version()
        cached_version, offers = self._cache
        if version != cached_version:
            with self._cache_lock:
                offers = {o.offer_id: o for o in self.store.list_offers()}
                self._cache = (version, offers)
        return offers

    def upsert(self, raw: Sequence[Mapping[str, Any]]) -> tuple[int, int, list[OfferRejection]]:
        """Validates every offer (targets must name known items or categories);
        stores the valid ones, lists the others. No valid one: the first error."""
        if not raw:
            raise InvalidArgument("offers: must not be empty")
        if len(raw) > 1000:
            raise InvalidArgument(f"offers: at most 1000 per call, got {len(raw)}")
        valid: dict[str, Offer] = {}
        rejected: list[OfferRejection] = []
        for index, data in enumerate(raw):
            where = f"offers[{index}]"
            try:
                offer = offer_from_dict(data, where)
                self._check_target(offer, where)
                if offer.offer_id in valid:
                    raise InvalidArgument(f"{where}.offer_id: repeated in this request")
                valid[offer.offer_id] = offer
            except SessionrecError as exc:
                rejected.append(OfferRejection(index, exc))
        if not valid:
            raise rejected[0].error
        inserted, updated = self.store.upsert_offers(list(valid.values()))
        return inserted, updated, rejected

    def delete(self, offer_id: str) -> bool:
        require_id(offer_id, "offer_id")
        return self.store.delete_offer(offer_id)

    def _check_target(self, offer: Offer, where: str) -> None:
        snapshot = self.catalog.snapshot
        loaded = self.models.current
        model_items = loaded.artifact.items if loaded is not None else None
        for i, item in enumerate(offer.target.item_ids):
            if snapshot.get(item) is None and (model_items is None or item not in model_items):
                raise InvalidArgument(f"{where}.target.item_ids[{i}]: unknown item {item!r}")
        if offer.target.categories:
            known = {c for item in snapshot.items.values() for c in item.categories}
            for i, category in enumerate(offer.target.categories):
                if category not in known:
                    raise InvalidArgument(
                        f"{where}.target.categories[{i}]: unknown category {category!r}"
                    )

    # --------------------------------------------------------------- serving
    def get_offers(
        self,
        user_id: str,
        n: int,
        *,
        session_id: str = "",
        preview: bool = False,
        at_ms: int | None = None,
    ) -> OffersResult:
        """The best ``n`` offers for the user now. ``at_ms`` (a preview only)
        plans ahead: validity windows and lapsed-days eligibility are judged at
        that time (e.g. a push's send time) instead of now; the user's sessions,
        live session and the caps are what they are now."""
        require_id(user_id, "user_id")
        if not 1 <= n <= MAX_OFFERS:
            raise InvalidArgument(f"n: must be between 1 and {MAX_OFFERS}, got {n}")
        if at_ms is not None:
            if isinstance(at_ms, bool) or not isinstance(at_ms, int) or at_ms < 0:
                raise InvalidArgument(f"at_ms: must be epoch milliseconds >= 0, got {at_ms!r}")
            if not preview:
                raise InvalidArgument("at_ms: only with preview (nothing is shown at another time)")
        session = requested_session(self.store, user_id, session_id)
        ctx = self._context(user_id, session, at_ms)
        holdout = in_holdout(user_id, self.holdout_share)
        offers = self.offers()
        candidates = [o for o in offers.values() if o.valid_at(ctx.now_ms) and _eligible(o, ctx)]
        counts = self.store.offer_counts([o.offer_id for o in candidates], user_id, ctx.session_id)
        candidates = [
            o
            for o in candidates
            if _within_limits(o, counts[o.offer_id])
            and not (o.max_per_session and ctx.session_id is None)  # nothing to cap against
        ]
        ranked = self._rank(candidates, counts, ctx)
        chosen = _combine(ranked, n)
        if holdout:
            # What this user would have got: its first exposure starts the
            # holdout user's observation window (one row per user and offer).
            # A preview shows nothing, so it exposes nobody, holdout or not.
            if preview:
                return OffersResult([], holdout=True)
            self.record_log(
                [
                    OfferLogEntry(
                        _holdout_log_id(r.offer.offer_id, user_id),
                        r.offer.offer_id,
                        user_id,
                        ctx.session_id,
                        IMPRESSION,
                        ctx.now_ms,
                        HOLDOUT,
                    )
                    for r in chosen
                ],
                offers,
            )
            return OffersResult([], holdout=True)
        if not preview and chosen:
            outcome = self.record_log(
                [
                    OfferLogEntry(
                        f"served:{uuid.uuid4().hex}",
                        r.offer.offer_id,
                        user_id,
                        ctx.session_id,
                        IMPRESSION,
                        ctx.now_ms,
                        TREATED,
                    )
                    for r in chosen
                ],
                offers,
            )
            # A concurrent call took the last slot of a cap: that offer is not shown.
            chosen = [r for r, why in zip(chosen, outcome, strict=True) if why is None]
        return OffersResult(chosen, holdout=False)

    def _context(self, user_id: str, session: Any, at_ms: int | None = None) -> _Context:
        now = time.time_ns() // 1_000_000
        found, live_since = live_session(self.store, user_id, session, self.timeout_ms)
        if session is None and live_since is not None:
            session = found  # the user's open session is the live one
        history = self.store.user_item_events(user_id, self.history_limit)
        live_events = sorted(
            (e for e in history if live_since is not None and e.ts_ms >= live_since),
            key=lambda e: e.ts_ms,
        )
        cart: set[str] = set()
        for e in live_events:
            if e.type == EventType.ADD_TO_CART:
                cart.add(e.item_id)
            elif e.type == EventType.PURCHASE:
                cart.discard(e.item_id)
        started = session.started_at_ms if session is not None else now
        sessions, last_before = self.store.user_session_stats(user_id, started)
        return _Context(
            now_ms=now if at_ms is None else at_ms,
            session_id=session.session_id if session is not None else None,
            platform=int(session.platform) if session is not None else 0,
            live_items=[e.item_id for e in live_events],
            cart=cart,
            sessions=sessions,
            last_before_ms=last_before,
            history=history,
            live_since=live_since,
        )

    def _rank(
        self, offers: list[Offer], counts: Mapping[str, OfferCounts], ctx: _Context
    ) -> list[RankedOffer]:
        if not offers:
            return []
        loaded = self.models.current
        affinity = None
        members: dict[str, np.ndarray] = {}
        numbers: Mapping[str, int] = {}
        snapshot = self.catalog.snapshot
        source: Any = snapshot
        if loaded is not None:
            artifact = loaded.artifact
            affinity = artifact.affinity(
                ctx.history, live_since_ms=ctx.live_since, live_boost=self.live_boost
            )
            view = self.catalog.view(artifact.version, artifact.items.ids, artifact.popularity)
            members, numbers, source = view.members, view.number, view
        targets = [self._target(o, source, numbers, members) for o in offers]
        # The model's best score among each target's items, in one gather.
        model_parts = np.full(len(offers), 0.5)
        scored = [k for k, t in enumerate(targets) if len(t.numbers)]
        if affinity is not None and scored:
            lengths = np.array([len(targets[k].numbers) for k in scored])
            best = np.maximum.reduceat(
                affinity[np.concatenate([targets[k].numbers for k in scored])],
                np.cumsum(lengths) - lengths,
            )
            model_parts[scored] = best
        with self._rng_lock:
            draws = self._rng.beta(
                [1 + counts[o.offer_id].redemptions for o in offers],
                [
                    1 + max(counts[o.offer_id].impressions - counts[o.offer_id].redemptions, 0)
                    for o in offers
                ],
            ).tolist()
        ranked = []
        live = ctx.live_items
        for offer, target, model_part, draw in zip(
            offers, targets, model_parts.tolist(), draws, strict=True
        ):
            if offer.target.whole_catalog:
                model_part, on_target = 0.5, 0.5
                reason = "for everyone"
            else:
                if target.items:
                    hits = [i for i in live if i in target.items]
                else:
                    cats = target.categories
                    hits = [i for i in live if cats & set(snapshot.categories(i))]
                on_target = len(hits) / len(live) if live else 0.5
                if hits:
                    reason = f"you viewed {len(hits)} {target.label} this session"
                elif affinity is not None and model_part >= 0.5:
                    reason = f"matches {target.label} you like"
                else:
                    reason = f"offer on {target.label}"
            fit = (FLOOR + (1 - FLOOR) * model_part) * (FLOOR + (1 - FLOOR) * on_target)
            ranked.append(RankedOffer(offer, fit * offer.value * draw**TEMPER, reason))
        ranked.sort(key=lambda r: (-r.offer.priority, -r.score, r.offer.offer_id))
        return ranked

    def _target(
        self,
        offer: Offer,
        source: Any,
        numbers: Mapping[str, int],
        members: Mapping[str, np.ndarray],
    ) -> _Target:
        """``offer``'s ``_Target`` against ``numbers``/``members`` (those of the
        catalog view, or snapshot, ``source``), kept until either changes."""
        kept_source, kept = self._targets
        if kept_source is not source:
            kept = {}
            self._targets = (source, kept)
        found = kept.get(offer.offer_id)
        if found is not None and found[0] is offer:
            return found[1]
        t = offer.target
        if t.whole_catalog:
            target = _Target(np.zeros(0, dtype=np.int64))
        elif t.item_ids:
            known = [numbers[i] for i in t.item_ids if i in numbers]
            target = _Target(
                np.asarray(known, dtype=np.int64), items=frozenset(t.item_ids), label="items"
            )
        else:
            parts = [members[c] for c in t.categories if c in members]
            idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            target = _Target(idx, categories=frozenset(t.categories), label="/".join(t.categories))
        target.numbers.flags.writeable = False
        kept[offer.offer_id] = (offer, target)
        return target

    def report(self, confidence: float = 0.95) -> dict[str, Any]:
        """Per offer: impressions, redemptions and their rate, treated vs holdout
        conversion and revenue, uplift (``sessionrec.offer_report``)."""
        return offer_report(self.store, self.holdout_share, confidence)

    # ------------------------------------------------------ events and report
    def record_events(self, records: Sequence[EventRecord]) -> list[SessionrecError | None]:
        """OFFER_IMPRESSION / OFFER_REDEEMED events against their offers' limits
        (``SessionManager``'s offer recorder): None when counted, else the error
        (NOT_FOUND unknown offer, FAILED_PRECONDITION outside its validity window
        now, RESOURCE_EXHAUSTED over a cap or the budget)."""
        offers = self.offers()
        now = time.time_ns() // 1_000_000
        entries = []
        errors: list[SessionrecError | None] = []
        for r in records:
            offer_id = r.properties.get("offer_id", "")
            offer = offers.get(offer_id)
            kind = REDEMPTION if r.type == EventType.OFFER_REDEEMED else IMPRESSION
            if offer is None:
                errors.append(NotFound(f"offer_id: unknown offer {offer_id!r}"))
                continue
            # Validity is judged when the event arrives: a back-dated timestamp
            # cannot redeem an offer that has expired.
            if not offer.valid_at(now):
                errors.append(FailedPrecondition(f"offer_id: {offer_id!r} is not valid now"))
                continue
            arm = HOLDOUT if in_holdout(r.user_id, self.holdout_share) else TREATED
            entries.append(
                OfferLogEntry(r.event_id, offer_id, r.user_id, r.session_id, kind, r.ts_ms, arm)
            )
            errors.append(None)
        recorded = iter(self.store.record_offer_log(entries, offers))
        out: list[SessionrecError | None] = []
        for error in errors:
            if error is None:
                why = next(recorded)
                error = ResourceExhausted(why) if why is not None else None
            out.append(error)
        return out


def _holdout_log_id(offer_id: str, user_id: str) -> str:
    """One counterfactual exposure per (offer, user); hashed so that no pair of
    ids (nor a client's event id) can collide with another pair."""
    digest = hashlib.sha256(f"{offer_id}\0{user_id}".encode()).hexdigest()
    return f"holdout:{digest}"


def offer_report(store: Store, holdout_share: float, confidence: float = 0.95) -> dict[str, Any]:
    titles = {o.offer_id: o.title for o in store.list_offers()}
    stats = arm_stats(store.offer_outcomes(), titles)
    return build_report(stats, holdout_share=holdout_share, confidence=confidence)


def _eligible(offer: Offer, ctx: _Context) -> bool:
    e = offer.eligibility
    returning = ctx.last_before_ms is not None
    if e.segment == "NEW_USER" and returning:
        return False
    if e.segment == "RETURNING_USER" and not returning:
        return False
    if e.min_sessions and ctx.sessions < e.min_sessions:
        return False
    if e.lapsed_days and (
        ctx.last_before_ms is None or ctx.now_ms - ctx.last_before_ms < e.lapsed_days * DAY_MS
    ):
        return False
    if e.platforms and ctx.platform not in e.platforms:
        return False
    if e.session_items and not set(e.session_items) & set(ctx.live_items):
        return False
    return not (e.cart_items and not set(e.cart_items) & ctx.cart)


def _within_limits(offer: Offer, c: OfferCounts) -> bool:
    if offer.budget and c.redemptions >= offer.budget:
        return False
    if offer.single_use and c.user_redemptions:
        return False
    if offer.max_per_user and c.user_impressions >= offer.max_per_user:
        return False
    return not (offer.max_per_session and c.session_impressions >= offer.max_per_session)


def _combine(ranked: list[RankedOffer], n: int) -> list[RankedOffer]:
    """Best first; an offer that may not be combined is shown alone."""
    chosen: list[RankedOffer] = []
    for r in ranked:
        if len(chosen) >= n:
            break
        if not chosen:
            chosen.append(r)
            if not r.offer.combinable:
                break
        elif r.offer.combinable:
            chosen.append(r)
    return chosen
