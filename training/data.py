"""From stored events to a weighted user x item matrix with explicit vocabularies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sessionrec.store import EventColumns
from training.weighting import ConfidenceScaling, EventWeights


class Vocabulary:
    """Maps external ids (strings) to contiguous row numbers, and back.

    Stored in artifacts as a fixed-width unicode array (loads without pickle).
    """

    def __init__(self, ids: Iterable[str]):
        self.ids = np.asarray(list(ids), dtype=str)
        self._lookup: dict[str, int] | None = None
        self._build()

    @classmethod
    def stored(cls, ids: np.ndarray) -> Vocabulary:
        """A vocabulary read back from an artifact, as stored; its lookup table is
        built on first use (serving never looks users up, and a million user ids
        cost about 250 MiB as a dict)."""
        vocabulary = cls.__new__(cls)
        vocabulary.ids = np.asarray(ids, dtype=str)
        vocabulary._lookup = None
        return vocabulary

    def _build(self) -> dict[str, int]:
        lookup = {value: row for row, value in enumerate(self.ids.tolist())}
        if len(lookup) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")
        self._lookup = lookup
        return lookup

    @property
    def index(self) -> dict[str, int]:
        """External id -> row number (the vocabulary's own dict: read it, do not
        change it)."""
        return self._lookup if self._lookup is not None else self._build()

    @classmethod
    def from_values(cls, values: np.ndarray) -> Vocabulary:
        """Distinct values, in sorted order (deterministic)."""
        return cls.factorize(values)[0]

    @classmethod
    def factorize(cls, values: Sequence[str] | np.ndarray) -> tuple[Vocabulary, np.ndarray]:
        """The sorted vocabulary of ``values`` and every value's row number, in one
        hash pass (far faster than sorting a million strings)."""
        index: dict[str, int] = {}
        first_seen = np.fromiter(
            (index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values)
        )
        ids = list(index)
        order = sorted(range(len(ids)), key=ids.__getitem__)
        rank = np.empty(len(ids), dtype=np.int64)
        rank[order] = np.arange(len(ids))
        vocabulary = cls([ids[i] for i in order])
        return vocabulary, rank[first_seen] if len(ids) else first_seen

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self.index

    def number(self, external_id: str) -> int:
        """Row number, or -1 when unknown."""
        return self.index.get(external_id, -1)

    def numbers(self, external_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        get = self.index.get
        return np.fromiter(
            (get(x, -1) for x in external_ids), dtype=np.int64, count=len(external_ids)
        )

    def id(self, number: int) -> str:
        return str(self.ids[number])


@dataclass
class Interactions:
    """A weighted user x item matrix (CSR) and the vocabularies of its rows/columns."""

    users: Vocabulary
    items: Vocabulary
    matrix: sp.csr_matrix
    events: int
    #: The confidence scaling applied to ``matrix`` (None: "none"); live rows get the same.
    scaling: ConfidenceScaling | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[return-value]


def build_interactions(
    events: EventColumns,
    weights: EventWeights,
    users: Vocabulary | None = None,
    items: Vocabulary | None = None,
) -> Interactions:
    """Sums event weights per (user, item). Events with weight 0, or whose user
    or item is outside the given vocabularies, are left out."""
    if users is None:
        users, rows = Vocabulary.factorize(events.user_id)
    else:
        rows = users.numbers(events.user_id)
    if items is None:
        items, cols = Vocabulary.factorize(events.item_id)
    else:
        cols = items.numbers(events.item_id)
    later = events_after(rows) if weights.recency_half_life > 0 else None
    age = None
    if weights.time_half_life_days > 0 and len(events):
        age = int(events.ts_ms.max()) - events.ts_ms  # before the newest event
    w = weights.weigh(events.type, events.dwell_ms, later, age)
    keep = (w > 0) & (rows >= 0) & (cols >= 0)
    matrix, scaling = weighted_matrix(
        rows[keep], cols[keep], w[keep], (len(users), len(items)), weights
    )
    return Interactions(
        users=users, items=items, matrix=matrix, events=int(keep.sum()), scaling=scaling
    )


def weighted_matrix(
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    weights: EventWeights,
) -> tuple[sp.csr_matrix, ConfidenceScaling | None]:
    """The user x item matrix of summed weights (repeated cells add up, zeros
    dropped), with the confidence scaling ``weights`` asks for applied."""
    matrix = sp.csr_matrix((values, (rows, cols)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    scaling = None
    if weights.scaling != "none":
        scaling = ConfidenceScaling.fit(matrix, weights)
        matrix = scaling.apply(matrix)
    return matrix, scaling


def events_after(user_rows: np.ndarray) -> np.ndarray:
    """For time-ordered events, how many events of the same user follow each one
    (rows < 0, unknown users, get 0)."""
    rows = np.where(user_rows >= 0, user_rows, -1)
    order = np.argsort(rows, kind="stable")  # keeps time order within a user
    counts = np.bincount(rows[rows >= 0], minlength=1)
    sorted_rows = rows[order]
    known = sorted_rows >= 0
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = np.zeros(len(rows), dtype=np.int64)
    first_known = int(np.argmax(known)) if known.any() else len(rows)
    position = np.arange(len(rows)) - first_known
    r = sorted_rows[known]
    out[order[known]] = counts[r] - 1 - (position[known] - starts[r])
    return out


def user_row(item_numbers: np.ndarray, item_weights: np.ndarray, n_items: int) -> sp.csr_matrix:
    """One user's weighted row from item numbers (unknown = -1, dropped) and weights."""
    keep = (item_numbers >= 0) & (item_weights > 0)
    numbers, weights = item_numbers[keep], item_weights[keep]
    if len(numbers) <= 512:  # serving's case: a dict beats np.unique's sort + inverse
        sums: dict[int, float] = {}
        for number, weight in zip(numbers.tolist(), weights.tolist(), strict=True):
            sums[number] = sums.get(number, 0.0) + weight  # bincount's order and precision
        order = sorted(sums)
        cols: np.ndarray = np.array(order, dtype=np.int32)
        data: np.ndarray = np.array([sums[c] for c in order], dtype=np.float64)
    else:
        cols, where = np.unique(numbers, return_inverse=True)
        data = np.bincount(where, weights=weights, minlength=len(cols))
    return csr_row(cols, data, n_items)


def csr_row(cols: np.ndarray, data: np.ndarray, n_items: int) -> sp.csr_matrix:
    """A 1 x ``n_items`` CSR row of ``data`` at the ascending distinct ``cols``."""
    return sp.csr_matrix(
        (data.astype(np.float32), cols.astype(np.int32), np.array([0, len(cols)], np.int32)),
        shape=(1, n_items),
    )
