"""The item catalog online: upserts, an in-memory snapshot, filter masks, new
items, diversity.

* ``Catalog`` writes items through the store and keeps an immutable
  :class:`CatalogSnapshot` of the whole catalog in memory. An upsert through
  this server refreshes it before the call returns; a poll thread picks up
  changes made elsewhere (the CLI, another server) by the store's change
  counter, reading only the items that changed.
* A :class:`RankerView` aligns a snapshot with the item ids a ranker knows (a
  model artifact's vocabulary, or the store's popularity ranking): boolean
  masks for filters (cached per filter), the ranker's *cold* items (catalog
  items it cannot score: no interactions when it was built), and category
  popularity. Views are cached per (ranker, catalog version).
* Items absent from the catalog count as available, with no categories and no
  price: the service works without a catalog, but any category, price or
  ``available_only`` condition leaves them out (they cannot be shown to meet
  it). Unavailable items are never allowed.
* :func:`pick_cold` chooses new items for the exploration share,
  :func:`mmr` and :func:`assemble` apply the diversity options.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from service.periodic import PeriodicTask
from service.validation import require_id
from sessionrec.errors import InvalidArgument, NotFound, SessionrecError
from sessionrec.items import ItemRecord, check_category, check_item
from sessionrec.store import Store

log = logging.getLogger("sessionrec.catalog")

MAX_FILTER_CATEGORIES = 100
MAX_EXCLUDE_IDS = 10_000
#: Masks kept per view (one per distinct filter, excluded ids aside).
MASK_CACHE_SIZE = 128
#: Views kept (a few rankers x catalog versions).
VIEW_CACHE_SIZE = 4
#: New items compared by attributes within one category (the newest this many).
COLD_WINDOW = 10


# ------------------------------------------------------------------ requests
@dataclass(frozen=True)
class ItemFilter:
    """Which items an answer may hold (see ``RecommendFilter`` in the proto)."""

    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    exclude_item_ids: tuple[str, ...] = ()
    available_only: bool = False
    min_price: float | None = None
    max_price: float | None = None

    @property
    def mask_key(self) -> tuple:
        """What a cached mask depends on (excluded ids are applied per request)."""
        return (
            self.include_categories,
            self.exclude_categories,
            self.available_only,
            self.min_price,
            self.max_price,
        )

    @property
    def restricts_attributes(self) -> bool:
        return bool(
            self.include_categories
            or self.exclude_categories
            or self.available_only
            or self.min_price is not None
            or self.max_price is not None
        )

    @functools.cached_property
    def _excluded(self) -> frozenset[str]:
        return frozenset(self.exclude_item_ids)

    @functools.cached_property
    def _included_categories(self) -> frozenset[str]:
        return frozenset(self.include_categories)

    @functools.cached_property
    def _excluded_categories(self) -> frozenset[str]:
        return frozenset(self.exclude_categories)

    def allows(self, item: ItemRecord | None, item_id: str = "") -> bool:
        """Whether one item passes (None: ``item_id`` is not in the catalog)."""
        if item is not None:
            item_id = item.item_id
        if item_id in self._excluded:
            return False
        if item is None:
            return not self.restricts_attributes
        if not item.available:
            return False
        if self.include_categories and self._included_categories.isdisjoint(item.categories):
            return False
        if self.exclude_categories and not self._excluded_categories.isdisjoint(item.categories):
            return False
        if self.min_price is not None and (item.price is None or item.price < self.min_price):
            return False
        return not (
            self.max_price is not None and (item.price is None or item.price > self.max_price)
        )


NO_FILTER = ItemFilter()


def check_filter(f: ItemFilter, where: str = "filter") -> ItemFilter:
    """Validates a filter; returns it normalized (names deduplicated and sorted,
    so equal filters share a cached mask)."""
    for name in ("include_categories", "exclude_categories"):
        values = getattr(f, name)
        if len(values) > MAX_FILTER_CATEGORIES:
            raise InvalidArgument(f"{where}.{name}: more than {MAX_FILTER_CATEGORIES} entries")
        for k, value in enumerate(values):
            check_category(value, f"{where}.{name}[{k}]")
    if len(f.exclude_item_ids) > MAX_EXCLUDE_IDS:
        raise InvalidArgument(f"{where}.exclude_item_ids: more than {MAX_EXCLUDE_IDS} entries")
    for k, value in enumerate(f.exclude_item_ids):
        require_id(value, f"{where}.exclude_item_ids[{k}]")
    for name in ("min_price", "max_price"):
        value = getattr(f, name)
        if value is None:
            continue
        if not math.isfinite(value):
            raise InvalidArgument(f"{where}.{name}: must be a finite number")
        if value < 0:
            raise InvalidArgument(f"{where}.{name}: must be >= 0, got {value}")
    if f.min_price is not None and f.max_price is not None and f.max_price < f.min_price:
        raise InvalidArgument(
            f"{where}.max_price: must be >= {where}.min_price ({f.min_price}), got {f.max_price}"
        )
    return ItemFilter(
        include_categories=tuple(sorted(set(f.include_categories))),
        exclude_categories=tuple(sorted(set(f.exclude_categories))),
        exclude_item_ids=tuple(sorted(set(f.exclude_item_ids))),
        available_only=bool(f.available_only),
        min_price=f.min_price,
        max_price=f.max_price,
    )


@dataclass(frozen=True)
class Diversity:
    #: At most this many items per category (0: no cap).
    max_per_category: int = 0
    #: MMR trade-off between relevance (1) and novelty (0); None: off.
    mmr_lambda: float | None = None

    @property
    def active(self) -> bool:
        return self.max_per_category > 0 or self.mmr_lambda is not None


NO_DIVERSITY = Diversity()


def check_diversity(d: Diversity) -> Diversity:
    if d.max_per_category < 0:
        raise InvalidArgument(f"max_per_category: must be >= 0, got {d.max_per_category}")
    if d.mmr_lambda is not None and not (
        math.isfinite(d.mmr_lambda) and 0.0 <= d.mmr_lambda <= 1.0
    ):
        raise InvalidArgument(f"mmr_lambda: must be between 0 and 1, got {d.mmr_lambda}")
    return d


@dataclass(slots=True)
class IncomingItem:
    """An item as a client sent it, before validation."""

    item_id: str = ""
    title: str = ""
    categories: list[str] = field(default_factory=list)
    price: float | None = None
    available: bool | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    created_at_ms: int | None = None
    #: Why ``created_at`` could not be read, if so.
    timestamp_error: str = ""


@dataclass(slots=True)
class ItemRejection:
    index: int
    error: SessionrecError


@dataclass(slots=True)
class UpsertResult:
    inserted: int
    updated: int
    unchanged: int
    rejected: list[ItemRejection]
    catalog_version: int


# ------------------------------------------------------------------ snapshot
class CatalogSnapshot:
    """The whole catalog at one change counter (never mutated once built)."""

    def __init__(self, version: int, items: dict[str, ItemRecord]):
        self.version = version
        self.items = items
        #: Available items, newest first (the candidates for new-item exposure).
        self.newest: list[ItemRecord] = sorted(
            (i for i in items.values() if i.available),
            key=lambda i: (-(i.created_at_ms or 0), i.item_id),
        )
        self.unavailable = sum(1 for i in items.values() if not i.available)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: str) -> ItemRecord | None:
        return self.items.get(item_id)

    def categories(self, item_id: str) -> tuple[str, ...]:
        item = self.items.get(item_id)
        return item.categories if item is not None else ()

    def updated(self, version: int, changes: Iterable[ItemRecord]) -> CatalogSnapshot:
        items = dict(self.items)
        for item in changes:
            items[item.item_id] = item
        return CatalogSnapshot(version, items)


EMPTY_SNAPSHOT = CatalogSnapshot(0, {})


class RankerView:
    """One snapshot aligned with the ids a ranker scores (``ids[k]`` is item k)."""

    def __init__(
        self,
        snapshot: CatalogSnapshot,
        ids: Sequence[str] | np.ndarray,
        popularity: np.ndarray | None = None,
    ):
        self.snapshot = snapshot
        self.ids: list[str] = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        n = len(self.ids)
        self.n = n
        self.number = {item_id: k for k, item_id in enumerate(self.ids)}
        self.available = np.ones(n, dtype=bool)
        self.in_catalog = np.zeros(n, dtype=bool)
        self.price = np.full(n, np.nan)
        members: dict[str, list[int]] = {}
        if len(snapshot):
            for k, item_id in enumerate(self.ids):
                item = snapshot.items.get(item_id)
                if item is None:
                    continue
                self.in_catalog[k] = True
                self.available[k] = item.available
                if item.price is not None:
                    self.price[k] = item.price
                for category in item.categories:
                    members.setdefault(category, []).append(k)
        self.members = {c: np.asarray(m, dtype=np.int64) for c, m in members.items()}
        self.popularity = (
            np.zeros(n) if popularity is None else np.asarray(popularity, dtype=np.float64)
        )
        #: Sum of the ranker's popularity over each category's items.
        self.category_popularity = {
            c: float(self.popularity[m].sum()) for c, m in self.members.items()
        }
        #: Catalog items the ranker cannot score, available, newest first.
        self.cold = [i for i in snapshot.newest if i.item_id not in self.number]
        self.cold_by_category: dict[str, list[ItemRecord]] = {}
        for item in self.cold:
            for category in item.categories:
                self.cold_by_category.setdefault(category, []).append(item)
        self.cold_uncategorized = [i for i in self.cold if not i.categories]
        #: Categories with new items, the most popular first (ties by name).
        self.cold_categories = sorted(
            self.cold_by_category, key=lambda c: (-self.category_popularity.get(c, 0.0), c)
        )
        self._masks: OrderedDict[tuple, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    def mask(self, f: ItemFilter, *, with_excluded_ids: bool = True) -> np.ndarray | None:
        """Allowed flag per ranker item, or None when every item is allowed."""
        key = f.mask_key
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                base = self._masks[key]
            else:
                base = self._build_mask(f)
                self._masks[key] = base
                if len(self._masks) > MASK_CACHE_SIZE:
                    self._masks.popitem(last=False)
        if not (with_excluded_ids and f.exclude_item_ids):
            return base
        numbers = [self.number[i] for i in f.exclude_item_ids if i in self.number]
        if not numbers:
            return base
        out = np.ones(self.n, dtype=bool) if base is None else base.copy()
        out[numbers] = False
        return out

    def _build_mask(self, f: ItemFilter) -> np.ndarray | None:
        if not f.restricts_attributes and self.snapshot.unavailable == 0:
            return None
        mask = self.available.copy()
        if f.available_only:
            mask &= self.in_catalog
        if f.include_categories:
            wanted = np.zeros(self.n, dtype=bool)
            for category in f.include_categories:
                if category in self.members:
                    wanted[self.members[category]] = True
            mask &= wanted
        if f.exclude_categories:  # an item missing from the catalog might be in one
            mask &= self.in_catalog
        for category in f.exclude_categories:
            if category in self.members:
                mask[self.members[category]] = False
        with np.errstate(invalid="ignore"):  # NaN (no price) compares False: left out
            if f.min_price is not None:
                mask &= self.price >= f.min_price
            if f.max_price is not None:
                mask &= self.price <= f.max_price
        return None if mask.all() else mask


# ------------------------------------------------------------------- catalog
class Catalog:
    def __init__(self, store: Store, *, max_items_per_call: int = 1000):
        self.store = store
        self.max_items = max_items_per_call
        self._snapshot = EMPTY_SNAPSHOT
        self._refresh_lock = threading.Lock()
        self._views: OrderedDict[tuple, RankerView] = OrderedDict()
        self._views_lock = threading.Lock()
        self._poller: PeriodicTask | None = None

    @property
    def snapshot(self) -> CatalogSnapshot:
        return self._snapshot

    def refresh(self) -> CatalogSnapshot:
        """Brings the snapshot up to the store's change counter (reads only changes)."""
        with self._refresh_lock:
            current = self._snapshot
            version = self.store.catalog_version()
            if version == current.version:
                return current
            if version < current.version:  # the store was replaced: start over
                current = EMPTY_SNAPSHOT
            changes = self.store.catalog_items(current.version)
            latest = max((i.version for i in changes), default=version)
            self._snapshot = current.updated(latest, changes)
            log.debug("catalog at version %d (%d items)", latest, len(self._snapshot))
            return self._snapshot

    def start_polling(self, interval_s: float) -> None:
        if interval_s <= 0 or self._poller is not None:
            return
        self._poller = PeriodicTask("catalog-refresh", interval_s, self._poll)
        self._poller.start()

    def _poll(self) -> None:
        self.refresh()

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def view(
        self, key: str, ids: Sequence[str] | np.ndarray, popularity: np.ndarray | None = None
    ) -> RankerView:
        """The current snapshot aligned with a ranker's ids; ``key`` names the
        ranker (an artifact version), cached with the catalog version."""
        snapshot = self._snapshot
        cache_key = (key, snapshot.version)
        with self._views_lock:
            found = self._views.get(cache_key)
            if found is not None:
                self._views.move_to_end(cache_key)
                return found
            built = RankerView(snapshot, ids, popularity)
            self._views[cache_key] = built
            if len(self._views) > VIEW_CACHE_SIZE:
                self._views.popitem(last=False)
            return built

    # -------------------------------------------------------------- writes
    def upsert(self, items: Sequence[IncomingItem]) -> UpsertResult:
        if not items:
            raise InvalidArgument("items: must not be empty")
        if len(items) > self.max_items:
            raise InvalidArgument(f"items: at most {self.max_items} per call, got {len(items)}")
        valid: list[ItemRecord] = []
        rejected: list[ItemRejection] = []
        first_index: dict[str, int] = {}
        for index, incoming in enumerate(items):
            try:
                record = self._validate(incoming, index)
                if record.item_id in first_index:
                    raise InvalidArgument(
                        f"items[{index}].item_id: {record.item_id!r} repeated in this request "
                        f"(first at items[{first_index[record.item_id]}])"
                    )
                first_index[record.item_id] = index
                valid.append(record)
            except SessionrecError as exc:
                rejected.append(ItemRejection(index, exc))
        if not valid:
            raise rejected[0].error
        stored = self.store.upsert_items(valid)
        self.refresh()
        return UpsertResult(
            stored.inserted, stored.updated, stored.unchanged, rejected, stored.catalog_version
        )

    @staticmethod
    def _validate(incoming: IncomingItem, index: int) -> ItemRecord:
        where = f"items[{index}]"
        if incoming.timestamp_error:
            raise InvalidArgument(f"{where}.created_at: {incoming.timestamp_error}")
        return check_item(
            item_id=incoming.item_id,
            title=incoming.title,
            categories=incoming.categories,
            price=incoming.price,
            available=incoming.available,
            attributes=incoming.attributes,
            created_at_ms=incoming.created_at_ms,
            where=where,
        )

    def get(self, item_id: str) -> ItemRecord:
        require_id(item_id, "item_id")
        item = self.store.get_item(item_id)
        if item is None:
            raise NotFound(f"item_id: {item_id!r} is not in the catalog")
        return item


