"""Session-based recommenders: what the user does *now* predicts what they want next.

Two families, both from the session-based benchmark literature (Ludewig, Latifi,
Jannach et al., "Empirical analysis of session-based recommendation algorithms",
UMUAI 2021), where these simple methods match or beat neural ones:

* ``SessionKNN``: nearest-neighbour sessions. The live session is compared with
  recent training sessions that share an item; the items of the most similar ones
  are recommended. With all decays off it is plain **SKNN** (cosine over item sets);
  the three STAN decays (Garg et al., SIGIR 2019) make it position- and
  recency-aware: ``position_decay`` weighs recent items of the live session more
  (as V-SKNN does), ``recency_decay_days`` prefers recent neighbour sessions, and
  ``neighbor_decay`` weighs a neighbour's items by how close they sit to the item
  it shares with the live session.
* ``SequentialRules``: item-to-item transitions, ``a -> b`` counted with weight
  ``1/d`` when ``b`` follows ``a`` within ``steps`` clicks of one session; the
  last item of the live session picks the rules.

``SessionRecommender`` bundles both with the blend weights that mix them with a
user's long-term collaborative model; the weights are chosen on held-out sessions
(``training.next_item.choose_blend``). Everything persists as numpy arrays (the
artifact's ``.npz``, ``allow_pickle=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from sessionrec.errors import InvalidArgument
from sessionrec.store import EventColumns
from training._kernels import (
    add_normalized,
    blend_normalized,
    knn_index,
    knn_scores,
    rule_sources,
)
from training.data import Vocabulary
from training.weighting import EventWeights

DAY_MS = 24 * 3600 * 1000

#: A session-kNN index as ``knn_scores`` takes it: item_indptr, item_records
#: and records (``knn_index``).
KernelIndex = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Sessions:
    """Training sessions as item-number sequences in click order (CSR layout)."""

    indptr: np.ndarray  # int64, len(sessions) + 1
    items: np.ndarray  # int32 item numbers
    end_ms: np.ndarray  # int64, time of each session's last event

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def session(self, s: int) -> np.ndarray:
        return self.items[self.indptr[s] : self.indptr[s + 1]]


def sessions_from_events(
    events: EventColumns, items: Vocabulary, weights: EventWeights | None = None
) -> Sessions:
    """Groups item events by session (click order kept; events are time-ordered)
    and maps items to ``items`` numbers, dropping items the vocabulary lacks and,
    with ``weights``, events that do not weigh positively (an impression is not a
    click)."""
    if events.session_id is None:
        raise InvalidArgument("events: session ids are needed (item_events(with_sessions=True))")
    numbers = items.numbers(events.item_id.tolist())
    keep = numbers >= 0
    if weights is not None:
        keep &= positive_events(events, weights)
    _, codes = Vocabulary.factorize(events.session_id[keep])
    numbers = numbers[keep]
    ts = events.ts_ms[keep]
    order = np.argsort(codes, kind="stable")  # stable: time order within a session
    codes, numbers, ts = codes[order], numbers[order], ts[order]
    counts = np.bincount(codes, minlength=int(codes.max()) + 1 if len(codes) else 0)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nonempty = counts > 0
    ends = np.zeros(len(counts), dtype=np.int64)
    if len(ts):
        ends[nonempty] = ts[indptr[1:][nonempty] - 1]
    if not nonempty.all():
        indptr = np.concatenate([[0], np.cumsum(counts[nonempty])]).astype(np.int64)
        ends = ends[nonempty]
    return Sessions(indptr, numbers.astype(np.int32), ends)


def positive_events(events: EventColumns, weights: EventWeights) -> np.ndarray:
    """Which events count as interest: a positive type/dwell weight (recency and
    time decay only scale weights, so they are left out)."""
    return np.asarray(weights.weigh(events.type, events.dwell_ms) > 0)


class SessionKNN:
    """Session-based k-nearest neighbours (SKNN; V-SKNN/STAN decays optional)."""

    defaults: ClassVar[dict[str, Any]] = {
        "k": 100,  # neighbour sessions that vote
        "sample_size": 500,  # most recent candidate sessions compared
        "position_decay": 0.0,  # lambda_1 in items (0: every live item counts the same)
        "recency_decay_days": 0.0,  # lambda_2 in days (0: old neighbours count the same)
        "neighbor_decay": 0.0,  # lambda_3 in items (0: all items of a neighbour count the same)
        "max_sessions_per_item": 1000,  # index cap: the most recent sessions per item
        "max_session_length": 50,  # live items considered: the latest ones
    }

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise InvalidArgument(f"{sorted(unknown)[0]}: not a session-kNN parameter")
        self.params: dict[str, Any] = {**self.defaults, **params}
        for name in ("k", "sample_size", "max_sessions_per_item", "max_session_length"):
            if int(self.params[name]) < 1:
                raise InvalidArgument(f"{name}: must be >= 1")
        for name in ("position_decay", "recency_decay_days", "neighbor_decay"):
            if float(self.params[name]) < 0:
                raise InvalidArgument(f"{name}: must be >= 0")
        self.n_items = 0
        # session x item, binary rows; data = 1-based last position of the item
        self.session_items = sp.csr_matrix((0, 0), dtype=np.float32)
        self.session_end_ms = np.zeros(0, dtype=np.int64)
        # item -> its sessions, most recent first, capped
        self.item_indptr = np.zeros(1, dtype=np.int64)
        self.item_sessions = np.zeros(0, dtype=np.int32)
        self._prepare()

    def fit(self, sessions: Sessions, n_items: int) -> SessionKNN:
        self.n_items = n_items
        n = len(sessions)
        rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(sessions.indptr))
        positions = (
            np.arange(len(sessions.items))
            - np.repeat(sessions.indptr[:-1], np.diff(sessions.indptr))
        ) + 1
        # Keep each item's last position in its session (max over duplicates).
        matrix = sp.coo_matrix(
            (positions.astype(np.float32), (rows, sessions.items)), shape=(n, n_items)
        )
        matrix = _max_duplicates(matrix)
        self.session_items = matrix
        self.session_end_ms = sessions.end_ms.astype(np.int64)
        self._index(int(self.params["max_sessions_per_item"]))
        self._prepare()
        return self

    def _index(self, cap: int) -> None:
        by_item = self.session_items.tocsc()
        indptr = [0]
        chunks = []
        for i in range(self.n_items):
            s = by_item.indices[by_item.indptr[i] : by_item.indptr[i + 1]]
            if len(s) > cap:
                s = s[np.argsort(-self.session_end_ms[s], kind="stable")[:cap]]
            chunks.append(s.astype(np.int32))
            indptr.append(indptr[-1] + len(s))
        self.item_indptr = np.asarray(indptr, dtype=np.int64)
        self.item_sessions = (
            np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, dtype=np.int32)
        )

    def score(self, session: Sequence[int] | np.ndarray, now_ms: int | None = None) -> np.ndarray:
        """Scores of every item for a live session (item numbers in click order;
        negative numbers, unknown items, are ignored)."""
        return self.score_sparse(session, now_ms).dense()

    def score_sparse(
        self, session: Sequence[int] | np.ndarray, now_ms: int | None = None
    ) -> SparseScores:
        """``score`` as the items the neighbours reach (every other item scores 0):
        serving blends these few instead of a catalog-sized array."""
        cur = np.asarray(session, dtype=np.int64)
        cur = cur[(cur >= 0) & (cur < self.n_items)][-int(self.params["max_session_length"]) :]
        if len(cur) == 0:
            return SparseScores.empty(self.n_items)
        p = self.params
        length = len(cur)
        # Each distinct live item at its last position (1-based). A live session
        # holds a few dozen items at most: a dict beats an array's overhead.
        last = {item: position for position, item in enumerate(cur.tolist(), start=1)}
        order = sorted(last)
        live_pos = np.array([last[i] for i in order], dtype=np.float32)
        lam1 = float(p["position_decay"])
        weight = np.exp((live_pos - length) / lam1) if lam1 > 0 else np.ones_like(live_pos)
        lam2 = float(p["recency_decay_days"])
        reference = 0
        if lam2 > 0:
            reference = int(now_ms) if now_ms is not None else int(self.session_end_ms.max())
        items, scores = knn_scores(
            np.array(order, dtype=np.int64),
            weight.astype(np.float32, copy=False),
            live_pos,
            *self._kernel_arrays,
            int(p["sample_size"]),
            int(p["k"]),
            lam2,
            reference,
            float(p["neighbor_decay"]),
        )
        return SparseScores(items, scores, self.n_items)

    def _prepare(self) -> None:
        """Keeps the index as ``knn_scores`` takes it (``knn_index``: each session
        in one place)."""
        m = self.session_items
        records, item_records = knn_index(
            np.ascontiguousarray(m.indptr, dtype=np.int64),
            np.ascontiguousarray(m.indices, dtype=np.int32),
            np.ascontiguousarray(m.data, dtype=np.float32),
            np.ascontiguousarray(self.session_end_ms, dtype=np.int64),
            np.ascontiguousarray(self.item_sessions, dtype=np.int32),
        )
        for array in (records, item_records):
            array.flags.writeable = False
        self._kernel_arrays: KernelIndex = (
            np.ascontiguousarray(self.item_indptr, dtype=np.int64),
            item_records,
            records,
        )

    def co_occurrence(self, item: int) -> np.ndarray:
        """For every item, in how many of ``item``'s (indexed, most recent) training
        sessions it also appears."""
        sessions = self.item_sessions[self.item_indptr[item] : self.item_indptr[item + 1]]
        at, _ = csr_positions(self.session_items.indptr, sessions)
        items = self.session_items.indices[at]
        counts = np.bincount(items, minlength=self.n_items).astype(np.float32)
        counts[item] = 0.0
        return counts

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        m = self.session_items
        return {
            f"{prefix}indptr": m.indptr.astype(np.int64),
            f"{prefix}indices": m.indices.astype(np.int32),
            f"{prefix}positions": m.data.astype(np.float32),
            f"{prefix}end_ms": self.session_end_ms,
            f"{prefix}item_indptr": self.item_indptr,
            f"{prefix}item_sessions": self.item_sessions,
        }

    @classmethod
    def from_arrays(
        cls, params: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str, n_items: int
    ) -> SessionKNN:
        model = cls(**params)
        indptr = np.asarray(arrays[f"{prefix}indptr"], dtype=np.int64)
        indices = np.asarray(arrays[f"{prefix}indices"], dtype=np.int32)
        positions = np.asarray(arrays[f"{prefix}positions"], dtype=np.float32)
        end_ms = np.asarray(arrays[f"{prefix}end_ms"], dtype=np.int64)
        item_indptr = np.asarray(arrays[f"{prefix}item_indptr"], dtype=np.int64)
        item_sessions = np.asarray(arrays[f"{prefix}item_sessions"], dtype=np.int32)
        n = len(indptr) - 1
        if (
            n < 0
            or len(end_ms) != n
            or len(indices) != len(positions)
            or not np.isfinite(positions).all()
            or not _is_csr(indptr, indices, n_items, sorted_rows=True)
            or not _is_csr(item_indptr, item_sessions, max(n, 0))
            or len(item_indptr) != n_items + 1
            or (n > 0 and np.diff(indptr).min() < 1)  # every session holds an item
        ):
            raise ValueError(f"{prefix}*: session index arrays do not fit together")
        model.n_items = n_items
        model.session_items = sp.csr_matrix((positions, indices, indptr), shape=(n, n_items))
        model.session_end_ms = end_ms
        model.item_indptr = item_indptr
        model.item_sessions = item_sessions
        model._prepare()
        return model


def _is_csr(
    indptr: np.ndarray, indices: np.ndarray, n_columns: int, *, sorted_rows: bool = False
) -> bool:
    """indptr starts at 0, never decreases and ends at len(indices); indices are
    column numbers; with ``sorted_rows`` each row's columns strictly increase (no
    duplicates)."""
    if len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(indices):
        return False
    if (np.diff(indptr) < 0).any():
        return False
    if len(indices) and (indices.min() < 0 or indices.max() >= n_columns):
        return False
    if sorted_rows and len(indices) > 1:
        step = np.diff(indices.astype(np.int64))
        row_start = np.zeros(len(indices), dtype=bool)
        row_start[indptr[:-1][indptr[:-1] < len(indices)]] = True
        if (step[~row_start[1:]] <= 0).any():
            return False
    return True


def _max_duplicates(matrix: sp.coo_matrix) -> sp.csr_matrix:
    """CSR keeping the largest value of duplicate entries (not their sum)."""
    order = np.lexsort((matrix.data, matrix.col, matrix.row))
    r, c, d = matrix.row[order], matrix.col[order], matrix.data[order]
    last = np.ones(len(r), dtype=bool)
    if len(r) > 1:
        last[:-1] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    out = sp.csr_matrix((d[last], (r[last], c[last])), shape=matrix.shape)
    out.sort_indices()
    return out


class SequentialRules:
    """Item-to-item transition rules of click sequences (Ludewig & Jannach's SR)."""

    defaults: ClassVar[dict[str, Any]] = {
        "steps": 10,  # how far ahead in a session a follower still counts
        "max_rules": 50,  # rules kept per item (the strongest)
    }

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise InvalidArgument(f"{sorted(unknown)[0]}: not a sequential-rules parameter")
        self.params: dict[str, Any] = {**self.defaults, **params}
        for name in ("steps", "max_rules"):
            if int(self.params[name]) < 1:
                raise InvalidArgument(f"{name}: must be >= 1")
        self.n_items = 0
        self.rules = sp.csr_matrix((0, 0), dtype=np.float32)
        self._prepare()

    def fit(self, sessions: Sessions, n_items: int) -> SequentialRules:
        self.n_items = n_items
        session_of = np.repeat(np.arange(len(sessions)), np.diff(sessions.indptr))
        items = sessions.items.astype(np.int64)
        rows, cols, vals = [], [], []
        for d in range(1, int(self.params["steps"]) + 1):
            if len(items) <= d:
                break
            same = (session_of[:-d] == session_of[d:]) & (items[:-d] != items[d:])
            rows.append(items[:-d][same])
            cols.append(items[d:][same])
            vals.append(np.full(int(same.sum()), 1.0 / d, dtype=np.float32))
        if rows:
            rules = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(n_items, n_items),
            )
        else:
            rules = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        rules.sum_duplicates()
        self.rules = _top_per_row(rules, int(self.params["max_rules"]))
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Keeps the rules as ``rule_sources`` takes them (contiguous, its dtypes)."""
        self._kernel_arrays = (
            np.ascontiguousarray(self.rules.indptr, dtype=np.int64),
            np.ascontiguousarray(self.rules.indices, dtype=np.int32),
            np.ascontiguousarray(self.rules.data, dtype=np.float32),
        )

    def sources_of(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """For each of ``targets``, the position of the first of ``sources`` with a
        rule leading to it, ``len(sources)`` for none."""
        return rule_sources(
            *self._kernel_arrays,
            np.ascontiguousarray(sources, dtype=np.int64),
            np.ascontiguousarray(targets, dtype=np.int64),
        )

    def score(self, session: Sequence[int] | np.ndarray) -> np.ndarray:
        """Scores of every item: the rules of the live session's last known item."""
        return self.score_sparse(session).dense()

    def score_sparse(self, session: Sequence[int] | np.ndarray) -> SparseScores:
        """``score`` as the items the rules lead to (every other item scores 0)."""
        cur = np.asarray(session, dtype=np.int64)
        cur = cur[(cur >= 0) & (cur < self.n_items)]
        if not len(cur):
            return SparseScores.empty(self.n_items)
        last = int(cur[-1])
        start, end = self.rules.indptr[last], self.rules.indptr[last + 1]
        return SparseScores(
            self.rules.indices[start:end].astype(np.int64),
            self.rules.data[start:end].astype(np.float32),
            self.n_items,
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}indptr": self.rules.indptr.astype(np.int64),
            f"{prefix}indices": self.rules.indices.astype(np.int32),
            f"{prefix}data": self.rules.data.astype(np.float32),
        }

    @classmethod
    def from_arrays(
        cls, params: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str, n_items: int
    ) -> SequentialRules:
        model = cls(**params)
        indptr = np.asarray(arrays[f"{prefix}indptr"], dtype=np.int64)
        indices = np.asarray(arrays[f"{prefix}indices"], dtype=np.int32)
        data = np.asarray(arrays[f"{prefix}data"], dtype=np.float32)
        if (
            len(indptr) != n_items + 1
            or len(data) != len(indices)
            or not np.isfinite(data).all()
            or not _is_csr(indptr, indices, n_items, sorted_rows=True)
        ):
            raise ValueError(f"{prefix}*: rule arrays do not fit together")
        model.n_items = n_items
        model.rules = sp.csr_matrix((data, indices, indptr), shape=(n_items, n_items))
        model._prepare()
        return model


