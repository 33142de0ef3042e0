"""Online recommendations: the current model artifact plus live events.

``ModelHolder`` owns the model in use. Swapping is one reference assignment:
a request keeps the artifact it started with, so a reload never fails an
in-flight call. A poll thread picks up a new ``CURRENT`` version written by
``sessionrec train``; a corrupted artifact is refused and the last good model
keeps serving.

``RecommendationEngine`` ranks with the model (or the store's popularity when
no model is loaded), restricted by the catalog: unavailable items never, a
request's filter through a boolean mask over the model's items, then a small
share of the slots for new items the model cannot score yet, then the
request's diversity options (``service.catalog``).

The service reaches ``training`` only through ``training.artifact``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.catalog import (
    NO_DIVERSITY,
    NO_FILTER,
    Catalog,
    Diversity,
    Entry,
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
from service.periodic import PeriodicTask
from service.validation import check_id, check_n, require_id
from sessionrec.arrays import distinct
from sessionrec.errors import ArtifactError, FailedPrecondition, InvalidArgument, NotFound
from sessionrec.events import SessionRecord
from sessionrec.items import ItemRecord
from sessionrec.store import Store
from training.artifact import (
    PREPARED_CACHE_BYTES,
    ModelArtifact,
    current_version,
    load_artifact,
)

log = logging.getLogger("sessionrec.models")

POPULARITY_TTL_S = 60.0
POPULARITY_WINDOW_MS = 30 * 24 * 3600 * 1000
POPULARITY_SIZE = 2000
#: Candidates ranked for diversity re-ranking: at least twice n, or n + this.
DIVERSITY_EXTRA = 50
#: How much the seed item's categories outweigh the neighbours' when choosing
#: new items for SimilarItems.
SEED_WEIGHT = 5.0


@dataclass(frozen=True)
class LoadedModel:
    artifact: ModelArtifact
    loaded_at: dt.datetime


@dataclass
class Scored:
    item_ids: list[str]
    scores: list[float]
    reasons: list[str]
    strategy: str
    model_version: str


class ModelHolder:
    def __init__(self, models_dir: str, *, history_cache_bytes: int = PREPARED_CACHE_BYTES):
        self.models_dir = models_dir
        #: What each loaded artifact may keep of the histories it served.
        self.history_cache_bytes = history_cache_bytes
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()  # serialises loads, not reads
        self._poller: PeriodicTask | None = None
        self._refused: str | None = None
        #: A version asked for by name (a rollback): the poller leaves it alone
        #: until ``reload()`` without a version follows CURRENT again.
        self.pinned: str | None = None
        #: Why the newest artifact asked for could not be loaded (None: it was):
        #: the model is degraded (an older one, or none, keeps serving).
        self.last_error: str | None = None
        self._listeners: list[Callable[[str | None], None]] = []

    def add_listener(self, listener: Callable[[str | None], None]) -> None:
        """``listener(last_error)`` is called after every load attempt."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.last_error)

    @property
    def current(self) -> LoadedModel | None:
        return self._loaded

    def load_initial(self) -> None:
        """Loads the current version if there is one; a bad one is logged, not fatal."""
        try:
            self.reload()
        except (FailedPrecondition, ArtifactError, NotFound) as exc:
            log.warning("starting without a model (popularity only): %s", exc)

    def reload(self, version: str = "") -> LoadedModel:
        with self._lock:
            target = version or current_version(self.models_dir)
            if target is None:
                raise FailedPrecondition(
                    f"models_dir: no model version in {self.models_dir!r} (run sessionrec train)"
                )
            if version:
                check_id(version, "version")
            try:
                artifact = load_artifact(
                    self.models_dir, target, prepared_cache_bytes=self.history_cache_bytes
                )
            except OSError as exc:  # e.g. a name the file system cannot hold
                raise NotFound(f"version: no model version {target!r} ({exc.strerror})") from None
            except ArtifactError as exc:
                self._refused = target
                self.last_error = str(exc)
                log.error("refused model %s, keeping the current one: %s", target, exc)
                self._notify()
                raise
            loaded = LoadedModel(artifact, dt.datetime.now(dt.UTC))
            self._loaded = loaded
            self.pinned = version or None
            self._refused = None
            self.last_error = None
            log.info(
                "serving model %s (%s, %d users, %d items)",
                artifact.version,
                artifact.algorithm,
                len(artifact.users),
                len(artifact.items),
            )
            self._notify()
            return loaded

    def start_polling(self, interval_s: float) -> None:
        if interval_s <= 0 or self._poller is not None:
            return
        self._poller = PeriodicTask("model-poller", interval_s, self.poll_once)
        self._poller.start()

    def poll_once(self) -> None:
        """Loads CURRENT if it names a new version (unless a rollback pinned one)."""
        if self.pinned:
            return
        latest = current_version(self.models_dir)
        loaded = self._loaded.artifact.version if self._loaded else None
        if latest and latest != loaded and latest != self._refused:
            # A refused artifact is logged by reload(); the last good model keeps serving.
            with contextlib.suppress(ArtifactError, FailedPrecondition, NotFound):
                self.reload(latest)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None


