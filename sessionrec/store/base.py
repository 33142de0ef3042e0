"""The storage interface. Callers depend on this, never on a backend.

A backend is chosen by URL in :func:`sessionrec.store.open_store`; SQLite is
the embedded default, PostgreSQL can be added behind the same interface.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sessionrec.events import AppendResult, EndReason, EventRecord, ItemEvent, SessionRecord
from sessionrec.items import ItemRecord, ItemUpsertResult
from sessionrec.offers import Offer


@dataclass(frozen=True)
class OfferCounts:
    impressions: int = 0
    redemptions: int = 0
    user_impressions: int = 0
    user_redemptions: int = 0
    session_impressions: int = 0


@dataclass(frozen=True)
class OfferLogEntry:
    #: Idempotency key (the event id of an offer event, or a fresh id).
    log_id: str
    offer_id: str
    user_id: str
    session_id: str | None
    kind: int  # sessionrec.offers.IMPRESSION or REDEMPTION
    ts_ms: int
    arm: int = 0  # sessionrec.offers.TREATED or HOLDOUT


@dataclass(frozen=True)
class OfferOutcome:
    offer_id: str
    arm: int
    impressions: int
    redemptions: int
    users: int
    converted: int
    revenue: float


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored: never its secret, only ``secret_hash`` (hex SHA-256)."""

    key_id: str
    name: str
    role: str
    secret_hash: str
    created_at_ms: int
    revoked_at_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at_ms is None


@dataclass(frozen=True)
class QuarantinedEvent:
    """A rejected event kept for inspection: why, and what was sent (as JSON,
    long strings cut and values that look like personal data removed)."""

    user_id: str | None
    session_id: str | None
    event_id: str | None
    #: The error class, e.g. ``InvalidArgument``.
    error: str
    #: The message the client got (it starts with the field).
    reason: str
    event: str
    received_at_ms: int = 0


@dataclass(frozen=True)
class EventColumns:
    """Item events as parallel numpy arrays (the training input).

    ``dwell_ms`` is -1 where unknown. Rows are ordered by (ts_ms, seq).
    ``session_id`` may be None when the source has no sessions.
    """

    user_id: np.ndarray  # object (str)
    item_id: np.ndarray  # object (str)
    type: np.ndarray  # int8
    dwell_ms: np.ndarray  # int64
    ts_ms: np.ndarray  # int64
    session_id: np.ndarray | None = None  # object (str)

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, mask_or_index: np.ndarray) -> EventColumns:
        return EventColumns(
            self.user_id[mask_or_index],
            self.item_id[mask_or_index],
            self.type[mask_or_index],
            self.dwell_ms[mask_or_index],
            self.ts_ms[mask_or_index],
            None if self.session_id is None else self.session_id[mask_or_index],
        )


