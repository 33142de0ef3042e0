import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Platform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLATFORM_UNSPECIFIED: _ClassVar[Platform]
    IOS: _ClassVar[Platform]
    ANDROID: _ClassVar[Platform]
    WEB: _ClassVar[Platform]
    OTHER: _ClassVar[Platform]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    SCREEN_VIEW: _ClassVar[EventType]
    ITEM_VIEW: _ClassVar[EventType]
    ADD_TO_CART: _ClassVar[EventType]
    PURCHASE: _ClassVar[EventType]
    CLICK: _ClassVar[EventType]
    SEARCH: _ClassVar[EventType]
    OFFER_IMPRESSION: _ClassVar[EventType]
    OFFER_REDEEMED: _ClassVar[EventType]
    CUSTOM: _ClassVar[EventType]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    CLOSED: _ClassVar[EndReason]
    TIMEOUT: _ClassVar[EndReason]

class OfferKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OFFER_KIND_UNSPECIFIED: _ClassVar[OfferKind]
    PERCENT_OFF: _ClassVar[OfferKind]
    AMOUNT_OFF: _ClassVar[OfferKind]
    FREE_SHIPPING: _ClassVar[OfferKind]
    BUNDLE: _ClassVar[OfferKind]
    CUSTOM_OFFER: _ClassVar[OfferKind]

class UserSegment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANY_USER: _ClassVar[UserSegment]
    NEW_USER: _ClassVar[UserSegment]
    RETURNING_USER: _ClassVar[UserSegment]
PLATFORM_UNSPECIFIED: Platform
IOS: Platform
ANDROID: Platform
WEB: Platform
OTHER: Platform
EVENT_TYPE_UNSPECIFIED: EventType
SCREEN_VIEW: EventType
ITEM_VIEW: EventType
ADD_TO_CART: EventType
PURCHASE: EventType
CLICK: EventType
SEARCH: EventType
OFFER_IMPRESSION: EventType
OFFER_REDEEMED: EventType
CUSTOM: EventType
END_REASON_UNSPECIFIED: EndReason
CLOSED: EndReason
TIMEOUT: EndReason
OFFER_KIND_UNSPECIFIED: OfferKind
PERCENT_OFF: OfferKind
AMOUNT_OFF: OfferKind
FREE_SHIPPING: OfferKind
BUNDLE: OfferKind
CUSTOM_OFFER: OfferKind
ANY_USER: UserSegment
NEW_USER: UserSegment
RETURNING_USER: UserSegment

class StartSessionRequest(_message.Message):
    __slots__ = ("user_id", "platform", "app_version", "session_id", "started_at", "utc_offset_minutes")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UTC_OFFSET_MINUTES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    platform: Platform
    app_version: str
    session_id: str
    started_at: _timestamp_pb2.Timestamp
    utc_offset_minutes: int
    def __init__(self, user_id: _Optional[str] = ..., platform: _Optional[_Union[Platform, str]] = ..., app_version: _Optional[str] = ..., session_id: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., utc_offset_minutes: _Optional[int] = ...) -> None: ...

class StartSessionResponse(_message.Message):
    __slots__ = ("session_id", "started_at", "session_token", "token_expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    started_at: _timestamp_pb2.Timestamp
    session_token: str
    token_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_token: _Optional[str] = ..., token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "session_id", "user_id", "type", "item_id", "screen", "dwell_ms", "value", "timestamp", "properties", "offer_id")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCREEN_FIELD_NUMBER: _ClassVar[int]
    DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    session_id: str
    user_id: str
    type: EventType
    item_id: str
    screen: str
    dwell_ms: int
    value: float
    timestamp: _timestamp_pb2.Timestamp
    properties: _containers.ScalarMap[str, str]
    offer_id: str
    def __init__(self, event_id: _Optional[str] = ..., session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., item_id: _Optional[str] = ..., screen: _Optional[str] = ..., dwell_ms: _Optional[int] = ..., value: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ..., offer_id: _Optional[str] = ...) -> None: ...