def requested_session(store: Store, user_id: str, session_id: str) -> SessionRecord | None:
    """The session a request names (checked to be the user's), or None."""
    if not session_id:
        return None
    check_id(session_id, "session_id")
    session = store.get_session(session_id)
    if session is None:
        raise NotFound(f"session_id: unknown session {session_id!r}")
    if session.user_id != user_id:
        raise InvalidArgument(f"session_id: {session_id!r} belongs to another user")
    return session


def live_session(
    store: Store, user_id: str, session: SessionRecord | None, timeout_ms: int
) -> tuple[SessionRecord | None, int | None]:
    """The session a request is about (the named one, else the user's open one)
    and its start when it is still open and active within the timeout (else None)."""
    if session is None:
        session = store.find_open_session(user_id)
    live = (
        session is not None
        and session.is_open
        and session.last_seen_ms >= time.time_ns() // 1_000_000 - timeout_ms
    )
    return session, session.started_at_ms if live and session is not None else None


class RecommendationEngine:
    def __init__(
        self,
        store: Store,
        models: ModelHolder,
        *,
        catalog: Catalog | None = None,
        history_limit: int = 500,
        session_timeout_s: float = 1800.0,
        live_session_boost: float = 5.0,
        cold_item_share: float = 0.1,
    ):
        self.store = store
        self.models = models
        self.catalog = catalog if catalog is not None else Catalog(store)
        self.history_limit = history_limit
        self.timeout_ms = int(session_timeout_s * 1000)
        self.live_session_boost = live_session_boost
        self.cold_item_share = cold_item_share
        self._popular: tuple[float, list[tuple[str, float]]] = (0.0, [])
        self._popular_lock = threading.Lock()

    def recommend(
        self,
        user_id: str,
        n: int,
        *,
        session_id: str = "",
        include_seen: bool = False,
        item_filter: ItemFilter = NO_FILTER,
        diversity: Diversity = NO_DIVERSITY,
    ) -> Scored:
        require_id(user_id, "user_id")
        check_n(n)
        item_filter = check_filter(item_filter)
        diversity = check_diversity(diversity)
        session = requested_session(self.store, user_id, session_id)
        # The user's history holds every stored event, the live session included.
        history = self.store.user_item_events(user_id, self.history_limit)
        history_ids = [e.item_id for e in history]
        # The fold-in reads the most recent events only; exclusion covers them all.
        truncated = len(history) >= self.history_limit
        older_items = self.store.user_items(user_id) if truncated and not include_seen else set()
        seen = set() if include_seen else older_items | set(history_ids)
        loaded = self.models.current
        if loaded is None:
            return self._store_popular(n, seen, item_filter, diversity, history_ids)
        _, live_since = live_session(self.store, user_id, session, self.timeout_ms)
        artifact = loaded.artifact
        view = self.catalog.view(artifact.version, artifact.items.ids, artifact.popularity)
        rec = artifact.recommend(
            history,
            self._candidates(n, diversity, len(artifact.items)),
            include_seen=include_seen,
            exclude=sorted(older_items) + list(item_filter.exclude_item_ids),
            live_since_ms=live_since,
            live_boost=self.live_session_boost,
            allowed=view.mask(item_filter, with_excluded_ids=False),
        )
        ranked = zip(rec.item_ids, rec.scores, rec.reasons, strict=True)
        warm = [Entry(i, s, why) for i, s, why in ranked]
        return self._finish(
            view, warm, n, item_filter, diversity, rec.strategy, artifact.version, seen, history_ids
        )

    def similar_items(
        self,
        item_id: str,
        n: int,
        *,
        item_filter: ItemFilter = NO_FILTER,
        diversity: Diversity = NO_DIVERSITY,
    ) -> Scored:
        require_id(item_id, "item_id")
        check_n(n)
        item_filter = check_filter(item_filter)
        diversity = check_diversity(diversity)
        loaded = self.models.current
        if loaded is None:
            raise FailedPrecondition("model: no model loaded (run sessionrec train)")
        artifact = loaded.artifact
        view = self.catalog.view(artifact.version, artifact.items.ids, artifact.popularity)
        m = self._candidates(n, diversity, len(artifact.items))
        mask = view.mask(item_filter)
        if item_id in artifact.items:
            ids, scores, why = artifact.similar_items_explained(item_id, m, allowed=mask)
            warm = [Entry(*entry) for entry in zip(ids, scores, why, strict=True)]
        else:
            seed = view.snapshot.get(item_id)
            if seed is None:
                raise NotFound(
                    f"item_id: {item_id!r} is in neither model {artifact.version} nor the catalog"
                )
            warm = self._content_similar(view, seed, mask, m)
        return self._finish(
            view,
            warm,
            n,
            item_filter,
            diversity,
            "similar",
            artifact.version,
            {item_id},
            [item_id],
            SEED_WEIGHT,
        )

    @staticmethod
    def _candidates(n: int, diversity: Diversity, available: int) -> int:
        """How many ranked items to ask for: n, or more for diversity to choose from."""
        if not diversity.active:
            return n
        return max(n, min(available, max(2 * n, n + DIVERSITY_EXTRA)))

    def _finish(
        self,
        view: RankerView,
        warm: list[Entry],
        n: int,
        item_filter: ItemFilter,
        diversity: Diversity,
        strategy: str,
        version: str,
        seen: set[str],
        liked: list[str],
        liked_weight: float = 1.0,
    ) -> Scored:
        """Diversity re-ranking, the new-item share, the category cap. ``liked``:
        the items whose categories and attributes new items are chosen by (with
        the ranked items shown)."""
        snapshot = view.snapshot
        categories = snapshot.categories
        if diversity.mmr_lambda is not None:
            warm = mmr(warm, diversity.mmr_lambda, categories, limit=n)
        k = cold_slots(n, self.cold_item_share) if view.cold else 0
        cold: list[Entry] = []
        if k:
            # Every slot the ranked items cannot fill, and spares for the cap.
            want = n - min(n - k, len(warm))
            if diversity.max_per_category:
                want = min(n, 2 * want + diversity.max_per_category)
            taste = Profile()
            taste.add(snapshot, liked, liked_weight)
            taste.add(snapshot, (e.item_id for e in warm[:n]))
            picks = pick_cold(
                view, want, item_filter, skip=seen | {e.item_id for e in warm}, liked=taste
            )
            cold = [Entry(p.item.item_id, 0.0, p.reason) for p in picks]
        final = assemble(warm, cold, n, k, diversity.max_per_category, categories)
        new_ids = {e.item_id for e in cold}
        if final and all(e.item_id in new_ids for e in final):
            strategy = "new"  # nothing ranked passed the filter
        return Scored(
            [e.item_id for e in final],
            [e.score for e in final],
            [e.reason for e in final],
            strategy,
            version,
        )

    @staticmethod
    def _content_similar(
        view: RankerView, seed: ItemRecord, mask: np.ndarray | None, m: int
    ) -> list[Entry]:
        """Items a model cannot relate to ``seed`` (a new item): those sharing its
        categories (Jaccard), then its attributes, then the most popular."""
        seed_categories = set(seed.categories)
        groups = [view.members[c] for c in sorted(seed_categories) if c in view.members]
        if not groups:
            return []
        candidates = distinct(np.concatenate(groups))
        if mask is not None:
            candidates = candidates[mask[candidates]]
        top = float(view.popularity.max()) if view.n else 0.0
        scored: list[tuple[float, int, str]] = []
        for k in candidates.tolist():
            item = view.snapshot.items[view.ids[k]]
            shared = seed_categories & set(item.categories)
            jaccard = len(shared) / len(seed_categories | set(item.categories))
            matches = sum(1 for key, v in item.attributes.items() if seed.attributes.get(key) == v)
            score = jaccard + 0.1 * matches / max(1, len(seed.attributes))
            if top > 0:  # ties by popularity
                score += 1e-6 * float(view.popularity[k]) / top
            scored.append((score, k, min(shared)))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [
            Entry(view.ids[k], round(score, 6), f"also in {category}, like {seed.item_id}")
            for score, k, category in scored[:m]
        ]

    def _store_popular(
        self,
        n: int,
        seen: set[str],
        item_filter: ItemFilter,
        diversity: Diversity,
        history_ids: list[str],
    ) -> Scored:
        """Popularity straight from the store (no model yet), cached for a minute."""
        stamp, ranking = self._popular
        if time.monotonic() - stamp > POPULARITY_TTL_S:
            with self._popular_lock:
                stamp, ranking = self._popular
                if time.monotonic() - stamp > POPULARITY_TTL_S:
                    since = time.time_ns() // 1_000_000 - POPULARITY_WINDOW_MS
                    ranking = self.store.item_popularity(since, POPULARITY_SIZE)
                    if not ranking:  # nothing recent: all time
                        ranking = self.store.item_popularity(0, POPULARITY_SIZE)
                    # An empty store is asked again next time, not cached for a minute.
                    stamp = time.monotonic() if ranking else 0.0
                    self._popular = (stamp, ranking)
        view = self.catalog.view(
            f"store-popularity@{stamp}",
            [i for i, _ in ranking],
            np.asarray([s for _, s in ranking], dtype=np.float64),
        )
        snapshot = view.snapshot
        m = self._candidates(n, diversity, len(ranking))
        warm: list[Entry] = []
        for i, s in ranking:
            if i not in seen and item_filter.allows(snapshot.get(i), i):
                warm.append(Entry(i, s, f"popular: {int(s)} users"))
                if len(warm) >= m:
                    break
        return self._finish(view, warm, n, item_filter, diversity, "popular", "", seen, history_ids)