# ----------------------------------------------------------- new items
def cold_slots(n: int, share: float) -> int:
    """How many of ``n`` slots go to new items: ``share`` of them, at least one
    from n >= 5 (none when the share is 0)."""
    if share <= 0:
        return 0
    k = math.floor(n * share + 1e-9)
    if n >= 5:
        k = max(k, 1)
    return min(k, n)


@dataclass(frozen=True, slots=True)
class Pick:
    item: ItemRecord
    #: The category it was chosen for ("" when it has none).
    category: str

    @property
    def reason(self) -> str:
        return f"new in {self.category}" if self.category else "new item"


@dataclass
class Profile:
    """Weighted counts of the categories and attribute pairs of some items."""

    categories: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    attributes: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def add(self, snapshot: CatalogSnapshot, item_ids: Iterable[str], weight: float = 1.0) -> None:
        """Counts the catalog items among ``item_ids`` (each occurrence weighs ``weight``)."""
        if not len(snapshot):
            return
        for item_id in item_ids:
            item = snapshot.items.get(item_id)
            if item is None:
                continue
            for category in item.categories:
                self.categories[category] += weight
            for pair in item.attributes.items():
                self.attributes[pair] += weight


def pick_cold(
    view: RankerView,
    k: int,
    f: ItemFilter,
    *,
    skip: set[str],
    liked: Profile,
) -> list[Pick]:
    """Up to ``k`` new items that pass ``f`` and are not in ``skip``: from the
    categories ``liked`` counts (most first), then the other categories by
    popularity, then items without a category. Within a category, among its
    newest eligible items, those sharing most attribute pairs with ``liked``
    first, then the newest."""
    if k <= 0 or not view.cold:
        return []
    affinity, attributes = liked.categories, liked.attributes
    favourites = [c for c, _ in sorted(affinity.items(), key=lambda p: (-p[1], p[0]))]
    order = [c for c in favourites if c in view.cold_by_category]
    order += [c for c in view.cold_categories if c not in affinity]
    if f.include_categories:
        included = set(f.include_categories)
        order = [c for c in order if c in included]
    picks: list[Pick] = []
    taken = set(skip)

    def attribute_match(item: ItemRecord) -> float:
        return sum(attributes.get(pair, 0.0) for pair in item.attributes.items())

    def take_from(candidates: list[ItemRecord], category: str) -> None:
        window: list[ItemRecord] = []
        for item in candidates:
            if item.item_id in taken or not f.allows(item):
                continue
            window.append(item)
            if len(window) >= COLD_WINDOW + k - len(picks):
                break
        if attributes:  # stable: the newest first among equal matches
            window.sort(key=attribute_match, reverse=True)
        for item in window[: k - len(picks)]:
            picks.append(Pick(item, category))
            taken.add(item.item_id)

    for category in order:
        take_from(view.cold_by_category[category], category)
        if len(picks) >= k:
            return picks
    if not f.include_categories:
        take_from(view.cold_uncategorized, "")
    return picks


