"""Server-side sessions and event ingestion.

Rules (also in the README):

* ``StartSession`` opens a session; ``EndSession`` closes it (CLOSED at the
  time of the call); a session whose last event is older than the inactivity
  timeout closes with TIMEOUT *at its last event*. The reaper thread closes
  idle sessions periodically, and every read or write of a session checks the
  timeout first, so no caller ever sees a session that should have timed out.
* An event without ``session_id`` joins the user's open session, or opens a new
  one (server-side sessionization).
* Late and out-of-order events are always stored. An event for a closed (or
  timed-out) session is stored under that session and counted in its
  ``event_count``, but never reopens it or moves its start or end.
* Dwell: a view's dwell is the client's ``dwell_ms`` when given; otherwise it is
  derived when the session closes, as the time to the session's next event (the
  last view of an explicitly closed session runs until the close).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.limits import RateLimiter
from service.periodic import PeriodicTask
from service.validation import check_id, ids_valid, require_id
from sessionrec.deadline import caller_deadline, remaining_s
from sessionrec.errors import InvalidArgument, NotFound, ResourceExhausted, SessionrecError
from sessionrec.events import (
    ITEM_REQUIRED,
    MAX_DWELL_MS,
    MAX_TS_MS,
    AppendResult,
    EndReason,
    EventRecord,
    EventType,
    SessionRecord,
)
from sessionrec.pii import personal_data_kind
from sessionrec.store import Store
from sessionrec.store.base import QuarantinedEvent

log = logging.getLogger("sessionrec.sessions")

#: Event type by number (a dict: ``EventType(n)`` costs a microsecond per event).
_EVENT_TYPES = {int(t): t for t in EventType}
#: The id fields of an event, in the order their errors are reported.
_ID_FIELDS = ("event_id", "user_id", "item_id", "screen", "session_id", "offer_id")
MAX_PROPERTIES = 64
MAX_PROPERTY_KEY = 128
MAX_PROPERTY_VALUE = 1024
PLATFORMS = range(0, 5)


#: Real UTC offsets lie within -12:00 .. +14:00; 14 hours either way is accepted.
MAX_UTC_OFFSET_MIN = 14 * 60


def check_utc_offset(minutes: int | None) -> None:
    """A client-reported UTC offset in minutes (None: not reported)."""
    if minutes is None:
        return
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidArgument(f"utc_offset_minutes: must be an integer, got {minutes!r}")
    if not -MAX_UTC_OFFSET_MIN <= minutes <= MAX_UTC_OFFSET_MIN:
        raise InvalidArgument(
            f"utc_offset_minutes: must be between {-MAX_UTC_OFFSET_MIN} and "
            f"{MAX_UTC_OFFSET_MIN}, got {minutes}"
        )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class IncomingEvent:
    """An event as a client sent it, before validation."""

    event_id: str = ""
    session_id: str = ""
    user_id: str = ""
    type: int = 0
    item_id: str = ""
    screen: str = ""
    dwell_ms: int = 0
    value: float = 0.0
    #: None: not sent (the server's receive time is used)
    ts_ms: int | None = None
    #: Why the timestamp could not be read (out-of-range seconds or nanos), if so.
    timestamp_error: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    #: OFFER_IMPRESSION / OFFER_REDEEMED: the offer.
    offer_id: str = ""


#: Records offer events against their offers' caps and budgets (one per record,
#: None when counted, else the error refusing it); set by the server.
OfferRecorder = Callable[[Sequence[EventRecord]], list[SessionrecError | None]]
OFFER_EVENTS = (EventType.OFFER_IMPRESSION, EventType.OFFER_REDEEMED)


@dataclass(slots=True)
class Rejection:
    index: int
    error: SessionrecError

    @property
    def quarantined(self) -> bool:
        """Invalid events are kept apart with their reason; rate-limited ones
        are not (they were refused, not judged: the client sends them again)."""
        return not isinstance(self.error, _RateLimited)


@dataclass(slots=True)
class TrackResult:
    accepted: int
    duplicates: int
    rejected: list[Rejection]
    event_ids: list[str]
    #: Rejected events kept in the quarantine table.
    quarantined: int = 0
    #: The event ids this call stored (not duplicates).
    fresh: frozenset[str] = frozenset()


class _RateLimited(ResourceExhausted):
    """An event refused by the per-user rate limit (not quarantined)."""


#: Longest string of a quarantined event that is kept whole.
QUARANTINE_MAX_CHARS = 256


def _printable(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return "".join(ch if ord(ch) >= 32 else f"\\x{ord(ch):02x}" for ch in cut)


def _quarantine_entries(
    events: Sequence[IncomingEvent], rejected: list[Rejection], now: int
) -> list[QuarantinedEvent]:
    """The quarantine rows of the rejections that are kept (``Rejection.quarantined``)."""
    return [quarantine_entry(events[r.index], r.error, now) for r in rejected if r.quarantined]


def quarantine_entry(e: IncomingEvent, error: SessionrecError, now: int) -> QuarantinedEvent:
    """The quarantine row of a rejected event: what was sent as JSON, strings cut
    to :data:`QUARANTINE_MAX_CHARS`, property values that look like personal data
    left out (only their kind is kept)."""

    def cut(text: str) -> str:
        return text if len(text) <= QUARANTINE_MAX_CHARS else text[:QUARANTINE_MAX_CHARS] + "..."

    properties = {}
    for key, value in list(e.properties.items())[: MAX_PROPERTIES + 1]:
        kind = personal_data_kind(value) or personal_data_kind(key)
        properties[cut(key) if kind is None else "(removed)"] = (
            cut(value) if kind is None else f"(removed: looks like a {kind})"
        )
    sent = {
        "event_id": cut(e.event_id),
        "session_id": cut(e.session_id),
        "user_id": cut(e.user_id),
        "type": e.type,
        "item_id": cut(e.item_id),
        "screen": cut(e.screen),
        "dwell_ms": e.dwell_ms,
        "value": e.value if math.isfinite(e.value) else str(e.value),
        "ts_ms": e.ts_ms,
        "properties": properties,
        "offer_id": cut(e.offer_id),
    }
    # The id columns with control characters escaped (an id that has any was
    # refused; PostgreSQL text cannot hold NUL); ``event`` keeps them as sent.
    return QuarantinedEvent(
        user_id=_printable(e.user_id, QUARANTINE_MAX_CHARS) or None,
        session_id=_printable(e.session_id, QUARANTINE_MAX_CHARS) or None,
        event_id=_printable(e.event_id, QUARANTINE_MAX_CHARS) or None,
        error=type(error).__name__,
        reason=str(error),
        event=json.dumps(sent, ensure_ascii=False, sort_keys=True),
        received_at_ms=now,
    )


#: Most events one group commit stores together (concurrent calls' batches).
GROUP_MAX_EVENTS = 5000

T = TypeVar("T")  # what a group commits (events, offer log entries)
R = TypeVar("R")  # each batch's result


@dataclass(eq=False)
class _Ticket(Generic[T, R]):
    batches: Sequence[Sequence[T]]
    size: int
    #: When the caller gives up (``time.monotonic()``), None: no deadline.
    until: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    results: list[R] | None = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Batches from concurrent callers stored in one transaction (one fsync for
    all of them), each caller getting its own result.

    Leader/follower, no thread of its own: a caller finding no commit running
    commits everything waiting (its own batch first, up to ``max_events``
    events); callers arriving meanwhile wait, and when the commit ends the
    first of them leads the next group. A caller alone pays no hand-off; under
    load, the commits grow to take everyone waiting."""

    def __init__(
        self,
        store_many: Callable[[list[Sequence[T]]], list[R]],
        max_events: int = GROUP_MAX_EVENTS,
    ):
        self._store_many = store_many
        self.max_events = max_events
        self._lock = threading.Lock()
        self._waiting: list[_Ticket[T, R]] = []
        self._busy = False

    def submit(self, batches: Sequence[Sequence[T]]) -> list[R]:
        """Stores ``batches`` (kept together in one transaction) with whatever
        else is waiting; their results in order. A failed commit (the store
        unavailable, full) raises in every caller of its group."""
        left = remaining_s()
        until = None if left is None else time.monotonic() + left
        ticket: _Ticket[T, R] = _Ticket(batches, sum(len(b) for b in batches), until)
        with self._lock:
            self._waiting.append(ticket)
            leads = not self._busy
            self._busy = True
        if not leads:
            ticket.done.wait()
        if ticket.results is None and ticket.error is None:
            self._commit_next()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.results is not None
        return ticket.results

    def _commit_next(self) -> None:
        """Commits the next group (the caller's ticket is first in it), then
        hands the lead to the first caller still waiting."""
        with self._lock:
            group = [self._waiting.pop(0)]
            size = group[0].size
            while self._waiting and size + self._waiting[0].size <= self.max_events:
                size += self._waiting[0].size
                group.append(self._waiting.pop(0))
        try:
            # The store waits (for its locks) no longer than the soonest deadline of
            # the group: everyone gets an answer (UNAVAILABLE: retry) before giving up.
            untils = [t.until for t in group if t.until is not None]
            soonest = min(untils) - time.monotonic() if untils else None
            with caller_deadline(soonest):
                results = self._store_many([b for t in group for b in t.batches])
        except BaseException as exc:
            for t in group:
                t.error = exc
        else:
            at = 0
            for t in group:
                t.results = results[at : at + len(t.batches)]
                at += len(t.batches)
        finally:
            with self._lock:
                # The first caller still waiting commits next (woken with no result).
                following = self._waiting[0] if self._waiting else None
                self._busy = following is not None
            for t in group:
                t.done.set()
            if following is not None:
                following.done.set()


