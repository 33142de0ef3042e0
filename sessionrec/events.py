"""Domain records for events and sessions (no gRPC, no storage details)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class EventType(enum.IntEnum):
    """Mirrors ``sessionrec.v1.EventType`` (same numbers)."""

    SCREEN_VIEW = 1
    ITEM_VIEW = 2
    ADD_TO_CART = 3
    PURCHASE = 4
    CLICK = 5
    SEARCH = 6
    OFFER_IMPRESSION = 7
    OFFER_REDEEMED = 8
    CUSTOM = 9

    @classmethod
    def parse(cls, text: str) -> EventType:
        """Accepts ``ITEM_VIEW``, ``item_view``, ``item-view`` or the number."""
        key = text.strip().upper().replace("-", "_")
        if key.isdigit():
            return cls(int(key))
        return cls[key]


#: Longest accepted dwell time (a year): keeps sums far inside SQLite's INTEGER range.
MAX_DWELL_MS = 365 * 24 * 3600 * 1000
#: Latest accepted event time (9999-12-31).
MAX_TS_MS = 253_402_300_799_000

#: Event types that must name an item.
ITEM_REQUIRED = frozenset({EventType.ITEM_VIEW, EventType.ADD_TO_CART, EventType.PURCHASE})
#: Event types whose dwell time is meaningful (derived server-side when missing).
VIEW_TYPES = frozenset({EventType.SCREEN_VIEW, EventType.ITEM_VIEW})


class EndReason(enum.IntEnum):
    """Mirrors ``sessionrec.v1.EndReason``."""

    OPEN = 0
    CLOSED = 1
    TIMEOUT = 2


@dataclass(slots=True)
class EventRecord:
    event_id: str
    session_id: str
    user_id: str
    type: int
    ts_ms: int
    item_id: str | None = None
    screen: str | None = None
    #: ``None`` means unknown (derived from the next event when the session closes).
    dwell_ms: int | None = None
    value: float | None = None
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    user_id: str
    started_at_ms: int
    last_event_at_ms: int
    platform: int = 0
    app_version: str = ""
    ended_at_ms: int | None = None
    end_reason: EndReason = EndReason.OPEN
    event_count: int = 0
    total_dwell_ms: int = 0
    #: Server time an event (or the start) of this session last *arrived*; the
    #: inactivity timeout runs from here, so late uploads of old events do not
    #: close a session that is still receiving them. 0: use last_event_at_ms.
    last_seen_ms: int = 0
    #: The device's offset from UTC in minutes when the session started (120:
    #: UTC+2), as the client reported it; None: not reported.
    utc_offset_min: int | None = None

    def __post_init__(self) -> None:
        if not self.last_seen_ms:
            self.last_seen_ms = self.last_event_at_ms

    @property
    def is_open(self) -> bool:
        return self.ended_at_ms is None

    @property
    def duration_ms(self) -> int:
        end = self.ended_at_ms if self.ended_at_ms is not None else self.last_event_at_ms
        return max(0, end - self.started_at_ms)


@dataclass(slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    #: Rejected events newly kept in the quarantine table.
    quarantined: int = 0
    #: The ids of the events newly stored (not duplicates).
    fresh: frozenset[str] = frozenset()


class ItemEvent(NamedTuple):
    """The part of an event that feeds a recommender (a tuple: a history of
    them compares and hashes in C, as a serving cache's key)."""

    item_id: str
    type: int
    dwell_ms: int | None
    ts_ms: int
