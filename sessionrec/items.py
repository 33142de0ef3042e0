"""Domain records of the item catalog (no gRPC, no storage details).

An item carries what filters and cold-start exposure need: categories, a
price, availability, free-form attributes and its creation time. Items are
written by ``CatalogService.UpsertItems`` and ``sessionrec catalog import``
through :func:`check_item`, so both refuse the same things with the same
messages (each starts with the field).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sessionrec.errors import InvalidArgument
from sessionrec.events import MAX_TS_MS

MAX_ITEM_ID = 256
MAX_TITLE = 1024
MAX_CATEGORIES = 64
MAX_CATEGORY = 256
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_VALUE = 1024


@dataclass(frozen=True, slots=True)
class ItemRecord:
    item_id: str
    title: str = ""
    categories: tuple[str, ...] = ()
    #: None: no price (a price filter leaves the item out).
    price: float | None = None
    available: bool = True
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: None on upsert: the stored value for an existing item, else the upsert time.
    created_at_ms: int | None = None
    #: Set by the store: when the item last changed, and the catalog change
    #: counter of that change (0 for a record not read from a store).
    updated_at_ms: int = 0
    version: int = 0

    def same_content(self, other: ItemRecord) -> bool:
        """Equal in everything a client sends (``created_at`` only when given)."""
        return (
            self.title == other.title
            and self.categories == other.categories
            and self.price == other.price
            and self.available == other.available
            and dict(self.attributes) == dict(other.attributes)
            and (self.created_at_ms is None or self.created_at_ms == other.created_at_ms)
        )


@dataclass(frozen=True, slots=True)
class ItemUpsertResult:
    inserted: int
    updated: int
    unchanged: int
    #: The catalog's change counter after the upsert.
    catalog_version: int


def check_text(value: str, where: str, limit: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: expected a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidArgument(f"{where}: required")
    if len(value) > limit:
        raise InvalidArgument(f"{where}: longer than {limit} characters")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidArgument(f"{where}: contains control characters")
    return value


def check_category(value: str, where: str) -> str:
    return check_text(value, where, MAX_CATEGORY, required=True)


def check_item(
    *,
    item_id: str,
    title: str = "",
    categories: Sequence[str] = (),
    price: float | None = None,
    available: bool | None = None,
    attributes: Mapping[str, str] | None = None,
    created_at_ms: int | None = None,
    where: str = "",
) -> ItemRecord:
    """A store-ready item; ``InvalidArgument`` names the field (``where`` is its
    prefix, e.g. ``items[3]``)."""
    prefix = f"{where}." if where else ""
    check_text(item_id, f"{prefix}item_id", MAX_ITEM_ID, required=True)
    check_text(title, f"{prefix}title", MAX_TITLE)
    if isinstance(categories, str):
        raise InvalidArgument(f"{prefix}categories: expected a list of names")
    if len(categories) > MAX_CATEGORIES:
        raise InvalidArgument(f"{prefix}categories: more than {MAX_CATEGORIES} entries")
    for k, category in enumerate(categories):
        check_category(category, f"{prefix}categories[{k}]")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise InvalidArgument(f"{prefix}price: expected a number, got {price!r}")
        if not math.isfinite(price):
            raise InvalidArgument(f"{prefix}price: must be a finite number")
        if price < 0:
            raise InvalidArgument(f"{prefix}price: must be >= 0, got {price}")
    attrs = dict(attributes or {})
    if len(attrs) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{prefix}attributes: more than {MAX_ATTRIBUTES} entries")
    for key, value in attrs.items():
        if not isinstance(key, str) or not key or len(key) > MAX_ATTRIBUTE_KEY:
            raise InvalidArgument(
                f"{prefix}attributes: keys must be 1..{MAX_ATTRIBUTE_KEY} characters"
            )
        if not isinstance(value, str):
            raise InvalidArgument(
                f"{prefix}attributes[{key}]: expected a string, got {type(value).__name__}"
            )
        if len(value) > MAX_ATTRIBUTE_VALUE:
            raise InvalidArgument(
                f"{prefix}attributes[{key}]: longer than {MAX_ATTRIBUTE_VALUE} characters"
            )
    if created_at_ms is not None:
        if created_at_ms < 0:
            raise InvalidArgument(f"{prefix}created_at: before 1970-01-01")
        if created_at_ms > MAX_TS_MS:
            raise InvalidArgument(f"{prefix}created_at: after 9999-12-31")
    return ItemRecord(
        item_id=item_id,
        title=title,
        categories=tuple(dict.fromkeys(categories)),
        price=None if price is None else float(price),
        available=True if available is None else bool(available),
        attributes=attrs,
        created_at_ms=created_at_ms,
    )