class TrackEventsRequest(_message.Message):
    __slots__ = ("events", "session_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    session_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., session_token: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "reason", "code")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    code: int
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class TrackEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected", "event_ids", "quarantined")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    quarantined: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., event_ids: _Optional[_Iterable[str]] = ..., quarantined: _Optional[int] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[TrackEventsResponse]
    def __init__(self, acks: _Optional[_Iterable[_Union[TrackEventsResponse, _Mapping]]] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "user_id", "started_at", "ended_at", "duration_ms", "event_count", "end_reason", "platform", "app_version", "last_event_at", "active", "total_dwell_ms", "utc_offset_minutes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    UTC_OFFSET_MINUTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_id: str
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    duration_ms: int
    event_count: int
    end_reason: EndReason
    platform: Platform
    app_version: str
    last_event_at: _timestamp_pb2.Timestamp
    active: bool
    total_dwell_ms: int
    utc_offset_minutes: int
    def __init__(self, session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_ms: _Optional[int] = ..., event_count: _Optional[int] = ..., end_reason: _Optional[_Union[EndReason, str]] = ..., platform: _Optional[_Union[Platform, str]] = ..., app_version: _Optional[str] = ..., last_event_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active: _Optional[bool] = ..., total_dwell_ms: _Optional[int] = ..., utc_offset_minutes: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "session_id", "n", "include_seen", "filter", "max_per_category", "mmr_lambda")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    n: int
    include_seen: bool
    filter: RecommendFilter
    max_per_category: int
    mmr_lambda: float
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., n: _Optional[int] = ..., include_seen: _Optional[bool] = ..., filter: _Optional[_Union[RecommendFilter, _Mapping]] = ..., max_per_category: _Optional[int] = ..., mmr_lambda: _Optional[float] = ...) -> None: ...

class RecommendFilter(_message.Message):
    __slots__ = ("include_categories", "exclude_categories", "exclude_item_ids", "available_only", "min_price", "max_price")
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_ONLY_FIELD_NUMBER: _ClassVar[int]
    MIN_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    available_only: bool
    min_price: float
    max_price: float
    def __init__(self, include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., available_only: _Optional[bool] = ..., min_price: _Optional[float] = ..., max_price: _Optional[float] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "strategy")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    strategy: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., strategy: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "n", "filter", "max_per_category", "mmr_lambda")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    n: int
    filter: RecommendFilter
    max_per_category: int
    mmr_lambda: float
    def __init__(self, item_id: _Optional[str] = ..., n: _Optional[int] = ..., filter: _Optional[_Union[RecommendFilter, _Mapping]] = ..., max_per_category: _Optional[int] = ..., mmr_lambda: _Optional[float] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "title", "categories", "price", "available", "attributes", "created_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    price: float
    available: bool
    attributes: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., price: _Optional[float] = ..., available: _Optional[bool] = ..., attributes: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("inserted", "updated", "unchanged", "rejected", "catalog_version")
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    inserted: int
    updated: int
    unchanged: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    catalog_version: int
    def __init__(self, inserted: _Optional[int] = ..., updated: _Optional[int] = ..., unchanged: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class GetItemRequest(_message.Message):
    __slots__ = ("item_id",)
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    def __init__(self, item_id: _Optional[str] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("deleted",)
    class DeletedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.ScalarMap[str, int]
    def __init__(self, deleted: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("version", "algorithm", "trained_at", "users", "items", "interactions", "params_json", "loaded_at", "status")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    version: str
    algorithm: str
    trained_at: _timestamp_pb2.Timestamp
    users: int
    items: int
    interactions: int
    params_json: str
    loaded_at: _timestamp_pb2.Timestamp
    status: str
    def __init__(self, version: _Optional[str] = ..., algorithm: _Optional[str] = ..., trained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., users: _Optional[int] = ..., items: _Optional[int] = ..., interactions: _Optional[int] = ..., params_json: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ...) -> None: ...

class OfferTarget(_message.Message):
    __slots__ = ("item_ids", "categories", "whole_catalog")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    WHOLE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[str]
    whole_catalog: bool
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[str]] = ..., whole_catalog: _Optional[bool] = ...) -> None: ...

class OfferEligibility(_message.Message):
    __slots__ = ("segment", "min_sessions", "lapsed_days", "platforms", "session_items", "cart_items")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    LAPSED_DAYS_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CART_ITEMS_FIELD_NUMBER: _ClassVar[int]
    segment: UserSegment
    min_sessions: int
    lapsed_days: int
    platforms: _containers.RepeatedScalarFieldContainer[Platform]
    session_items: _containers.RepeatedScalarFieldContainer[str]
    cart_items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, segment: _Optional[_Union[UserSegment, str]] = ..., min_sessions: _Optional[int] = ..., lapsed_days: _Optional[int] = ..., platforms: _Optional[_Iterable[_Union[Platform, str]]] = ..., session_items: _Optional[_Iterable[str]] = ..., cart_items: _Optional[_Iterable[str]] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("offer_id", "title", "kind", "value", "target", "valid_from", "valid_until", "eligibility", "max_per_user", "max_per_session", "budget", "priority", "combinable", "single_use")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    ELIGIBILITY_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_USER_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COMBINABLE_FIELD_NUMBER: _ClassVar[int]
    SINGLE_USE_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    title: str
    kind: OfferKind
    value: float
    target: OfferTarget
    valid_from: _timestamp_pb2.Timestamp
    valid_until: _timestamp_pb2.Timestamp
    eligibility: OfferEligibility
    max_per_user: int
    max_per_session: int
    budget: int
    priority: int
    combinable: bool
    single_use: bool
    def __init__(self, offer_id: _Optional[str] = ..., title: _Optional[str] = ..., kind: _Optional[_Union[OfferKind, str]] = ..., value: _Optional[float] = ..., target: _Optional[_Union[OfferTarget, _Mapping]] = ..., valid_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., eligibility: _Optional[_Union[OfferEligibility, _Mapping]] = ..., max_per_user: _Optional[int] = ..., max_per_session: _Optional[int] = ..., budget: _Optional[int] = ..., priority: _Optional[int] = ..., combinable: _Optional[bool] = ..., single_use: _Optional[bool] = ...) -> None: ...

class UpsertOffersRequest(_message.Message):
    __slots__ = ("offers",)
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    def __init__(self, offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ...) -> None: ...

class UpsertOffersResponse(_message.Message):
    __slots__ = ("inserted", "updated", "rejected")
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    inserted: int
    updated: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, inserted: _Optional[int] = ..., updated: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class DeleteOfferRequest(_message.Message):
    __slots__ = ("offer_id",)
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    def __init__(self, offer_id: _Optional[str] = ...) -> None: ...

class DeleteOfferResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOffersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOffersResponse(_message.Message):
    __slots__ = ("offers",)
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    def __init__(self, offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ...) -> None: ...

class GetOffersRequest(_message.Message):
    __slots__ = ("user_id", "session_id", "n", "context", "preview")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    n: int
    context: _containers.ScalarMap[str, str]
    preview: bool
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., n: _Optional[int] = ..., context: _Optional[_Mapping[str, str]] = ..., preview: _Optional[bool] = ...) -> None: ...

class RankedOffer(_message.Message):
    __slots__ = ("offer_id", "score", "reason", "expires_at", "title", "kind", "value")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    score: float
    reason: str
    expires_at: _timestamp_pb2.Timestamp
    title: str
    kind: OfferKind
    value: float
    def __init__(self, offer_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., title: _Optional[str] = ..., kind: _Optional[_Union[OfferKind, str]] = ..., value: _Optional[float] = ...) -> None: ...

class GetOffersResponse(_message.Message):
    __slots__ = ("offers", "holdout")
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[RankedOffer]
    holdout: bool
    def __init__(self, offers: _Optional[_Iterable[_Union[RankedOffer, _Mapping]]] = ..., holdout: _Optional[bool] = ...) -> None: ...

class GetOfferReportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OfferReport(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class GetSessionStatsRequest(_message.Message):
    __slots__ = ("start", "end", "platform", "app_version", "skip_below_ms", "segment")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SKIP_BELOW_MS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    platform: Platform
    app_version: str
    skip_below_ms: int
    segment: UserSegment
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., platform: _Optional[_Union[Platform, str]] = ..., app_version: _Optional[str] = ..., skip_below_ms: _Optional[int] = ..., segment: _Optional[_Union[UserSegment, str]] = ...) -> None: ...

class SessionStatsResponse(_message.Message):
    __slots__ = ("sessions", "users", "sessions_per_user", "duration_p50_ms", "duration_p90_ms", "duration_p99_ms", "bounce_rate", "json")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_PER_USER_FIELD_NUMBER: _ClassVar[int]
    DURATION_P50_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_P90_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_P99_MS_FIELD_NUMBER: _ClassVar[int]
    BOUNCE_RATE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    users: int
    sessions_per_user: float
    duration_p50_ms: float
    duration_p90_ms: float
    duration_p99_ms: float
    bounce_rate: float
    json: str
    def __init__(self, sessions: _Optional[int] = ..., users: _Optional[int] = ..., sessions_per_user: _Optional[float] = ..., duration_p50_ms: _Optional[float] = ..., duration_p90_ms: _Optional[float] = ..., duration_p99_ms: _Optional[float] = ..., bounce_rate: _Optional[float] = ..., json: _Optional[str] = ...) -> None: ...

class GetPushCandidatesRequest(_message.Message):
    __slots__ = ("lapse_days", "limit", "dry_run")
    LAPSE_DAYS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    lapse_days: float
    limit: int
    dry_run: bool
    def __init__(self, lapse_days: _Optional[float] = ..., limit: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PushCandidate(_message.Message):
    __slots__ = ("user_id", "reason", "days_since_last_session", "item_id", "item_reason", "offer_id", "send_at", "active_hour", "utc_offset_minutes")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DAYS_SINCE_LAST_SESSION_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_REASON_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    SEND_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_HOUR_FIELD_NUMBER: _ClassVar[int]
    UTC_OFFSET_MINUTES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    reason: str
    days_since_last_session: float
    item_id: str
    item_reason: str
    offer_id: str
    send_at: _timestamp_pb2.Timestamp
    active_hour: int
    utc_offset_minutes: int
    def __init__(self, user_id: _Optional[str] = ..., reason: _Optional[str] = ..., days_since_last_session: _Optional[float] = ..., item_id: _Optional[str] = ..., item_reason: _Optional[str] = ..., offer_id: _Optional[str] = ..., send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_hour: _Optional[int] = ..., utc_offset_minutes: _Optional[int] = ...) -> None: ...

class GetPushCandidatesResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[PushCandidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[PushCandidate, _Mapping]]] = ...) -> None: ...