class SessionManager:
    def __init__(
        self,
        store: Store,
        *,
        timeout_s: float = 1800.0,
        max_clock_skew_s: float = 600.0,
        max_events_per_call: int = 1000,
        offer_recorder: OfferRecorder | None = None,
        user_events_per_s: float = 0.0,
    ):
        self.store = store
        self.offer_recorder = offer_recorder
        #: Events per second per user (0: no limit), a burst of 2 s worth.
        self.user_limit = RateLimiter(
            user_events_per_s, max(max_events_per_call, 2 * user_events_per_s), what="events"
        )
        self.timeout_ms = int(timeout_s * 1000)
        self.max_skew_ms = int(max_clock_skew_s * 1000)
        self.max_events = max_events_per_call
        self._reaper: PeriodicTask | None = None
        self._group: GroupCommit[IncomingEvent, TrackResult] = GroupCommit(self._track_group)

    # ------------------------------------------------------------ sessions
    def start(
        self,
        user_id: str,
        *,
        platform: int = 0,
        app_version: str = "",
        session_id: str = "",
        started_at_ms: int | None = None,
        utc_offset_minutes: int | None = None,
    ) -> SessionRecord:
        require_id(user_id, "user_id")
        check_id(app_version, "app_version")
        if platform not in PLATFORMS:
            raise InvalidArgument(f"platform: unknown value {platform}")
        check_utc_offset(utc_offset_minutes)
        now = now_ms()
        if started_at_ms is None:
            started_at_ms = now
        self._check_time(started_at_ms, now, "started_at")
        sid = check_id(session_id, "session_id") if session_id else uuid.uuid4().hex
        session = self.store.start_session(
            SessionRecord(
                session_id=sid,
                user_id=user_id,
                started_at_ms=started_at_ms,
                last_event_at_ms=started_at_ms,
                last_seen_ms=now,
                platform=platform,
                app_version=app_version,
                utc_offset_min=utc_offset_minutes,
            )
        )
        if session.user_id != user_id:
            raise InvalidArgument(f"session_id: {sid!r} already belongs to another user")
        return session

    def get(self, session_id: str) -> SessionRecord:
        require_id(session_id, "session_id")
        session = self.store.get_session(session_id)
        if session is None:
            raise NotFound(f"session_id: unknown session {session_id!r}")
        return self._expire_if_idle(session, now_ms())

    def end(self, session_id: str) -> SessionRecord:
        session = self.get(session_id)
        if not session.is_open:
            return session
        ended = self.store.end_session(
            session_id, now_ms(), EndReason.CLOSED, derive_last_dwell=True
        )
        assert ended is not None
        return ended

    def _expire_if_idle(self, session: SessionRecord, now: int) -> SessionRecord:
        if session.is_open and session.last_seen_ms < now - self.timeout_ms:
            ended = self.store.end_session(
                session.session_id,
                session.last_event_at_ms,
                EndReason.TIMEOUT,
                derive_last_dwell=False,
            )
            return ended or session
        return session

    def expire_idle(self) -> int:
        """Closes every session idle past the timeout; returns how many."""
        return len(self.store.expire_sessions(now_ms() - self.timeout_ms))

    # -------------------------------------------------------------- events
    def track(self, events: Sequence[IncomingEvent], *, fail_if_none: bool = True) -> TrackResult:
        """Validates and stores a batch (valid events commit, rejected ones are
        listed and quarantined), in one transaction with concurrent callers'
        batches (``GroupCommit``). With no event storable, ``fail_if_none``
        raises the first event's error; otherwise the result lists every rejection."""
        self.check_batch(events)
        result = self._group.submit([events])[0]
        if fail_if_none and len(result.rejected) == len(events):
            raise result.rejected[0].error  # nothing stored (the rejections are kept)
        return result

    def check_batch(self, events: Sequence[IncomingEvent]) -> None:
        """A batch has at least one event and at most ``max_events``."""
        if not events:
            raise InvalidArgument("events: must not be empty")
        if len(events) > self.max_events:
            raise InvalidArgument(f"events: at most {self.max_events} per call, got {len(events)}")

    def track_many(self, batches: Sequence[Sequence[IncomingEvent]]) -> list[TrackResult]:
        """Several batches stored in one transaction, each with its own result as
        if it had been tracked alone, in order: its accepted and duplicate
        counts, its rejections (indexes within the batch), its event ids."""
        for batch in batches:
            self.check_batch(batch)
        return self._group.submit(batches)

    def _track_group(self, batches: list[Sequence[IncomingEvent]]) -> list[TrackResult]:
        """``track_many`` for ``GroupCommit``: the batches merged, stored in one
        transaction, and the result split again."""
        merged = [e for batch in batches for e in batch]
        shown = [k for batch in batches for k in range(len(batch))]
        # Finding a user's open session and storing the session opened for them
        # must not interleave with another batch for the same user, or the two
        # batches would open two sessions: GroupCommit runs one group at a time.
        result = self._track(merged, False, shown)
        out: list[TrackResult] = []
        counted: set[str] = set()
        lo = 0
        for batch in batches:
            hi = lo + len(batch)
            ids = result.event_ids[lo:hi]
            rejected = [
                Rejection(r.index - lo, r.error) for r in result.rejected if lo <= r.index < hi
            ]
            accepted = 0
            for event_id in ids:
                if event_id and event_id in result.fresh and event_id not in counted:
                    counted.add(event_id)
                    accepted += 1
            stored = sum(1 for event_id in ids if event_id)
            quarantined = sum(r.quarantined for r in rejected)
            out.append(TrackResult(accepted, stored - accepted, rejected, ids, quarantined))
            lo = hi
        return out

    def _track(
        self, events: Sequence[IncomingEvent], fail_if_none: bool, shown: Sequence[int]
    ) -> TrackResult:
        now = now_ms()
        wanted = {e.session_id for e in events if e.session_id and len(e.session_id) <= 256}
        sessions = self.store.get_sessions(wanted) if wanted else {}
        for sid, session in list(sessions.items()):
            sessions[sid] = self._expire_if_idle(session, now)
        records: list[EventRecord | None] = []
        rejected: list[Rejection] = []
        for index, incoming in enumerate(events):
            try:
                records.append(self._validate(incoming, shown[index], now, sessions))
            except SessionrecError as exc:
                rejected.append(Rejection(index, exc))
                records.append(None)
        self._limit_users(records, rejected, shown)
        valid = [r for r in records if r is not None]
        if not valid:
            return self._nothing_stored(events, rejected, now, fail_if_none)
        opened, superseded = self._sessionize([r for r in valid if not r.session_id], now)
        valid = self._count_offer_events(records, valid, rejected, shown)
        if not valid:
            return self._nothing_stored(events, rejected, now, fail_if_none)
        quarantine = _quarantine_entries(events, rejected, now)
        result: AppendResult = self.store.append_events(
            valid, opened, close_sessions=superseded, quarantine=quarantine
        )
        event_ids = [r.event_id if r is not None else "" for r in records]
        # Quarantined: kept now, or already by an earlier try of the same batch.
        return TrackResult(
            result.accepted, result.duplicates, rejected, event_ids, len(quarantine), result.fresh
        )

    def _nothing_stored(
        self,
        events: Sequence[IncomingEvent],
        rejected: list[Rejection],
        now: int,
        fail_if_none: bool,
    ) -> TrackResult:
        """No event of the batch can be stored: keep the rejected ones, then fail
        the call (or report them all)."""
        quarantine = _quarantine_entries(events, rejected, now)
        if quarantine:
            self.store.quarantine_events(quarantine)
        if fail_if_none:
            raise rejected[0].error
        return TrackResult(0, 0, rejected, [""] * len(events), len(quarantine))

    def _limit_users(
        self, records: list[EventRecord | None], rejected: list[Rejection], shown: Sequence[int]
    ) -> None:
        """Per-user event rate: a user over the limit has all their events of
        this batch refused (RESOURCE_EXHAUSTED with a retry hint), others go on."""
        if not self.user_limit.enabled:
            return
        per_user: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            if record is not None:
                per_user.setdefault(record.user_id, []).append(index)
        for user, indexes in per_user.items():
            try:
                self.user_limit.take(user, len(indexes), field="events")
            except ResourceExhausted as exc:
                for index in indexes:
                    records[index] = None
                    limited = _RateLimited(
                        f"events[{shown[index]}].{exc}", retry_after_ms=exc.retry_after_ms
                    )
                    rejected.append(Rejection(index, limited))
        rejected.sort(key=lambda r: r.index)

    def _count_offer_events(
        self,
        records: list[EventRecord | None],
        valid: list[EventRecord],
        rejected: list[Rejection],
        shown: Sequence[int],
    ) -> list[EventRecord]:
        """Offer events count against their offer's caps and budget before they are
        stored; one that would exceed them is rejected (RESOURCE_EXHAUSTED), not
        stored. Counting is idempotent on event_id, so a retried batch counts once."""
        offer_records = [r for r in valid if r.type in OFFER_EVENTS]
        if not offer_records or self.offer_recorder is None:
            return valid
        refused: set[str] = set()
        for record, error in zip(offer_records, self.offer_recorder(offer_records), strict=True):
            if error is not None:
                refused.add(record.event_id)
                index = next(i for i, r in enumerate(records) if r is record)
                rejected.append(Rejection(index, type(error)(f"events[{shown[index]}].{error}")))
                records[index] = None
        rejected.sort(key=lambda r: r.index)
        return [r for r in valid if r.event_id not in refused]

    def _validate(
        self, e: IncomingEvent, index: int, now: int, sessions: dict[str, SessionRecord]
    ) -> EventRecord:
        """A stored-ready record; ``session_id`` stays empty when the server must choose it."""
        where = f"events[{index}]"
        # Every id at once: the precise check (and its message) only when one fails.
        ids = (e.event_id, e.user_id, e.item_id, e.screen, e.session_id, e.offer_id)
        if not ids_valid(ids):
            for value, name in zip(ids, _ID_FIELDS, strict=True):
                if value:
                    check_id(value, f"{where}.{name}")
        etype = _EVENT_TYPES.get(e.type)
        if etype is None:
            if e.type == 0:
                raise InvalidArgument(f"{where}.type: required")
            raise InvalidArgument(f"{where}.type: unknown event type {e.type}")
        if not e.item_id and etype in ITEM_REQUIRED:
            raise InvalidArgument(f"{where}.item_id: required for {etype.name}")
        if not e.screen and etype is EventType.SCREEN_VIEW:
            raise InvalidArgument(f"{where}.screen: required for SCREEN_VIEW")
        if not 0 <= e.dwell_ms <= MAX_DWELL_MS:
            raise InvalidArgument(
                f"{where}.dwell_ms: must be between 0 and {MAX_DWELL_MS} (a year), got {e.dwell_ms}"
            )
        if not math.isfinite(e.value):
            raise InvalidArgument(f"{where}.value: must be a finite number")
        properties = dict(e.properties)
        if properties:
            self._check_properties(properties, where)
        if etype in OFFER_EVENTS:
            if not e.offer_id:
                raise InvalidArgument(f"{where}.offer_id: required for {etype.name}")
            if not e.event_id:  # counting is idempotent on it: a retry must not count twice
                raise InvalidArgument(f"{where}.event_id: required for {etype.name}")
            properties["offer_id"] = e.offer_id
        elif e.offer_id:
            raise InvalidArgument(f"{where}.offer_id: only for OFFER_IMPRESSION and OFFER_REDEEMED")
        if e.timestamp_error:
            raise InvalidArgument(f"{where}.timestamp: {e.timestamp_error}")
        ts = now if e.ts_ms is None else e.ts_ms
        self._check_time(ts, now, f"{where}.timestamp")
        if e.session_id:
            session = sessions.get(e.session_id)
            if session is None:
                raise NotFound(f"{where}.session_id: unknown session {e.session_id!r}")
            if e.user_id and e.user_id != session.user_id:
                raise InvalidArgument(
                    f"{where}.user_id: {e.user_id!r} does not match the session's user"
                )
            user = session.user_id
        elif not e.user_id:
            raise InvalidArgument(f"{where}.user_id: required when session_id is empty")
        else:
            user = e.user_id
        return EventRecord(
            event_id=e.event_id or uuid.uuid4().hex,
            session_id=e.session_id,
            user_id=user,
            type=e.type,
            ts_ms=ts,
            item_id=e.item_id or None,
            screen=e.screen or None,
            dwell_ms=e.dwell_ms or None,
            value=e.value if e.value else None,
            properties=properties,
        )

    def _sessionize(
        self, records: list[EventRecord], now: int
    ) -> tuple[list[SessionRecord], list[str]]:
        """Assigns session-less events to sessions, per user in time order: an event
        joins the user's open session, or a session opened earlier in the batch,
        when it lies within the timeout of that session's span; otherwise it opens
        a new one (as the importer does). Returns the sessions opened here, and the
        ids of those to close with the batch (TIMEOUT at their last event): all of
        a user's sessions but the latest, which supersedes them."""
        opened: list[SessionRecord] = []
        candidates: dict[str, list[SessionRecord]] = {}
        gap = self.timeout_ms
        for record in sorted(records, key=lambda r: r.ts_ms):
            user = record.user_id
            if user not in candidates:
                found = self.store.find_open_session(user)
                found = self._expire_if_idle(found, now) if found else None
                candidates[user] = [found] if found is not None and found.is_open else []
            session = next(
                (
                    c
                    for c in reversed(candidates[user])
                    if c.started_at_ms - gap <= record.ts_ms <= c.last_event_at_ms + gap
                ),
                None,
            )
            if session is None:
                session = SessionRecord(
                    session_id=uuid.uuid4().hex,
                    user_id=user,
                    started_at_ms=record.ts_ms,
                    last_event_at_ms=record.ts_ms,
                    last_seen_ms=now,
                )
                opened.append(session)
                candidates[user].append(session)
            else:
                session.last_event_at_ms = max(session.last_event_at_ms, record.ts_ms)
            record.session_id = session.session_id
        superseded: list[str] = []
        for sessions in candidates.values():
            latest = max(sessions, key=lambda c: c.last_event_at_ms)
            superseded += [c.session_id for c in sessions if c is not latest]
        return opened, superseded

    def _check_time(self, ts: int, now: int, field_name: str) -> None:
        if ts < 0:
            raise InvalidArgument(f"{field_name}: before 1970-01-01")
        if ts > MAX_TS_MS:
            raise InvalidArgument(f"{field_name}: after 9999-12-31")
        if ts > now + self.max_skew_ms:
            raise InvalidArgument(
                f"{field_name}: {(ts - now) / 1000:.0f}s in the future "
                f"(at most {self.max_skew_ms / 1000:.0f}s of clock skew allowed)"
            )

    @staticmethod
    def _check_properties(props: dict[str, str], where: str) -> None:
        if len(props) > MAX_PROPERTIES:
            raise InvalidArgument(f"{where}.properties: more than {MAX_PROPERTIES} entries")
        for key, value in props.items():
            if not key or len(key) > MAX_PROPERTY_KEY:
                raise InvalidArgument(
                    f"{where}.properties: keys must be 1..{MAX_PROPERTY_KEY} characters"
                )
            if len(value) > MAX_PROPERTY_VALUE:
                raise InvalidArgument(
                    f"{where}.properties[{key}]: longer than {MAX_PROPERTY_VALUE} characters"
                )
            kind = personal_data_kind(value) or personal_data_kind(key)
            if kind is not None:
                raise InvalidArgument(
                    f"{where}.properties[{_printable(key)}]: looks like a {kind}; sessionrec "
                    "does not store personal data (send an opaque id instead)"
                )

    # -------------------------------------------------------------- reaper
    def start_reaper(self, interval_s: float) -> None:
        if self._reaper is not None:
            return
        self._reaper = PeriodicTask("session-reaper", interval_s, self._reap_once)
        self._reaper.start()

    def _reap_once(self) -> None:
        closed = self.expire_idle()
        if closed:
            log.info("closed %d idle sessions (TIMEOUT)", closed)

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
