"""Thin gRPC servicers: convert messages, delegate, convert back.

Errors are raised as domain exceptions and mapped to status codes by
``service.interceptors.ErrorMappingInterceptor``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from queue import Empty, Queue
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from service.auth import SessionTokens, bind_events
from service.catalog import Catalog, Diversity, IncomingItem, ItemFilter
from service.interceptors import status_for
from service.limits import RateLimiter
from service.offers import OfferEngine
from service.recommender import ModelHolder, RecommendationEngine, Scored
from service.sessions import IncomingEvent, SessionManager, TrackResult
from service.validation import require_id
from sessionrec.config import Config
from sessionrec.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SessionrecError,
    Unavailable,
)
from sessionrec.events import SessionRecord
from sessionrec.items import ItemRecord
from sessionrec.offers import Offer
from sessionrec.store import Store
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

log = logging.getLogger("sessionrec.service")

#: GetPushCandidates stops (DEADLINE_EXCEEDED, nothing recorded) once less than
#: this much of the call's deadline is left: time to record and answer.
PUSH_DEADLINE_RESERVE_S = 0.2


def timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def session_message(s: SessionRecord) -> pb.Session:
    msg = pb.Session(
        session_id=s.session_id,
        user_id=s.user_id,
        started_at=timestamp(s.started_at_ms),
        last_event_at=timestamp(s.last_event_at_ms),
        duration_ms=s.duration_ms,
        event_count=s.event_count,
        end_reason=pb.EndReason.Name(int(s.end_reason)),
        platform=pb.Platform.Name(s.platform),
        app_version=s.app_version,
        active=s.is_open,
        total_dwell_ms=s.total_dwell_ms,
    )
    if s.ended_at_ms is not None:
        msg.ended_at.CopyFrom(timestamp(s.ended_at_ms))
    if s.utc_offset_min is not None:
        msg.utc_offset_minutes = s.utc_offset_min
    return msg


#: The Timestamp range protobuf's JSON mapping allows: 0001-01-01 .. 9999-12-31.
MIN_TIMESTAMP_S, MAX_TIMESTAMP_S = -62_135_596_800, 253_402_300_799


def milliseconds(ts: Timestamp) -> int:
    """Timestamp -> epoch ms; ValueError when seconds or nanos are out of range."""
    if not 0 <= ts.nanos <= 999_999_999:
        raise ValueError(f"nanos must be 0..999999999, got {ts.nanos}")
    if not MIN_TIMESTAMP_S <= ts.seconds <= MAX_TIMESTAMP_S:
        raise ValueError(f"seconds must be within years 1..9999, got {ts.seconds}")
    return int(ts.ToMilliseconds())


def optional_ms(message: Any, name: str) -> tuple[int | None, str]:
    """A Timestamp field as epoch ms (None when unset), and why it could not be
    read ("" when it could): the domain layer reports it naming the field."""
    if not message.HasField(name):
        return None, ""
    try:
        return milliseconds(getattr(message, name)), ""
    except ValueError as exc:
        return None, str(exc)


def incoming_event(e: pb.Event) -> IncomingEvent:
    ts_ms, error = optional_ms(e, "timestamp")
    # Positional (IncomingEvent's field order): this runs for every event ingested.
    return IncomingEvent(
        e.event_id,
        e.session_id,
        e.user_id,
        e.type,
        e.item_id,
        e.screen,
        e.dwell_ms,
        e.value,
        ts_ms,
        error,
        dict(e.properties) if len(e.properties) else {},
        e.offer_id,
    )


def item_filter(f: pb.RecommendFilter) -> ItemFilter:
    return ItemFilter(
        include_categories=tuple(f.include_categories),
        exclude_categories=tuple(f.exclude_categories),
        exclude_item_ids=tuple(f.exclude_item_ids),
        available_only=f.available_only,
        min_price=f.min_price if f.HasField("min_price") else None,
        max_price=f.max_price if f.HasField("max_price") else None,
    )


def diversity(request: pb.RecommendRequest | pb.SimilarItemsRequest) -> Diversity:
    return Diversity(
        max_per_category=request.max_per_category,
        mmr_lambda=request.mmr_lambda if request.HasField("mmr_lambda") else None,
    )


def incoming_item(item: pb.Item) -> IncomingItem:
    created_at_ms, error = optional_ms(item, "created_at")
    return IncomingItem(
        item_id=item.item_id,
        title=item.title,
        categories=list(item.categories),
        price=item.price if item.HasField("price") else None,
        available=item.available if item.HasField("available") else None,
        attributes=dict(item.attributes),
        created_at_ms=created_at_ms,
        timestamp_error=error,
    )


def item_message(item: ItemRecord) -> pb.Item:
    msg = pb.Item(
        item_id=item.item_id,
        title=item.title,
        categories=list(item.categories),
        available=item.available,
        attributes=dict(item.attributes),
    )
    if item.price is not None:
        msg.price = item.price
    if item.created_at_ms is not None:
        msg.created_at.CopyFrom(timestamp(item.created_at_ms))
    return msg


def recommend_response(r: Scored) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        items=[
            pb.ScoredItem(item_id=i, score=s, reason=why)
            for i, s, why in zip(r.item_ids, r.scores, r.reasons, strict=True)
        ],
        model_version=r.model_version,
        strategy=r.strategy,
    )


def stop_if_caller_gone(context: Any, where: str) -> None:
    """Raises DeadlineExceeded once the caller gave up (its deadline passed, or
    it cancelled): whatever work is left would be for nobody."""
    remaining = context.time_remaining()
    if (remaining is not None and remaining <= 0) or not context.is_active():
        raise DeadlineExceeded(f"deadline: the caller gave up; stopped {where}")


class SessionServicer(pb_grpc.SessionServiceServicer):
    def __init__(self, sessions: SessionManager, tokens: SessionTokens | None = None):
        self.sessions = sessions
        self.tokens = tokens or SessionTokens.for_store(sessions.store)

    def StartSession(self, request, context):
        started_at_ms = None
        if request.HasField("started_at"):
            try:
                started_at_ms = milliseconds(request.started_at)
            except ValueError as exc:
                raise InvalidArgument(f"started_at: {exc}") from None
        session = self.sessions.start(
            request.user_id,
            platform=int(request.platform),
            app_version=request.app_version,
            session_id=request.session_id,
            started_at_ms=started_at_ms,
            utc_offset_minutes=(
                request.utc_offset_minutes if request.HasField("utc_offset_minutes") else None
            ),
        )
        token, expires_ms = self.tokens.issue_for(session)
        return pb.StartSessionResponse(
            session_id=session.session_id,
            started_at=timestamp(session.started_at_ms),
            session_token=token,
            token_expires_at=timestamp(expires_ms),
        )

    def TrackEvents(self, request, context):
        return self._track(request, fail_if_none=True)

    def StreamEvents(self, request_iterator, context):
        """One ack per request, in order, each after its batch committed; a batch
        with nothing to store is acked with its rejections (the stream goes on).

        Group commit: a reader thread queues the requests as they arrive, and
        every request already waiting (up to ``max_events`` events together) is
        stored in one transaction, so a client streaming single events pays one
        commit per group rather than one per event. The group's acks go out in
        one message: grpcio's sync server waits for each message sent to
        complete, so one message per request would bound a stream to a few
        thousand requests per second."""
        queue: Queue[Any] = Queue(maxsize=STREAM_QUEUE)
        reader = threading.Thread(
            target=_read_into, args=(request_iterator, queue), name="stream-reader", daemon=True
        )
        reader.start()
        limit = self.sessions.max_events
        carry: Any = None
        while True:
            item = carry if carry is not None else queue.get()
            carry = None
            group: list[list[IncomingEvent]] = []
            stop: BaseException | None = None
            total = 0
            while True:
                if item is _END or isinstance(item, BaseException):
                    stop = item if isinstance(item, BaseException) else None
                    break
                try:
                    events = self._events(item)
                    self.sessions.check_batch(events)
                except SessionrecError as exc:
                    stop = exc
                    break
                if group and total + len(events) > limit:
                    carry = item  # starts the next group
                    break
                group.append(events)
                total += len(events)
                try:
                    item = queue.get_nowait()
                except Empty:
                    break
            if group:
                results = self.sessions.track_many(group)
                yield pb.StreamEventsResponse(acks=[_track_response(r) for r in results])
            if stop is not None:
                raise stop
            if item is _END:
                return

    def _events(self, request: pb.TrackEventsRequest) -> list[IncomingEvent]:
        """The request's events, bound to its session token."""
        events = [incoming_event(e) for e in request.events]
        # Ingest keys must send a token: its session is the only one they may write.
        bind_events(events, self.tokens.scope(request.session_token))
        return events

    def _track(self, request: pb.TrackEventsRequest, *, fail_if_none: bool):
        events = self._events(request)
        return _track_response(self.sessions.track(events, fail_if_none=fail_if_none))

    def EndSession(self, request, context):
        session_id = self.tokens.scoped_session_id(request.session_id, context)
        return session_message(self.sessions.end(session_id))

    def GetSession(self, request, context):
        session_id = self.tokens.scoped_session_id(request.session_id, context)
        return session_message(self.sessions.get(session_id))