def _top_per_row(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    matrix = matrix.tocsr()
    lengths = np.diff(matrix.indptr)
    if lengths.max(initial=0) <= keep:
        return matrix
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    order = np.lexsort((-matrix.data, rows))  # by row, strongest first
    rank = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], lengths)
    chosen = order[rank < keep]
    out = sp.csr_matrix(
        (matrix.data[chosen], (rows[chosen], matrix.indices[chosen])), shape=matrix.shape
    )
    out.sort_indices()
    return out


#: Session-kNN variants measured beside each other (SKNN is the reference).
VARIANTS: dict[str, dict[str, Any]] = {
    "sknn": {},
    "vsknn": {"position_decay": 3.0},
    "stan": {"position_decay": 3.0, "recency_decay_days": 30.0, "neighbor_decay": 3.0},
}
#: Variants ``choose_blend`` tries (the measured ones plus STAN with other decays).
CANDIDATE_KNN: tuple[dict[str, Any], ...] = (
    *VARIANTS.values(),
    {"position_decay": 1.0, "recency_decay_days": 30.0, "neighbor_decay": 1.0},
    {"position_decay": 6.0, "recency_decay_days": 90.0, "neighbor_decay": 6.0},
)
#: The session-kNN the service uses unless told otherwise.
DEFAULT_KNN = VARIANTS["stan"]
#: The blend when none could be chosen by evaluation: session neighbours rank, rules
#: and the long-term model break their ties and fill short lists (what
#: ``choose_blend`` picked on the DIGINETICA sample).
DEFAULT_BLEND = {"knn": 1.0, "rules": 0.01, "model": 0.03}
BLEND_PARTS = ("knn", "rules", "model")