# ------------------------------------------------------------ diversity
@dataclass(slots=True)
class Entry:
    item_id: str
    score: float
    reason: str


def mmr(
    entries: list[Entry],
    lam: float,
    categories: Callable[[str], tuple[str, ...]],
    limit: int | None = None,
) -> list[Entry]:
    """Maximal marginal relevance: repeatedly the entry maximizing
    ``lam * relevance - (1 - lam) * max Jaccard(categories, chosen ones)``;
    relevance is the score scaled to 0..1 over the entries. The first
    ``limit`` (default all) are chosen so; the rest follow in their order."""
    m = len(entries)
    limit = m if limit is None else min(limit, m)
    if m < 3 or lam >= 1.0 or limit < 2:
        return list(entries)
    names: dict[str, int] = {}
    rows, cols = [], []
    for r, e in enumerate(entries):
        for c in categories(e.item_id):
            rows.append(r)
            cols.append(names.setdefault(c, len(names)))
    if not names:
        return list(entries)
    incidence = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(m, len(names))
    )
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    # Shared categories of every pair, once; each step reads one row of it.
    shared = (incidence @ incidence.T).tocsr()
    scores = np.asarray([e.score for e in entries], dtype=np.float64)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones(m)
    base = lam * relevance
    value = base.copy()  # the MMR objective; -inf once chosen
    penalty = np.zeros(m)
    chosen = np.zeros(m, dtype=bool)
    indptr, indices, data = shared.indptr, shared.indices, shared.data
    order: list[int] = []
    for _ in range(limit):
        best = int(np.argmax(value))
        order.append(best)
        chosen[best] = True
        value[best] = -np.inf
        # Only the entries sharing a category with the new one change.
        others = indices[indptr[best] : indptr[best + 1]]
        common = data[indptr[best] : indptr[best + 1]]
        sim = common / (sizes[others] + sizes[best] - common)
        penalty[others] = np.maximum(penalty[others], sim)
        value[others] = np.where(
            chosen[others], -np.inf, base[others] - (1.0 - lam) * penalty[others]
        )
    rest = np.flatnonzero(~chosen).tolist()
    return [entries[i] for i in order] + [entries[i] for i in rest]