#: Stream requests read ahead of the commits (back-pressure beyond that).
STREAM_QUEUE = 1024
_END = object()


def _read_into(requests: Any, queue: Queue[Any]) -> None:
    """Moves a stream's requests into ``queue``, then _END (or the error that
    ended the reading)."""
    try:
        for request in requests:
            queue.put(request)
    except BaseException as exc:  # the client went away, or a request did not parse
        queue.put(exc)
        return
    queue.put(_END)


def _track_response(result: TrackResult) -> pb.TrackEventsResponse:
    return pb.TrackEventsResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[
            pb.Rejection(index=r.index, reason=str(r.error), code=status_for(r.error).value[0])
            for r in result.rejected
        ],
        event_ids=result.event_ids,
        quarantined=result.quarantined,
    )


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    def __init__(self, engine: RecommendationEngine, user_calls: RateLimiter | None = None):
        self.engine = engine
        self.user_calls = user_calls or RateLimiter(0)

    def Recommend(self, request, context):
        self.user_calls.take(request.user_id, field="user_id")
        return recommend_response(
            self.engine.recommend(
                request.user_id,
                request.n,
                session_id=request.session_id,
                include_seen=request.include_seen,
                item_filter=item_filter(request.filter),
                diversity=diversity(request),
            )
        )

    def SimilarItems(self, request, context):
        return recommend_response(
            self.engine.similar_items(
                request.item_id,
                request.n,
                item_filter=item_filter(request.filter),
                diversity=diversity(request),
            )
        )


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def UpsertItems(self, request, context):
        result = self.catalog.upsert([incoming_item(i) for i in request.items])
        return pb.UpsertItemsResponse(
            inserted=result.inserted,
            updated=result.updated,
            unchanged=result.unchanged,
            rejected=[
                pb.Rejection(index=r.index, reason=str(r.error), code=status_for(r.error).value[0])
                for r in result.rejected
            ],
            catalog_version=result.catalog_version,
        )

    def GetItem(self, request, context):
        return item_message(self.catalog.get(request.item_id))


