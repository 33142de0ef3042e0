"""Top-k items by inner product with a user vector: exact, or a faiss index for big catalogs.

Factor models serve a user as ``u @ item_factors.T`` and the best ``k`` of it
(:func:`training.models.top_k`). Past about 100k items that full product is
most of a Recommend call, so :func:`build_item_index` puts an approximate
nearest-neighbour (ANN) index behind the same interface:

* :class:`ExactIndex`: the full product and :func:`training.models.top_k`
  (ties by lower item number). Below ``min_items`` this is what you get.
* :class:`FaissIndex`: faiss HNSW with inner product (``method="hnsw"``, the
  default) or IVF-Flat with inner product (``method="ivf"``). Its search
  parameter (``efSearch`` / ``nprobe``) is tuned at build time to the smallest
  value whose recall@10 against exact search reaches ``target_recall`` on a
  sample of user vectors, with each query's own items excluded, as in serving.
  Pass real ones (folded-in users of the training matrix and their rows) when
  there are any: the synthetic ones of :func:`user_like_queries` tracked real
  users within 0.02 at 100k items, but were 0.13 optimistic at 20k items.

Why HNSW with inner product (measured on ALS factors, 100k items x 64, with
``bench/ann.py``'s data; recall@10 with each user's own items excluded): the
item norms of such factors are very skewed (median about 0.01, the largest
about 4), which decides it.

* HNSW, inner product, M=32, efConstruction=200: recall 0.95-0.96 at
  efSearch 64-96, p50 about 0.3 ms against 2-3 ms exact; 50 MiB (its own copy
  of the vectors, 25 MiB, plus the graph); 12-25 s to build on 2 cores.
  M=16 plateaus at 0.93; efConstruction 100 costs 0.01 of recall.
* IVF-Flat, inner product (nlist about sqrt(n)): 3 s to build, 25 MiB, 0.95 at
  nprobe 32 on users with about 15 items each, but on sparse users (about 5
  items) 0.71 at nprobe 48 of 256: not robust.
* HNSW on normalised vectors plus one augmented coordinate (the usual
  inner-product-to-L2 reduction): recall 0.1-0.25, as the augmented coordinate
  dominates every low-norm item.
* hnswlib 0.8 (inner product; only an sdist here, built with a C++ compiler):
  about faiss HNSW's recall and speed, so not worth a compiled dependency.

HNSW's known weakness with inner product: most low-norm items get no incoming
link, so some items can never be found; recall plateaus (0.96-0.97 at 100k
items, about 0.92 on sparse data at 20k items) and :meth:`FaissIndex.tune`
records whether the target was reached.

Excluded items (what a user has already seen) are handled by asking faiss for
``k + len(exclude) + margin`` candidates and dropping the excluded ones; if
fewer than ``k`` remain the search is widened, and finally answered exactly,
so a search always returns ``min(k, allowed items)`` results. Candidates are
rescored with numpy (``item_factors[idx] @ query``) and ordered by score, then
item number, so the scores are those exact search would give.

Indices persist as one ``uint8`` array (:meth:`ItemIndex.to_bytes`: a JSON
header, then ``faiss.serialize_index``), storable in an ``.npz`` loaded with
``allow_pickle=False``; :meth:`ItemIndex.from_bytes` checks that the index was
built for the item factors it is given.

Threads: queries run with ``faiss.omp_set_num_threads(1)`` (process-wide; many
request threads each search one user, and an OpenMP team per call would only
add contention). Builds use all cores, then set it back to 1. A built index is
only read (the search parameters go with each call), and faiss allows
concurrent searches; its Python interface releases the GIL in its calls
(faiss wiki, "Threads and asynchronous calls"), though this module has not
measured the parallel speed-up.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sessionrec.arrays import contained, distinct
from training.models import top_k

__all__ = [
    "ExactIndex",
    "FaissIndex",
    "ItemIndex",
    "build_item_index",
    "recall_at_k",
    "user_like_queries",
]

#: ``efSearch`` (HNSW) / ``nprobe`` (IVF) values tried by the tuning, in order.
HNSW_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
IVF_NPROBE = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: HNSW graph parameters (measured on ALS factors: see the module docstring).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200

_MAGIC = b"sessann1"
#: Widen (double the candidates and the search parameter) at most this many times.
_WIDENINGS = 3
#: Answer exactly when the candidates needed exceed this share of the catalog.
_EXACT_SHARE = 0.25

Progress = Callable[[str], None]


def _faiss() -> Any:
    """faiss, imported when first needed (its type stubs miss much of the API)."""
    import faiss

    return faiss


def _factors(item_factors: np.ndarray) -> np.ndarray:
    factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    if factors.ndim != 2:
        raise ValueError(f"item_factors: expected 2 dimensions, got {factors.ndim}")
    return factors


def _fingerprint(factors: np.ndarray) -> str:
    return hashlib.sha256(factors.data).hexdigest()


def _exclusion(exclude: np.ndarray | Sequence[int] | None, n_items: int) -> np.ndarray:
    """Sorted unique item numbers in ``[0, n_items)`` (others cannot be returned anyway)."""
    if exclude is None:
        return np.empty(0, dtype=np.int64)
    items = distinct(np.asarray(exclude, dtype=np.int64))
    return items[(items >= 0) & (items < n_items)]


class ItemIndex(abc.ABC):
    """The best ``k`` items by inner product with a query vector.

    ``item_factors`` (``n_items x f``) is kept (not copied when it is already
    C-contiguous float32): scores are always ``item_factors[idx] @ query``.
    ``info`` describes the index (parameters, measured recall, build seconds)."""

    kind: str

    def __init__(self, item_factors: np.ndarray, info: dict[str, Any] | None = None):
        self.item_factors = _factors(item_factors)
        self.n_items, self.dim = self.item_factors.shape
        self.info: dict[str, Any] = dict(info or {})

    def _query(self, query: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(query, dtype=np.float32).ravel()
        if q.shape != (self.dim,):
            raise ValueError(f"query: expected {self.dim} values, got {q.size}")
        return q

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        qs = np.ascontiguousarray(queries, dtype=np.float32)
        if qs.ndim != 2 or qs.shape[1] != self.dim:
            raise ValueError(f"queries: expected shape (q, {self.dim}), got {qs.shape}")
        return qs

    def _exact(self, q: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx, scores = top_k(self.item_factors @ q, k, excluded)
        return idx, scores.astype(np.float32, copy=False)

    @abc.abstractmethod
    def search(
        self, query: np.ndarray, k: int, exclude: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item numbers (int64) and scores (float32) of the best ``k`` items by
        inner product with ``query`` (shape ``(f,)``), best first, never one in
        ``exclude``; ``min(k, allowed items)`` of them."""

    @abc.abstractmethod
    def search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items for each row of ``queries`` (``q x f``), nothing
        excluded: item numbers ``(q, k)`` int64 (-1 where there are fewer than
        ``k`` items) and scores ``(q, k)`` float32 (-inf there)."""

    @property
    def nbytes(self) -> int:
        """Memory the index holds beyond ``item_factors`` (0 for exact search)."""
        return 0

    def _payload(self) -> np.ndarray:
        return np.empty(0, dtype=np.uint8)

    def to_bytes(self) -> np.ndarray:
        """The index as one uint8 array (an ``.npz`` member, no pickle)."""
        header = json.dumps(
            {
                "kind": self.kind,
                "n_items": self.n_items,
                "dim": self.dim,
                "factors_sha256": _fingerprint(self.item_factors),
                "info": self.info,
            },
            sort_keys=True,
        ).encode()
        prefix = np.frombuffer(_MAGIC + struct.pack("<Q", len(header)) + header, dtype=np.uint8)
        return np.concatenate([prefix, self._payload()])

    @classmethod
    def from_bytes(cls, data: np.ndarray, item_factors: np.ndarray) -> ItemIndex:
        """An index saved with :meth:`to_bytes`, for the same ``item_factors``
        (``ValueError`` when it was built for others or is not an index)."""
        raw = np.ascontiguousarray(data, dtype=np.uint8).ravel()
        start = len(_MAGIC) + 8
        if raw.size < start or raw[: len(_MAGIC)].tobytes() != _MAGIC:
            raise ValueError("item index: not a saved item index")
        (length,) = struct.unpack("<Q", raw[len(_MAGIC) : start].tobytes())
        if raw.size < start + length:
            raise ValueError("item index: truncated header")
        header = json.loads(raw[start : start + length].tobytes())
        factors = _factors(item_factors)
        if tuple(factors.shape) != (header["n_items"], header["dim"]):
            raise ValueError(
                f"item index: built for {header['n_items']} x {header['dim']} item factors, "
                f"given {factors.shape[0]} x {factors.shape[1]}"
            )
        if _fingerprint(factors) != header["factors_sha256"]:
            raise ValueError("item index: built for different item factors")
        payload = raw[start + length :]
        index: ItemIndex
        if header["kind"] == ExactIndex.kind:
            index = ExactIndex(factors, info=header["info"])
        elif header["kind"] in FaissIndex.KINDS.values():
            index = FaissIndex._load(payload, factors, header["info"])
        else:
            raise ValueError(f"item index: unknown kind {header['kind']!r}")
        if not isinstance(index, cls):
            raise ValueError(f"item index: a {index.kind} index, not a {cls.__name__}")
        return index

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.n_items} x {self.dim}>"


class ExactIndex(ItemIndex):
    """Exact search: the full product and :func:`training.models.top_k`."""

    kind = "exact"

    def search(
        self, query: np.ndarray, k: int, exclude: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._exact(self._query(query), int(k), _exclusion(exclude, self.n_items))

    def search_batch(
        self, queries: np.ndarray, k: int, *, chunk: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        qs = self._queries(queries)
        idx = np.full((len(qs), k), -1, dtype=np.int64)
        scores = np.full((len(qs), k), -np.inf, dtype=np.float32)
        for begin in range(0, len(qs), chunk):
            block = qs[begin : begin + chunk] @ self.item_factors.T
            for row, s in enumerate(block, start=begin):
                i, v = top_k(s, k)
                idx[row, : len(i)], scores[row, : len(i)] = i, v
        return idx, scores


class FaissIndex(ItemIndex):
    """A faiss index (HNSW or IVF-Flat, inner product) over ``item_factors``.

    ``search_param`` is ``efSearch`` (HNSW) or ``nprobe`` (IVF); it may be
    changed after construction (the tuning does), and the per-call search
    parameters make concurrent searches safe."""

    KINDS = {"hnsw": "faiss_hnsw", "ivf": "faiss_ivf"}

    def __init__(
        self,
        index: Any,
        item_factors: np.ndarray,
        *,
        method: str,
        search_param: int,
        info: dict[str, Any] | None = None,
    ):
        faiss = _faiss()

        super().__init__(item_factors, info)
        if method not in self.KINDS:
            raise ValueError(f"method: expected one of {sorted(self.KINDS)}, got {method!r}")
        if index.ntotal != self.n_items or index.d != self.dim:
            raise ValueError("index: does not hold item_factors")
        self.kind = self.KINDS[method]
        self.method = method
        self._index = index
        self._params: dict[int, Any] = {}
        self._nbytes: int | None = None
        self.search_param = int(search_param)
        faiss.omp_set_num_threads(1)

    @property
    def search_param(self) -> int:
        return self._search_param

    @search_param.setter
    def search_param(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"search_param: must be at least 1, got {value}")
        self._search_param = int(value)
        self.info["search_param"] = self._search_param

    def _search_params(self, value: int) -> Any:
        params = self._params.get(value)
        if params is None:
            faiss = _faiss()

            if self.method == "hnsw":
                params = faiss.SearchParametersHNSW()
                params.efSearch = value
            else:
                params = faiss.SearchParametersIVF()
                params.nprobe = min(value, self._index.nlist)
            self._params[value] = params
        return params

    def _candidates(self, qs: np.ndarray, fetch: int, value: int) -> np.ndarray:
        _, found = self._index.search(qs, fetch, params=self._search_params(value))
        return found  # type: ignore[no-any-return]

    def search(
        self, query: np.ndarray, k: int, exclude: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = self._query(query)
        excluded = _exclusion(exclude, self.n_items)
        k = min(int(k), self.n_items - len(excluded))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        fetch = k + len(excluded) + max(8, k // 2)
        value = self._search_param
        for _ in range(_WIDENINGS + 1):
            if fetch > _EXACT_SHARE * self.n_items:
                break
            found = self._candidates(q[None], fetch, value)[0]
            found = found[found >= 0]
            if len(excluded):  # excluded is sorted
                found = found[~contained(found, excluded)]
            if len(found) >= k:
                scores = self.item_factors[found] @ q
                order = np.lexsort((found, -scores))[:k]
                return found[order], scores[order]
            fetch, value = 2 * fetch, 2 * value
        return self._exact(q, k, excluded)

    def search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        qs = self._queries(queries)
        if k > self.n_items:
            idx = np.full((len(qs), k), -1, dtype=np.int64)
            idx[:, : self.n_items] = self.search_batch(qs, self.n_items)[0]
        else:
            idx = self._candidates(qs, k, self._search_param)
        scores = np.einsum("qkf,qf->qk", self.item_factors[np.maximum(idx, 0)], qs)
        scores[idx < 0] = -np.inf
        order = np.lexsort((idx, -scores), axis=1)
        return np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)

    def tune(
        self,
        queries: np.ndarray,
        query_exclude: Sequence[np.ndarray] | None = None,
        *,
        target_recall: float = 0.95,
        k: int = 10,
        source: str = "given",
    ) -> dict[str, Any]:
        """Sets ``search_param`` to the smallest tried value (``HNSW_EF_SEARCH`` /
        ``IVF_NPROBE``) whose recall@``k`` against exact search reaches
        ``target_recall`` over ``queries``, each with its ``query_exclude`` items
        excluded as in serving. When none does (HNSW's recall plateaus: see the
        module docstring), to the smallest within 0.005 of the best recall
        reached, with ``target_reached`` false: larger values only cost time.
        Records it all in ``info`` and returns that."""
        started = time.perf_counter()
        qs = self._queries(queries)
        histories = _histories(qs, query_exclude)
        exact = ExactIndex(self.item_factors)
        truth = [exact.search(q, k, h)[0] for q, h in zip(qs, histories, strict=True)]
        values: tuple[int, ...] = HNSW_EF_SEARCH
        if self.method == "ivf":
            nlist = int(self._index.nlist)
            values = (*(v for v in IVF_NPROBE if v < nlist), nlist)
        tried: list[tuple[int, float]] = []
        for value in values:
            self.search_param = value
            found = [self.search(q, k, h)[0] for q, h in zip(qs, histories, strict=True)]
            tried.append((value, round(recall_at_k(found, truth), 4)))
            if tried[-1][1] >= target_recall:
                break
        value, recall = tried[-1]
        if recall < target_recall:  # a plateau: the smallest value within 0.005 of the best
            best = max(r for _, r in tried)
            value, recall = next((v, r) for v, r in tried if r >= best - 0.005)
        self.search_param = value
        self.info.update(
            {
                "search_param_name": "ef_search" if self.method == "hnsw" else "nprobe",
                "search_param": int(value),
                "recall": recall,
                "k": k,
                "target_recall": target_recall,
                "target_reached": recall >= target_recall,
                "tried": [[v, r] for v, r in tried],
                "tune_queries": len(qs),
                "tune_source": source,
                "tune_seconds": round(time.perf_counter() - started, 3),
            }
        )
        return self.info

    @property
    def nbytes(self) -> int:
        """The index's own memory: its copy of the vectors plus the graph or lists
        (measured as the size of its serialised form)."""
        if self._nbytes is None:
            self._nbytes = int(self._payload().nbytes)
        return self._nbytes

    def _payload(self) -> np.ndarray:
        faiss = _faiss()

        return faiss.serialize_index(self._index)  # type: ignore[no-any-return]

    @classmethod
    def _load(cls, payload: np.ndarray, factors: np.ndarray, info: dict[str, Any]) -> FaissIndex:
        faiss = _faiss()

        method = info.get("method")
        if method not in cls.KINDS:
            raise ValueError(f"item index: unknown faiss method {method!r}")
        index = faiss.deserialize_index(np.ascontiguousarray(payload))
        return cls(index, factors, method=method, search_param=info["search_param"], info=info)


def recall_at_k(
    approx_idx: np.ndarray | Sequence[np.ndarray], exact_idx: np.ndarray | Sequence[np.ndarray]
) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| (rows of item numbers,
    -1 entries ignored; queries whose exact row is empty are left out)."""
    if len(approx_idx) != len(exact_idx):
        raise ValueError(f"recall_at_k: {len(approx_idx)} approximate rows, {len(exact_idx)} exact")
    shares = []
    for got, want in zip(approx_idx, exact_idx, strict=True):
        truth = np.asarray(want)
        truth = truth[truth >= 0]
        if len(truth):
            shares.append(len(np.intersect1d(np.asarray(got), truth)) / len(truth))
    return float(np.mean(shares)) if shares else 1.0


