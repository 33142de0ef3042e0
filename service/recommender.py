"""Online recommendations: the current model artifact plus live events.

``ModelHolder`` owns the model in use. Swapping is one reference assignment:
a request keeps the artifact it started with, so a reload never fails an
in-flight call. A poll thread picks up a new ``CURRENT`` version written by
``sessionrec train``; a corrupted artifact is refused and the last good model
keeps serving.

The service reaches ``training`` only through ``training.artifact``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

from service.periodic import PeriodicTask
from service.validation import check_id, check_n, require_id
from sessionrec.errors import ArtifactError, FailedPrecondition, InvalidArgument, NotFound
from sessionrec.events import SessionRecord
from sessionrec.store import Store
from training.artifact import ModelArtifact, current_version, load_artifact

log = logging.getLogger("sessionrec.models")

POPULARITY_TTL_S = 60.0
POPULARITY_WINDOW_MS = 30 * 24 * 3600 * 1000
POPULARITY_SIZE = 2000


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
    def __init__(self, models_dir: str):
        self.models_dir = models_dir
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()  # serialises loads, not reads
        self._poller: PeriodicTask | None = None
        self._refused: str | None = None
        #: A version asked for by name (a rollback): the poller leaves it alone
        #: until ``reload()`` without a version follows CURRENT again.
        self.pinned: str | None = None
        self.last_error: str | None = None

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
                artifact = load_artifact(self.models_dir, target)
            except ArtifactError as exc:
                self._refused = target
                self.last_error = str(exc)
                log.error("refused model %s, keeping the current one: %s", target, exc)
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


class RecommendationEngine:
    def __init__(
        self,
        store: Store,
        models: ModelHolder,
        *,
        history_limit: int = 500,
        session_timeout_s: float = 1800.0,
        live_session_boost: float = 5.0,
    ):
        self.store = store
        self.models = models
        self.history_limit = history_limit
        self.timeout_ms = int(session_timeout_s * 1000)
        self.live_session_boost = live_session_boost
        self._popular: tuple[float, list[tuple[str, float]]] = (0.0, [])
        self._popular_lock = threading.Lock()

    def recommend(
        self, user_id: str, n: int, *, session_id: str = "", include_seen: bool = False
    ) -> Scored:
        require_id(user_id, "user_id")
        check_n(n)
        session: SessionRecord | None = None
        if session_id:
            check_id(session_id, "session_id")
            session = self.store.get_session(session_id)
            if session is None:
                raise NotFound(f"session_id: unknown session {session_id!r}")
            if session.user_id != user_id:
                raise InvalidArgument(f"session_id: {session_id!r} belongs to another user")
        # The user's history holds every stored event, the live session included.
        history = self.store.user_item_events(user_id, self.history_limit)
        # The fold-in reads the most recent events only; exclusion covers them all.
        truncated = len(history) >= self.history_limit
        older_items = self.store.user_items(user_id) if truncated and not include_seen else set()
        loaded = self.models.current
        if loaded is None:
            seen = set() if include_seen else older_items | {e.item_id for e in history}
            return self._store_popular(n, seen)
        if session is None:
            session = self.store.find_open_session(user_id)
        live = (
            session is not None
            and session.is_open
            and session.last_seen_ms >= time.time_ns() // 1_000_000 - self.timeout_ms
        )
        rec = loaded.artifact.recommend(
            history,
            n,
            include_seen=include_seen,
            exclude=sorted(older_items),
            live_since_ms=session.started_at_ms if live and session is not None else None,
            live_boost=self.live_session_boost,
        )
        return Scored(rec.item_ids, rec.scores, rec.reasons, rec.strategy, loaded.artifact.version)

    def similar_items(self, item_id: str, n: int) -> Scored:
        require_id(item_id, "item_id")
        check_n(n)
        loaded = self.models.current
        if loaded is None:
            raise FailedPrecondition("model: no model loaded (run sessionrec train)")
        ids, scores = loaded.artifact.similar_items(item_id, n)
        reasons = [f"similar to {item_id}"] * len(ids)
        return Scored(ids, scores, reasons, "similar", loaded.artifact.version)

    def _store_popular(self, n: int, seen: set[str]) -> Scored:
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
                    self._popular = (time.monotonic() if ranking else 0.0, ranking)
        picked = [(i, s) for i, s in ranking if i not in seen][:n]
        return Scored(
            [i for i, _ in picked],
            [s for _, s in picked],
            [f"popular: {int(s)} users" for _, s in picked],
            "popular",
            "",
        )