class OfferServicer(pb_grpc.OfferServiceServicer):
    def __init__(self, offers: OfferEngine, user_calls: RateLimiter | None = None):
        self.offers = offers
        self.user_calls = user_calls or RateLimiter(0)

    def UpsertOffers(self, request, context):
        for k, offer in enumerate(request.offers):
            for name in ("valid_from", "valid_until"):
                _, error = optional_ms(offer, name)
                if error:
                    raise InvalidArgument(f"offers[{k}].{name}: {error}")
        raw = [
            json_format.MessageToDict(o, preserving_proto_field_name=True) for o in request.offers
        ]
        inserted, updated, rejected = self.offers.upsert(raw)
        return pb.UpsertOffersResponse(
            inserted=inserted,
            updated=updated,
            rejected=[
                pb.Rejection(index=r.index, reason=str(r.error), code=status_for(r.error).value[0])
                for r in rejected
            ],
        )

    def DeleteOffer(self, request, context):
        if not self.offers.delete(request.offer_id):
            raise NotFound(f"offer_id: unknown offer {request.offer_id!r}")
        return pb.DeleteOfferResponse()

    def ListOffers(self, request, context):
        return pb.ListOffersResponse(
            offers=[offer_message(o) for o in self.offers.offers().values()]
        )

    def GetOffers(self, request, context):
        self.user_calls.take(request.user_id, field="user_id")
        result = self.offers.get_offers(
            request.user_id, request.n, session_id=request.session_id, preview=request.preview
        )
        out = pb.GetOffersResponse(holdout=result.holdout)
        for r in result.offers:
            ranked = out.offers.add(
                offer_id=r.offer.offer_id,
                score=r.score,
                reason=r.reason,
                title=r.offer.title,
                kind=pb.OfferKind.Value(r.offer.kind),
                value=r.offer.value,
            )
            if r.offer.valid_until_ms is not None:
                ranked.expires_at.CopyFrom(timestamp(r.offer.valid_until_ms))
        return out

    def GetOfferReport(self, request, context):
        return pb.OfferReport(json=json.dumps(self.offers.report(), allow_nan=False))