def assemble(
    warm: list[Entry],
    cold: list[Entry],
    n: int,
    k: int,
    max_per_category: int,
    categories: Callable[[str], tuple[str, ...]],
) -> list[Entry]:
    """The final list: ranked items first, then up to ``k`` new items (more when
    too few ranked items are left), never more than ``max_per_category`` (when
    > 0) of any category. A new item takes the score of the item above it."""
    counts: Counter[str] = Counter()

    def fits(entry: Entry) -> bool:
        if max_per_category <= 0:
            return True
        return all(counts[c] < max_per_category for c in categories(entry.item_id))

    def add(entry: Entry, into: list[Entry]) -> None:
        counts.update(categories(entry.item_id))
        into.append(entry)

    head: list[Entry] = []
    warm_target = n - min(k, len(cold))
    position = 0
    while position < len(warm) and len(head) < warm_target:
        if fits(warm[position]):
            add(warm[position], head)
        position += 1
    tail: list[Entry] = []
    for entry in cold:
        if len(head) + len(tail) >= n:
            break
        if fits(entry):
            add(entry, tail)
    for entry in warm[position:]:  # the cap left new items out, or there were too few
        if len(head) + len(tail) >= n:
            break
        if fits(entry):
            add(entry, head)
    last = head[-1].score if head else 0.0
    for entry in tail:
        entry.score = last
    return head + tail