def csr_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the entries of some rows of a CSR matrix sit (positions into its
    ``indices``/``data``, row by row) and which of ``rows`` (0..len-1) each is from."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    row_of = np.repeat(np.arange(len(rows)), lengths)
    shift = starts - (np.cumsum(lengths) - lengths)  # a row's position minus its output offset
    return np.arange(len(row_of)) + shift[row_of], row_of


#: No model scores (an empty float32 array, for the compiled blends).
NO_SCORES = np.zeros(0, dtype=np.float32)


def normalized(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] by the range of their finite values (all zero when
    flat; non-finite scores become 0). float32 out; the usual case (every score
    finite) takes two reductions and two in-place passes over the array."""
    scores = np.asarray(scores)
    if scores.size:
        lo, hi = float(scores.min()), float(scores.max())
        if math.isfinite(lo) and math.isfinite(hi):  # then every score is finite
            if hi <= lo:
                return np.zeros(scores.shape, dtype=np.float32)
            out = np.subtract(scores, lo, dtype=np.float64)
            out /= hi - lo
            return out.astype(np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if not finite.any():
        return np.zeros(scores.shape, dtype=np.float32)
    lo, hi = float(scores[finite].min()), float(scores[finite].max())
    if hi <= lo:
        return np.zeros(scores.shape, dtype=np.float32)
    return np.where(finite, (scores - lo) / (hi - lo), 0.0).astype(np.float32)


@dataclass(frozen=True)
class SparseScores:
    """Scores of some items of a catalog of ``n_items``; every other item scores 0.
    ``items`` are distinct item numbers (int64), ``scores`` float32."""

    items: np.ndarray
    scores: np.ndarray
    n_items: int

    @classmethod
    def empty(cls, n_items: int) -> SparseScores:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), n_items)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.n_items, dtype=np.float32)
        out[self.items] = self.scores
        return out

    def nonzero(self) -> np.ndarray:
        """The items scoring other than 0."""
        return self.items[self.scores != 0]

    def normalized(self) -> SparseScores | None:
        """``normalized(self.dense())`` at ``items`` (the same values, computed the
        same way), or None when the items left out would not scale to 0: a
        negative score, every item scored, or a score that is not finite."""
        if not len(self.scores):
            return self
        lo, hi = float(self.scores.min()), float(self.scores.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        if len(self.items) < self.n_items:  # the catalog-wide range includes the 0s
            if lo < 0:
                return None
            lo = 0.0
        if hi <= lo:
            return SparseScores.empty(self.n_items)
        out = np.subtract(self.scores, lo, dtype=np.float64)
        out /= hi - lo
        return SparseScores(self.items, out.astype(np.float32), self.n_items)


@dataclass
class SessionRecommender:
    """The session models of an artifact plus the weights blending them with the
    long-term model: ``blend[part] * normalized(scores of part)`` summed."""

    knn: SessionKNN
    rules: SequentialRules
    blend: dict[str, float]

    @classmethod
    def fit(
        cls,
        sessions: Sessions,
        n_items: int,
        *,
        knn_params: dict[str, Any] | None = None,
        rules_params: dict[str, Any] | None = None,
        blend: dict[str, float] | None = None,
    ) -> SessionRecommender:
        return cls(
            SessionKNN(**(knn_params or {})).fit(sessions, n_items),
            SequentialRules(**(rules_params or {})).fit(sessions, n_items),
            check_blend(blend or DEFAULT_BLEND),
        )

    def parts(self, session: np.ndarray, now_ms: int | None = None) -> dict[str, SparseScores]:
        return {
            "knn": self.knn.score_sparse(session, now_ms),
            "rules": self.rules.score_sparse(session),
        }

    def combine(
        self, parts: dict[str, SparseScores], model_scores: np.ndarray | None
    ) -> np.ndarray:
        """``blend[part] * normalized(part)`` summed over the parts and the model's
        scores (float32). The session parts are added at their few items only:
        the sum is the same, bit for bit, as over catalog-sized arrays."""
        total = self.parts_total(parts)
        weight = self.blend.get("model", 0.0)
        if model_scores is not None and weight:
            dense = normalized(model_scores)
            dense *= np.float32(weight)
            total += dense
        return total

    def normalized_combine(
        self, parts: dict[str, SparseScores], model_scores: np.ndarray | None
    ) -> np.ndarray:
        """``normalized(self.combine(parts, model_scores))``: the same values, in
        one compiled pass over the catalog when the model's scores are float32
        (``normalized`` of float64 scores works in float64: numpy does those)."""
        weight = self.blend.get("model", 0.0)
        model = model_scores if model_scores is not None and weight else NO_SCORES
        if model.dtype == np.float32:
            total = self.parts_total(parts)
            if blend_normalized(total, np.ascontiguousarray(model), weight):
                return total
        return normalized(self.combine(parts, model_scores))

    def parts_total(self, parts: dict[str, SparseScores]) -> np.ndarray:
        """``combine`` of the session parts alone (float32, a new array)."""
        total = np.zeros(self.knn.n_items, dtype=np.float32)
        for name, sparse in parts.items():
            weight = self.blend.get(name, 0.0)
            # ``sparse.normalized()`` added at its items, in one compiled pass.
            if weight and not add_normalized(total, sparse.items, sparse.scores, weight):
                dense = normalized(sparse.dense())  # the items left out would not scale to 0
                dense *= np.float32(weight)
                total += dense
        return total

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**self.knn.to_arrays("session_knn_"), **self.rules.to_arrays("session_rules_")}

    def describe(self) -> dict[str, Any]:
        return {"knn": self.knn.params, "rules": self.rules.params, "blend": self.blend}

    @classmethod
    def from_arrays(
        cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], n_items: int
    ) -> SessionRecommender:
        return cls(
            SessionKNN.from_arrays(meta["knn"], arrays, "session_knn_", n_items),
            SequentialRules.from_arrays(meta["rules"], arrays, "session_rules_", n_items),
            check_blend(meta["blend"]),
        )


def check_blend(blend: dict[str, float]) -> dict[str, float]:
    unknown = set(blend) - set(BLEND_PARTS)
    if unknown:
        raise InvalidArgument(f"blend: unknown part {sorted(unknown)[0]!r} (use {BLEND_PARTS})")
    out = {name: float(blend.get(name, 0.0)) for name in BLEND_PARTS}
    if any(v < 0 or not np.isfinite(v) for v in out.values()) or not any(out.values()):
        raise InvalidArgument(f"blend: weights must be >= 0 and not all 0, got {out}")
    return out