def user_like_queries(
    item_factors: np.ndarray,
    n: int = 300,
    *,
    seed: int = 0,
    history: tuple[int, int] = (2, 20),
    neighbourhood: int = 1000,
    regularization: float = 0.05,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` synthetic user vectors and each one's history (the items to exclude).

    A history is one item drawn with probability proportional to its factor norm
    (ALS gives popular items the larger norms), then 1-19 more from the
    ``neighbourhood`` items closest to it by cosine, also by norm: a user with a
    taste, not a mix of the whole catalog (such mixes point at the popular
    items, which are easy to find, and made the tuning optimistic). The vector
    is implicit ALS's fold-in of the history with confidence 1:
    ``(YᵀY + λI)⁻¹ Σ y_i``. On the benchmark's ALS factors, recall@10 on these
    tracks that on real users within about 0.01 (slightly below it)."""
    factors = _factors(item_factors)
    n_items, dim = factors.shape
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(factors, axis=1).astype(np.float64)
    weight = norms if norms.sum() > 0 else np.ones(n_items)
    unit = factors / np.maximum(norms, 1e-30).astype(np.float32)[:, None]
    pool = min(neighbourhood, n_items)
    gram = factors.T.astype(np.float64) @ factors + regularization * np.eye(dim)
    sums = np.empty((n, dim), dtype=np.float64)
    histories = []
    for row in range(n):
        first = int(rng.choice(n_items, p=weight / weight.sum()))
        near = np.argpartition(-(unit @ unit[first]), pool - 1)[:pool]
        near = near[(near != first) & (weight[near] > 0)]
        size = min(int(rng.integers(history[0], history[1] + 1)) - 1, len(near))
        others = (
            rng.choice(near, size, replace=False, p=weight[near] / weight[near].sum())
            if size > 0
            else near[:0]
        )
        items = np.sort(np.r_[first, others]).astype(np.int64)
        sums[row] = factors[items].sum(axis=0)
        histories.append(items)
    queries = np.linalg.solve(gram, sums.T).T.astype(np.float32)
    return np.ascontiguousarray(queries), histories


def _build_faiss(factors: np.ndarray, method: str, seed: int) -> tuple[Any, dict[str, Any]]:
    faiss = _faiss()

    dim = factors.shape[1]
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(factors)
        return index, {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
    if method == "ivf":
        nlist = max(1, min(int(np.sqrt(len(factors))), len(factors) // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(factors)
        index.add(factors)
        return index, {"nlist": nlist}
    raise ValueError(f"method: expected 'hnsw' or 'ivf', got {method!r}")


def _histories(queries: np.ndarray, query_exclude: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    if query_exclude is None:
        return [np.empty(0, dtype=np.int64)] * len(queries)
    if len(query_exclude) != len(queries):
        raise ValueError(f"query_exclude: {len(query_exclude)} entries for {len(queries)} queries")
    return [np.asarray(h, dtype=np.int64) for h in query_exclude]


def build_item_index(
    item_factors: np.ndarray,
    *,
    min_items: int = 100_000,
    target_recall: float = 0.95,
    method: str = "hnsw",
    queries: np.ndarray | None = None,
    query_exclude: Sequence[np.ndarray] | None = None,
    tune_queries: int = 300,
    k: int = 10,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ItemIndex:
    """An :class:`ExactIndex` below ``min_items`` items, else a tuned :class:`FaissIndex`.

    The faiss index is built with ``threads`` (default: all cores; then queries
    get one), and tuned with :meth:`FaissIndex.tune` on ``queries`` /
    ``query_exclude`` when given (e.g. folded-in users of the training matrix
    and their rows: the best sample there is), else on ``tune_queries``
    :func:`user_like_queries`. ``info`` records the method, its parameters, the
    recall reached, and the build and tuning seconds."""
    faiss = _faiss()

    factors = _factors(item_factors)
    n_items, dim = factors.shape
    if n_items < min_items:
        return ExactIndex(factors, info={"min_items": min_items})
    say = progress or (lambda _message: None)
    source = "given"
    if queries is None:
        queries, query_exclude = user_like_queries(factors, tune_queries, seed=seed)
        source = "synthetic"
    started = time.perf_counter()
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    try:
        index, params = _build_faiss(factors, method, seed)
    finally:
        faiss.omp_set_num_threads(1)
    build_seconds = time.perf_counter() - started
    say(f"item index: faiss {method} {params} over {n_items:,} x {dim} in {build_seconds:.1f} s")
    ann = FaissIndex(
        index,
        factors,
        method=method,
        search_param=1,
        info={
            "method": method,
            **params,
            "min_items": min_items,
            "build_seconds": round(build_seconds, 3),
            "faiss_version": faiss.__version__,
        },
    )
    ann.tune(queries, query_exclude, target_recall=target_recall, k=k, source=source)
    say(
        f"item index: {ann.info['search_param_name']}={ann.search_param} reaches "
        f"recall@{k} {ann.info['recall']:.3f} (target {target_recall}) on "
        f"{ann.info['tune_queries']} {source} queries in {ann.info['tune_seconds']:.1f} s"
    )
    return ann