def offer_message(offer: Offer) -> pb.Offer:
    return json_format.ParseDict(offer.to_dict(), pb.Offer())


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    def __init__(
        self,
        store: Store,
        recommender: RecommendationEngine,
        offers: OfferEngine,
        config: Config,
    ):
        self.store = store
        self.recommender = recommender
        self.offers = offers
        self.config = config

    def GetSessionStats(self, request, context):
        from sessionrec.analytics import screen_anomalies, session_stats

        start, start_error = optional_ms(request, "start")
        end, end_error = optional_ms(request, "end")
        if start_error or end_error:
            name = "start" if start_error else "end"
            raise InvalidArgument(f"{name}: {start_error or end_error}")
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end: must be after start")
        if request.skip_below_ms < 0:
            raise InvalidArgument("skip_below_ms: must be >= 0")
        if request.platform not in pb.Platform.values():
            raise InvalidArgument(f"platform: unknown platform {request.platform}")
        path = self.store
        platform = request.platform or None
        version = request.app_version or None
        skip = int(request.skip_below_ms) or 3000
        if request.segment not in pb.UserSegment.values():
            raise InvalidArgument(f"segment: unknown segment {request.segment}")
        segment = pb.UserSegment.Name(request.segment) if request.segment else None
        try:
            stats = session_stats(
                path,
                start_ms=start,
                end_ms=end,
                platform=platform,
                app_version=version,
                skip_below_ms=skip,
                segment=segment,
                cache=self.store.cache_analytics_days,
            )
            out = stats.to_dict()
            if start is not None and end is not None:
                stop_if_caller_gone(context, "after the stats, before the screen anomalies")
                changes = screen_anomalies(
                    path,
                    start_ms=start,
                    end_ms=end,
                    platform=platform,
                    app_version=version,
                    skip_below_ms=skip,
                    current=stats,
                    segment=segment,
                    cache=self.store.cache_analytics_days,
                )
                out["anomalies"] = [c.to_dict() for c in changes]
        except sqlite3.OperationalError as exc:  # locked or busy: try again later
            raise Unavailable(f"store: {exc}") from exc
        except (InvalidArgument, SessionrecError):
            raise
        except (ValueError, OSError, sqlite3.Error) as exc:  # no file, not a store
            raise FailedPrecondition(f"store: {exc}") from exc
        return pb.SessionStatsResponse(
            sessions=stats.sessions,
            users=stats.users,
            sessions_per_user=stats.sessions_per_user or 0.0,
            duration_p50_ms=stats.duration_p50_ms or 0.0,
            duration_p90_ms=stats.duration_p90_ms or 0.0,
            duration_p99_ms=stats.duration_p99_ms or 0.0,
            bounce_rate=stats.bounce_rate or 0.0,
            json=json.dumps(out, allow_nan=False),
        )

    def GetPushCandidates(self, request, context):
        from service.push import push_candidates

        if request.lapse_days < 0 or request.limit < 0:
            raise InvalidArgument("lapse_days, limit: must be >= 0")
        c = self.config

        def should_stop() -> bool:
            # Stop while a reserve is left to answer: a caller who gave up
            # (or cancelled) must not find users capped for pushes it never got.
            remaining = context.time_remaining()
            if remaining is not None and remaining < PUSH_DEADLINE_RESERVE_S:
                return True
            return not context.is_active()

        found = push_candidates(
            self.store,
            self.recommender,
            self.offers,
            lapse_days=request.lapse_days or 7.0,
            quiet_hours=(c.push_quiet_start_hour, c.push_quiet_end_hour),
            max_per_user=c.push_max_per_user,
            cap_window_days=c.push_cap_window_days,
            limit=request.limit or 1000,
            record=not request.dry_run,
            should_stop=should_stop,
        )
        return pb.GetPushCandidatesResponse(
            candidates=[
                pb.PushCandidate(
                    user_id=p.user_id,
                    reason=p.reason,
                    days_since_last_session=p.days_since_last_session,
                    item_id=p.item_id,
                    item_reason=p.item_reason,
                    offer_id=p.offer_id,
                    send_at=timestamp(p.send_at_ms),
                    active_hour=p.active_hour,
                    utc_offset_minutes=p.utc_offset_minutes,
                )
                for p in found
            ]
        )


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, models: ModelHolder, store: Store):
        self.models = models
        self.store = store

    def DeleteUser(self, request, context):
        user_id = require_id(request.user_id, "user_id")
        deleted = self.store.delete_user(user_id)
        # Counts only: the id itself stays out of the log.
        log.info("erased a user: %s", ", ".join(f"{k} {v}" for k, v in deleted.items()))
        return pb.DeleteUserResponse(deleted=deleted)

    def ReloadModel(self, request, context):
        self.models.reload(request.version)
        return self.model_info()

    def GetModelInfo(self, request, context):
        return self.model_info()

    def model_info(self) -> pb.ModelInfo:
        loaded = self.models.current
        if loaded is None:
            status = "no model: popularity from the store only"
            if self.models.last_error:
                status += f" (last load failed: {self.models.last_error})"
            return pb.ModelInfo(algorithm="none", status=status)
        a = loaded.artifact
        info = pb.ModelInfo(
            version=a.version,
            algorithm=a.algorithm,
            users=len(a.users),
            items=len(a.items),
            interactions=int(a.meta.get("interactions", 0)),
            params_json=json.dumps(a.params, sort_keys=True),
            status=f"serving {a.algorithm} {a.version}",
        )
        if self.models.last_error:
            info.status += f"; a newer artifact was refused: {self.models.last_error}"
        trained = a.meta.get("trained_at")
        if trained:
            info.trained_at.FromJsonString(_rfc3339(trained))
        info.loaded_at.FromDatetime(loaded.loaded_at)
        return info


def _rfc3339(iso: str) -> str:
    return iso.replace("+00:00", "Z")