class SQLCursor(Protocol):
    """What :meth:`SQLReader.execute` returns (a DB-API cursor, as far as readers go)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SQLReader(Protocol):
    """A read-only view of a SQL store in one snapshot (:meth:`Store.read_snapshot`).

    SQL is written once for every backend: ``?`` placeholders and the subset of
    SQL that SQLite and PostgreSQL share (``COUNT(*) FILTER (WHERE ...)``, not
    ``SUM(x = 1)``; ``CASE``, not two-argument ``MIN``)."""

    #: ``"sqlite"`` or ``"postgresql"``, for the rare query that must differ.
    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> SQLCursor: ...


class Store(abc.ABC):
    """Events, sessions and the item catalog. All writes are durable when the call returns."""

    url: str

    @abc.abstractmethod
    def read_snapshot(self) -> contextlib.AbstractContextManager[SQLReader]:
        """A read-only transaction: every query through it sees the same committed
        state (for reports and exports that read several tables)."""

    # ---- sessions
    @abc.abstractmethod
    def start_session(self, session: SessionRecord) -> SessionRecord:
        """Inserts the session; if the id exists, returns the stored one unchanged."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    def get_sessions(self, session_ids: Iterable[str]) -> dict[str, SessionRecord]: ...

    @abc.abstractmethod
    def find_open_session(self, user_id: str) -> SessionRecord | None:
        """The user's most recent session that has not ended (it may be past its timeout)."""

    @abc.abstractmethod
    def end_session(
        self, session_id: str, ended_at_ms: int, reason: EndReason, *, derive_last_dwell: bool
    ) -> SessionRecord | None:
        """Closes an open session (no-op if already closed) and derives missing dwell times.

        ``derive_last_dwell``: the last view's dwell runs until ``ended_at_ms``
        (an explicit close); otherwise it stays unknown.
        """

    @abc.abstractmethod
    def expire_sessions(self, idle_before_ms: int) -> list[str]:
        """Closes open sessions that received nothing since ``idle_before_ms``
        (by ``last_seen_ms``): TIMEOUT, ended at their last event."""

    # ---- events
    @abc.abstractmethod
    def append_events(
        self,
        events: Sequence[EventRecord],
        new_sessions: Sequence[SessionRecord] = (),
        *,
        received_ms: int | None = None,
        close_sessions: Sequence[str] = (),
        quarantine: Sequence[QuarantinedEvent] = (),
    ) -> AppendResult:
        """Stores events (and sessions opened implicitly) in one transaction.

        Idempotent on ``event_id``: an id already stored (or repeated in the
        batch) counts as a duplicate and changes nothing. Session counters and
        last-activity times follow the newly stored events (``last_seen_ms``
        becomes ``received_ms``, default now); a session in ``new_sessions`` is
        stored only if at least one of its events is. ``close_sessions`` are
        then closed (TIMEOUT at their last event, dwell derived) in the same
        transaction: sessions a later one superseded. ``quarantine``: the
        batch's rejected events, kept in the same transaction.
        """

    @abc.abstractmethod
    def user_item_events(self, user_id: str, limit: int) -> list[ItemEvent]:
        """The user's most recent events that name an item, newest first."""

    @abc.abstractmethod
    def session_item_events(self, session_id: str, limit: int) -> list[ItemEvent]:
        """The session's most recent events that name an item, newest first."""

    @abc.abstractmethod
    def user_items(self, user_id: str) -> set[str]:
        """Every item the user has an event for."""

    @abc.abstractmethod
    def item_events(self, *, with_sessions: bool = False) -> EventColumns:
        """Every event that names an item, ordered by time (for training);
        ``with_sessions`` adds their session ids (for the last-session split)."""

    @abc.abstractmethod
    def item_popularity(self, since_ms: int, limit: int) -> list[tuple[str, float]]:
        """Items by number of distinct users since ``since_ms``, most popular first."""

    # ---- catalog
    @abc.abstractmethod
    def upsert_items(
        self, items: Sequence[ItemRecord], *, now_ms: int | None = None
    ) -> ItemUpsertResult:
        """Inserts or replaces items in one transaction, in order (a repeated id
        is compared with the one before it).

        Idempotent: an item identical to the stored one changes nothing
        (``unchanged``). ``created_at_ms`` None keeps the stored creation time,
        or is ``now_ms`` (default now) for a new item. Every changed item gets
        the catalog's next change counter (one per call that changes anything).
        """

    @abc.abstractmethod
    def get_item(self, item_id: str) -> ItemRecord | None: ...

    @abc.abstractmethod
    def catalog_items(self, since_version: int = 0) -> list[ItemRecord]:
        """Items changed after change counter ``since_version`` (0: the whole
        catalog), in change order. Items are never deleted (they become
        unavailable), so applying these to an older copy brings it up to date."""

    @abc.abstractmethod
    def catalog_version(self) -> int:
        """The catalog's change counter: 0 for an empty catalog, raised by every
        upsert that changes something."""

    @abc.abstractmethod
    def user_session_stats(self, user_id: str, before_ms: int) -> tuple[int, int | None]:
        """The user's number of sessions, and the last event time of their sessions
        that started before ``before_ms`` (None: no such session)."""

    # ------------------------------------------------------------- offers
    @abc.abstractmethod
    def upsert_offers(self, offers: Sequence[Offer]) -> tuple[int, int]:
        """Inserts or replaces offers in one transaction: (inserted, updated)."""

    @abc.abstractmethod
    def delete_offer(self, offer_id: str) -> bool:
        """Removes an offer (its log stays); False when there was none."""

    @abc.abstractmethod
    def list_offers(self) -> list[Offer]: ...

    @abc.abstractmethod
    def offers_version(self) -> int:
        """Raised by every offer change (for caches)."""

    @abc.abstractmethod
    def offer_counts(
        self, offer_ids: Sequence[str], user_id: str, session_id: str | None
    ) -> dict[str, OfferCounts]:
        """Impressions and redemptions of each offer: in total, of the user, and
        in the session."""

    def record_offer_log(
        self, entries: Sequence[OfferLogEntry], offers: Mapping[str, Offer]
    ) -> list[str | None]:
        """Records impressions/redemptions atomically with the limits of their
        offer (``offers``): per user and per session impression caps, the total
        redemption budget, single use. Returns, per entry, None when recorded
        (or already recorded under its log id) or the reason it was refused.
        Holdout entries are counterfactual exposures: recorded, never capped."""
        return self.record_offer_logs([entries], offers)[0]

    @abc.abstractmethod
    def record_offer_logs(
        self, groups: Sequence[Sequence[OfferLogEntry]], offers: Mapping[str, Offer]
    ) -> list[list[str | None]]:
        """``record_offer_log`` of several callers' entries in one transaction (one
        commit), each group judged after the ones before it; results per group."""

    @abc.abstractmethod
    def offer_outcomes(self) -> list[OfferOutcome]:
        """Per offer and arm: impressions, redemptions, exposed users, and those
        users' purchases after their first exposure (for the uplift report)."""

    # ------------------------------------------------------------ privacy
    @abc.abstractmethod
    def delete_user(self, user_id: str) -> dict[str, int]:
        """Erases every row about the user (events, sessions, quarantined events,
        offer log, push log) in one transaction; rows removed per table."""

    @abc.abstractmethod
    def purge_before(
        self, before_ms: int, *, batch: int = 1000, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Retention: removes ended sessions whose last event or end is before
        ``before_ms`` with their events (``batch`` sessions per transaction,
        ``progress(sessions so far)`` after each), and quarantined events, offer
        log and push log entries older than that. Open sessions stay. Rows
        removed per table."""

    @abc.abstractmethod
    def quarantine_events(self, entries: Sequence[QuarantinedEvent]) -> int:
        """Keeps rejected events with their reason (once per event id and reason);
        how many rows are new."""

    @abc.abstractmethod
    def quarantined(self, limit: int = 100) -> list[QuarantinedEvent]:
        """The most recently quarantined events, newest first."""

    # ---------------------------------------------------------- analytics
    @abc.abstractmethod
    def cache_analytics_days(self, days: Sequence[tuple[int, int, bytes]]) -> int:
        """Stores analytics columns built for ``(day, stamp, data)``, each only if
        the day has not changed since (its stamp is still ``stamp``). Returns how
        many were stored. Every write that changes a session or its events marks
        the session's start day as changed."""

    @abc.abstractmethod
    def count_events(self) -> int: ...

    @abc.abstractmethod
    def count_sessions(self) -> int: ...

    # ------------------------------------------------- API keys and secrets
    @abc.abstractmethod
    def create_api_key(self, key: ApiKeyRecord) -> ApiKeyRecord:
        """Stores a new key (its ``key_id`` must be new) and returns it as stored."""

    @abc.abstractmethod
    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """One key by id (a primary-key lookup: this runs on every call), revoked or not."""

    @abc.abstractmethod
    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""

    @abc.abstractmethod
    def revoke_api_key(self, key_id: str, revoked_at_ms: int | None = None) -> ApiKeyRecord | None:
        """Marks a key revoked (at ``revoked_at_ms``, default now; a key already
        revoked keeps its first revocation time). None when there is no such key."""

    @abc.abstractmethod
    def get_or_create_secret(self, name: str, nbytes: int) -> bytes:
        """The server secret ``name``, created with ``nbytes`` random bytes the
        first time (in one write transaction, so concurrent servers on one store
        end up with the same value)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
