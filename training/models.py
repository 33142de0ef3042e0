"""One small recommender interface, implemented by every algorithm.

Every model scores items for *weighted user rows* (a user's interactions as a
1 x n_items sparse row), so the same call serves users seen in training and
users who arrived a second ago: factor models fold the row in (ALS's exact
least-squares user solve), neighbourhood models sum item similarities.

Models persist as plain numpy arrays (``to_arrays`` / ``from_arrays``); the
artifact module writes them to ``.npz`` and loads them with
``allow_pickle=False``.
"""

from __future__ import annotations

import abc
import sys
import warnings
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from sessionrec.errors import FailedPrecondition, InvalidArgument


class Recommender(abc.ABC):
    algorithm: ClassVar[str]
    #: Hyper-parameters with their defaults; ``params`` holds the effective values.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgument(f"{name}: not a parameter of {self.algorithm}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.n_items = 0

    @abc.abstractmethod
    def fit(self, matrix: sp.csr_matrix, *, show_progress: bool = False) -> None:
        """Learns from a weighted user x item matrix."""

    @abc.abstractmethod
    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores of every item (dense ``len(rows) x n_items``) for weighted user rows."""

    def user_vectors(self, rows: sp.csr_matrix) -> np.ndarray | None:
        """Users folded into the latent space, when ``score`` is their inner
        product with the model's ``item_factors`` (what an item index searches);
        None for models that score otherwise."""
        return None

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """``score`` of users already folded in (what ``user_vectors`` gave)."""
        raise NotImplementedError(f"{self.algorithm}: scores rows, has no user vectors")

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items most similar to ``item`` (itself excluded), best first."""
        sims = self.item_similarity(np.array([item]), np.arange(self.n_items))[:, 0]
        sims[item] = -np.inf
        return top_k(sims, n)

    @abc.abstractmethod
    def item_similarity(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Similarity matrix ``len(others) x len(items)`` (used to explain recommendations)."""

    @abc.abstractmethod
    def to_arrays(self) -> dict[str, np.ndarray]: ...

    @classmethod
    @abc.abstractmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Recommender: ...


def top_k(
    scores: np.ndarray, k: int, exclude: np.ndarray | None = None, *, copy: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best finite scores (``exclude``: indices to skip).
    float64 scores stay float64 (popularity tie-breaks live below float32 precision).
    ``copy=False``: ``scores`` (float32 or float64) is the caller's scratch array
    and may be overwritten."""
    dtype = np.float64 if np.asarray(scores).dtype == np.float64 else np.float32
    if copy or not isinstance(scores, np.ndarray) or scores.dtype != dtype:
        scores = np.array(scores, dtype=dtype, copy=True)
    if exclude is not None and len(exclude):
        scores[exclude] = -np.inf
    finite = np.isfinite(scores)
    available = int(np.count_nonzero(finite))
    k = min(k, available)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    if available < len(scores):
        scores[~finite] = -np.inf  # NaN would sort above everything
    # The k-th best score; every item scoring at least that is a candidate, so
    # ties at the cut are resolved by index (deterministic), not by partition order.
    cut = len(scores) - k
    kth = np.partition(scores, cut)[cut]
    candidates = np.flatnonzero(scores >= kth)
    order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
    return order.astype(np.int64), scores[order]


def break_ties_by_popularity(scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Adds a popularity term far below any real score difference, so items a
    model scores equally (e.g. that no neighbour reaches) rank by popularity.
    Serving and evaluation both rank through this."""
    # float64: at float32 precision the tie-break term vanishes next to scores near 1.
    return np.asarray(scores, dtype=np.float64) + tie_breaks(popularity)


def tie_breaks(popularity: np.ndarray) -> np.ndarray:
    """The popularity term ``break_ties_by_popularity`` adds (float64; callers
    ranking many times with one popularity may keep it)."""
    top = float(popularity.max()) if len(popularity) else 1.0
    return 1e-6 * (np.asarray(popularity, dtype=np.float64) / max(top, 1.0))


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _normalized(factors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(factors, axis=1)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(factors / norms[:, None], dtype=np.float32)


def by_factor(factors: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """``factors`` (items x factors) transposed: a C-contiguous factors x items copy.

    ``users @ by_factor(f)`` is ``users @ f.T``, equal up to float rounding (the
    sums are accumulated in another order), and about twice as fast when the
    factors are not in the CPU's caches, as for a request served between others:
    BLAS streams the matrix row after row instead of taking one dot product per
    item (measured on 20,000 x 64 float32 after an 8 MB pass: 0.32-0.35 against
    0.69-0.71 ms)."""
    return np.ascontiguousarray(factors.T, dtype=dtype)


def _cosine(unit: np.ndarray, items: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Cosine similarities from row-normalised factors (``len(others) x len(items)``)."""
    return unit[others] @ unit[items].T


def _least_squares_fold_in(
    item_factors: np.ndarray, yty: np.ndarray, rows: sp.csr_matrix, regularization: float
) -> np.ndarray:
    """Implicit-ALS user solve: x = (YtY + Yt(C-I)Y + reg*I)^-1 Yt C p for each row."""
    f = item_factors.shape[1]
    out = np.zeros((rows.shape[0], f), dtype=np.float32)
    base = yty + regularization * np.eye(f)
    for r in range(rows.shape[0]):
        start, end = rows.indptr[r], rows.indptr[r + 1]
        if start == end:
            continue
        idx = rows.indices[start:end]
        conf = rows.data[start:end].astype(np.float64)
        y = item_factors[idx].astype(np.float64)
        a = base + (y.T * (conf - 1.0)) @ y
        b = y.T @ conf
        out[r] = np.linalg.solve(a, b)
    return out


class ALSRecommender(Recommender):
    """implicit's Alternating Least Squares; live users are folded in exactly."""

    algorithm = "als"
    defaults = {
        # Chosen on MovieLens 100K (per-user temporal 80/20): NDCG@10 0.197-0.199
        # over three seeds, against 0.188 for 64 factors / reg 0.1 / alpha 2.
        "factors": 32,
        "regularization": 0.05,
        "alpha": 1.0,
        "iterations": 15,
        "random_state": 42,
        "num_threads": 2,
        # "auto": fit on the GPU when implicit was built with CUDA and sees one;
        # the factors always come back to the CPU, where serving folds users in.
        "use_gpu": "auto",
        # "spark": fit with Spark MLlib's implicit ALS instead (training.spark_als,
        # the `spark` extra); the same objective, artifact and serving.
        "engine": "implicit",
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.params["use_gpu"] not in ("auto", True, False):
            raise InvalidArgument("use_gpu: must be auto, true or false")
        if self.params["engine"] not in ("implicit", "spark"):
            raise InvalidArgument("engine: must be implicit or spark")
        if self.params["engine"] == "spark" and self.params["use_gpu"] is True:
            raise InvalidArgument("use_gpu: not with engine spark (Spark fits on its own CPUs)")
        self._model: Any = None
        self._unit: np.ndarray | None = None
        #: ``(item_factors, by_factor(item_factors))``, made on the first product.
        self._by_factor: tuple[np.ndarray, np.ndarray] | None = None
        #: What the last fit wants recorded in the artifact's metadata (Spark's settings).
        self.fit_info: dict[str, Any] = {}

    def _gpu(self) -> bool:
        choice = self.params["use_gpu"]
        if choice is False:
            return False
        import implicit.gpu

        if choice is True and not implicit.gpu.HAS_CUDA:
            raise FailedPrecondition("use_gpu: implicit has no CUDA support on this machine")
        return bool(implicit.gpu.HAS_CUDA)

    def _implicit(self) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        with threadpool_limits(1, "blas"):
            return AlternatingLeastSquares(
                factors=int(p["factors"]),
                regularization=float(p["regularization"]),
                alpha=float(p["alpha"]),
                iterations=int(p["iterations"]),
                random_state=int(p["random_state"]),
                num_threads=int(p["num_threads"]),
            )

    def fit(self, matrix: sp.csr_matrix, *, show_progress: bool = False) -> None:
        if self.params["engine"] == "spark":
            from training.spark_als import fit_item_factors

            factors, self.fit_info = fit_item_factors(
                matrix, self.params, progress=_stderr_line if show_progress else None
            )
            model = self._implicit()
            model.item_factors = factors
        elif self._gpu():  # not exercised by the CPU-only test suite
            from implicit.gpu.als import AlternatingLeastSquares as GpuALS

            p = self.params
            gpu_model = GpuALS(
                factors=int(p["factors"]),
                regularization=float(p["regularization"]),
                alpha=float(p["alpha"]),
                iterations=int(p["iterations"]),
                random_state=int(p["random_state"]),
            )
            gpu_model.fit(matrix.tocsr(), show_progress=show_progress)
            model = self._implicit()
            model.item_factors = np.ascontiguousarray(gpu_model.to_cpu().item_factors)
        else:
            model = self._implicit()
            with threadpool_limits(1, "blas"):
                model.fit(matrix.tocsr(), show_progress=show_progress)
        model.user_factors = np.zeros((0, model.item_factors.shape[1]), dtype=np.float32)
        self._model = model
        self.n_items = matrix.shape[1]

    @property
    def item_factors(self) -> np.ndarray:
        return self._model.item_factors  # type: ignore[no-any-return]

    def user_vectors(self, rows: sp.csr_matrix) -> np.ndarray:
        users = self._model.recalculate_user(np.arange(rows.shape[0]), rows.tocsr())
        return np.asarray(users, dtype=np.float32)

    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        return self.score_vectors(self.user_vectors(rows))

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        factors = self.item_factors
        kept = self._by_factor
        if kept is None or kept[0] is not factors:  # first use, or new factors
            kept = self._by_factor = (factors, by_factor(factors))
        return np.asarray(vectors @ kept[1])

    def item_similarity(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        if self._unit is None or len(self._unit) != len(self.item_factors):
            self._unit = _normalized(self.item_factors)
        return _cosine(self._unit, items, others)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"item_factors": np.ascontiguousarray(self.item_factors, dtype=np.float32)}

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> ALSRecommender:
        model = cls(**params)
        factors = _matrix(arrays, "item_factors", columns=int(model.params["factors"]))
        inner = model._implicit()
        # Loaded models serve one user per call from many request threads: no
        # OpenMP team per call (it only adds contention).
        inner.num_threads = 1
        inner.item_factors = np.ascontiguousarray(factors, dtype=np.float32)
        inner.user_factors = np.zeros((0, inner.item_factors.shape[1]), dtype=np.float32)
        model._model = inner
        model.n_items = inner.item_factors.shape[0]
        return model


class _BiasedFactorsRecommender(Recommender):
    """Factor models implicit trains with item biases (BPR, LMF) and cannot fold
    users in itself. By default live users get an implicit-ALS least-squares solve
    on the item factors (LMF overrides it with its own logistic solve), with
    confidence 1 + fold_in_alpha * weight (a weight-1 view must count for more
    than an unseen item, or the item bias decides alone)."""

    #: Extra columns implicit appends to the factors, and where the item bias is.
    extra_columns: ClassVar[int]
    bias_column: ClassVar[int]

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.factors_ = np.zeros((0, 0), dtype=np.float32)  # as implicit stores them
        self._yty = np.zeros((0, 0))
        self._unit = np.zeros((0, 0), dtype=np.float32)
        self._latent_by_factor = np.zeros((0, 0), dtype=np.float32)

    def _implicit(self) -> Any:
        raise NotImplementedError

    def fit(self, matrix: sp.csr_matrix, *, show_progress: bool = False) -> None:
        model = self._implicit()
        model.fit(matrix.tocsr(), show_progress=show_progress)
        self._set(np.asarray(model.item_factors, dtype=np.float32))

    @property
    def _latent(self) -> np.ndarray:
        return self.factors_[:, : int(self.params["factors"])]

    def _set(self, item_factors: np.ndarray) -> None:
        self.factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        y = self._latent.astype(np.float64)
        self._yty = y.T @ y
        self._unit = _normalized(self._latent)
        self._latent_by_factor = by_factor(self._latent)
        self.n_items = self.factors_.shape[0]

    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        rows = rows.tocsr().astype(np.float32)
        rows.data = 1.0 + float(self.params["fold_in_alpha"]) * rows.data
        x = _least_squares_fold_in(
            self._latent, self._yty, rows, float(self.params["fold_in_regularization"])
        )
        return np.asarray(x @ self._latent_by_factor + self.factors_[:, self.bias_column])

    def item_similarity(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        return _cosine(self._unit, items, others)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.factors_}

    @classmethod
    def from_arrays(
        cls, params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> _BiasedFactorsRecommender:
        model = cls(**params)
        columns = int(model.params["factors"]) + cls.extra_columns
        model._set(_matrix(arrays, "item_factors", columns=columns))
        return model


class BPRRecommender(_BiasedFactorsRecommender):
    """implicit's Bayesian Personalized Ranking (item bias in the last column)."""

    algorithm = "bpr"
    extra_columns = 1
    bias_column = -1
    defaults = {
        "factors": 64,
        "learning_rate": 0.05,
        "regularization": 0.01,
        "iterations": 100,
        "fold_in_alpha": 10.0,
        "fold_in_regularization": 0.1,
        "random_state": 42,
        "num_threads": 2,
    }

    def _implicit(self) -> Any:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        p = self.params
        return BayesianPersonalizedRanking(
            factors=int(p["factors"]),
            learning_rate=float(p["learning_rate"]),
            regularization=float(p["regularization"]),
            iterations=int(p["iterations"]),
            random_state=int(p["random_state"]),
            num_threads=int(p["num_threads"]),
        )


def _lmf_features(item_factors: np.ndarray) -> np.ndarray:
    """Item factors plus a constant column (the user bias), float64 for Newton."""
    n = item_factors.shape[0]
    return np.hstack([item_factors, np.ones((n, 1))]).astype(np.float64)


def _logistic_fold_in(
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    rows: sp.csr_matrix,
    *,
    regularization: float,
    neg_prop: float,
    iterations: int,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """LMF user solve: for each row, the (factors + user bias) maximising implicit's
    LMF objective with the item factors fixed, by Newton's method.

    Positives count with their confidence (the row's weights); the ``neg_prop``
    sampled negatives per positive of implicit's SGD are replaced by their
    expectation, a uniform weight ``neg_prop * n_positives / n_items`` on every item,
    so the solve is deterministic."""
    n, f = item_factors.shape
    z = features if features is not None else _lmf_features(item_factors)
    offset = item_bias.astype(np.float64)
    ridge = regularization * np.eye(f + 1)
    out = np.zeros((rows.shape[0], f + 1))
    for r in range(rows.shape[0]):
        start, end = rows.indptr[r], rows.indptr[r + 1]
        if start == end:
            continue
        positive = np.zeros(n)
        positive[rows.indices[start:end]] = rows.data[start:end]
        negative = neg_prop * (end - start) / n
        x = np.zeros(f + 1)
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(z @ x + offset)))
            gradient = z.T @ (positive * (1.0 - p) - negative * p) - regularization * x
            hessian = (z.T * ((positive + negative) * p * (1.0 - p))) @ z + ridge
            step = np.linalg.solve(hessian, gradient)
            x += step
            if np.abs(step).max() < 1e-5:
                break
        out[r] = x
    return out[:, :f]


class LMFRecommender(_BiasedFactorsRecommender):
    """implicit's Logistic Matrix Factorization (Johnson 2014). implicit stores
    items as ``[factors, bias, 1]``; live users are folded in by solving the same
    logistic objective for the user with the item factors fixed (Newton's method),
    which reproduces the trained user factors' rankings."""

    algorithm = "lmf"
    extra_columns = 2
    bias_column = -2
    defaults = {
        "factors": 32,
        "learning_rate": 1.0,
        "regularization": 1.0,
        "iterations": 50,
        "neg_prop": 1,
        "fold_in_iterations": 15,
        "random_state": 42,
        "num_threads": 2,
    }

    def _implicit(self) -> Any:
        from implicit.cpu.lmf import LogisticMatrixFactorization

        p = self.params
        return LogisticMatrixFactorization(
            factors=int(p["factors"]),
            learning_rate=float(p["learning_rate"]),
            regularization=float(p["regularization"]),
            iterations=int(p["iterations"]),
            neg_prop=int(p["neg_prop"]),
            random_state=int(p["random_state"]),
            num_threads=int(p["num_threads"]),
        )

    def _set(self, item_factors: np.ndarray) -> None:
        super()._set(item_factors)
        self._features = _lmf_features(self._latent)
        self._latent_by_factor64 = by_factor(self._latent, np.float64)

    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        bias = self.factors_[:, self.bias_column]
        x = _logistic_fold_in(
            self._latent,
            bias,
            rows.tocsr(),
            regularization=float(self.params["regularization"]),
            neg_prop=float(self.params["neg_prop"]),
            iterations=int(self.params["fold_in_iterations"]),
            features=self._features,
        )
        return np.asarray(x @ self._latent_by_factor64 + bias)


class ItemKNNRecommender(Recommender):
    """implicit's item-item nearest neighbours (cosine, BM25 or TF-IDF weighting)."""

    algorithm = "itemknn"
    defaults = {"similarity": "cosine", "K": 100, "bm25_K1": 1.2, "bm25_B": 0.75, "num_threads": 2}

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.params["similarity"] not in ("cosine", "bm25", "tfidf"):
            raise InvalidArgument("similarity: must be cosine, bm25 or tfidf")
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, matrix: sp.csr_matrix, *, show_progress: bool = False) -> None:
        from implicit import nearest_neighbours as nn

        p = self.params
        kind = p["similarity"]
        k = int(p["K"])
        threads = int(p["num_threads"])
        if kind == "cosine":
            model = nn.CosineRecommender(K=k, num_threads=threads)
        elif kind == "bm25":
            model = nn.BM25Recommender(
                K=k, K1=float(p["bm25_K1"]), B=float(p["bm25_B"]), num_threads=threads
            )
        else:
            model = nn.TFIDFRecommender(K=k, num_threads=threads)
        with warnings.catch_warnings():
            # implicit's BM25/TF-IDF weighting hands its own fit a COO matrix and warns.
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(matrix.tocsr(), show_progress=show_progress)
        self.similarity = model.similarity.tocsr().astype(np.float32)
        self.n_items = matrix.shape[1]

    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows.tocsr() @ self.similarity).toarray())

    def item_similarity(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        # score(user) = row @ S, so item i reaches item o through S[i, o]; implicit's
        # K-pruned S is not symmetric.
        sub = self.similarity[items][:, others]
        return np.asarray(sub.toarray()).T

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.similarity.getrow(item)
        scores = np.full(self.n_items, -np.inf, dtype=np.float32)
        scores[row.indices] = row.data
        scores[item] = -np.inf
        return top_k(scores, n)

    def to_arrays(self) -> dict[str, np.ndarray]:
        s = self.similarity
        return {
            "sim_data": s.data.astype(np.float32),
            "sim_indices": s.indices.astype(np.int32),
            "sim_indptr": s.indptr.astype(np.int64),
            "sim_shape": np.asarray(s.shape, dtype=np.int64),
        }

    @classmethod
    def from_arrays(
        cls, params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> ItemKNNRecommender:
        model = cls(**params)
        shape = tuple(int(x) for x in np.asarray(arrays["sim_shape"]).ravel())
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"sim_shape: an item x item matrix is square, got {shape}")
        model.similarity = sp.csr_matrix(
            (arrays["sim_data"], arrays["sim_indices"], arrays["sim_indptr"]), shape=shape
        )
        model.similarity.check_format(full_check=True)
        model.n_items = shape[1]
        return model


class EASERecommender(Recommender):
    """EASE (Steck, 2019): a closed-form item-item linear model.

    B = I - P / diag(P) with P = (X^T X + regularization * I)^-1 and diag(B) = 0;
    a user's scores are their weighted row times B. Dense in items, so it is
    meant for catalogs up to ``max_items`` (~20k: 1.6 GB of float32).
    """

    algorithm = "ease"
    defaults = {"regularization": 300.0, "binarize": False, "max_items": 20_000}

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.weights_ = np.zeros((0, 0), dtype=np.float32)

    def _prepare(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        rows = rows.tocsr().astype(np.float32)
        if self.params["binarize"]:
            rows.data = np.ones_like(rows.data)
        return rows

    def fit(self, matrix: sp.csr_matrix, *, show_progress: bool = False) -> None:
        n = matrix.shape[1]
        if n > int(self.params["max_items"]):
            raise InvalidArgument(
                f"max_items: EASE is dense in items; {n} items exceed {self.params['max_items']}"
            )
        import scipy.linalg

        x = self._prepare(matrix).astype(np.float64)
        gram = np.asarray((x.T @ x).todense())
        gram[np.diag_indices(n)] += float(self.params["regularization"])
        with threadpool_limits(2, "blas"):
            inverse = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        weights = -inverse / np.diag(inverse)
        weights[np.diag_indices(n)] = 0.0
        # C order: LAPACK hands back a Fortran-ordered inverse, and a sparse row
        # times a Fortran matrix copies all of it on every call.
        self.weights_ = np.ascontiguousarray(weights, dtype=np.float32)
        self.n_items = n

    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self._prepare(rows) @ self.weights_)

    def item_similarity(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        # score = row @ B: item i reaches item o through B[i, o].
        return self.weights_[np.ix_(items, others)].T

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> EASERecommender:
        model = cls(**params)
        weights = np.asarray(arrays["weights"])
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1] or weights.dtype.kind != "f":
            raise ValueError(f"weights: expected a square float matrix, got {weights.shape}")
        model.weights_ = np.ascontiguousarray(weights, dtype=np.float32)
        model.n_items = weights.shape[0]
        return model


class PopularityRecommender(Recommender):
    """Most popular items (distinct users per item); the baseline and the fallback."""

    algorithm = "popular"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.popularity = np.zeros(0, dtype=np.float32)

    def fit(self, matrix: sp.csr_matrix, *, show_progress: bool = False) -> None:
        self.popularity = self._count(matrix)
        self.n_items = matrix.shape[1]

    def _count(self, matrix: sp.csr_matrix) -> np.ndarray:
        return item_popularity(matrix)

    def score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.popularity, (rows.shape[0], 1))

    def item_similarity(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        return np.zeros((len(others), len(items)), dtype=np.float32)

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise FailedPrecondition("algorithm: the popularity model has no item similarity")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity}

    @classmethod
    def from_arrays(
        cls, params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> PopularityRecommender:
        model = cls(**params)
        model.popularity = np.asarray(arrays["popularity"], dtype=np.float32)
        if model.popularity.ndim != 1:
            raise ValueError("popularity: expected one value per item")
        model.n_items = len(model.popularity)
        return model


class TrendingRecommender(PopularityRecommender):
    """Items by the sum of their time-decayed weights: what is popular *now*.

    The decay comes from the event weights (``time_half_life_days``; the CLI uses
    7 days for this algorithm unless told otherwise). Without it, this ranks by
    total weight, which is plain popularity weighted by event type.
    """

    algorithm = "trending"

    def _count(self, matrix: sp.csr_matrix) -> np.ndarray:
        return np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()


def _matrix(arrays: dict[str, np.ndarray], name: str, *, columns: int) -> np.ndarray:
    """A stored 2-D float array with the expected number of columns."""
    value = np.asarray(arrays[name])
    if value.ndim != 2 or value.shape[1] != columns or value.dtype.kind != "f":
        raise ValueError(
            f"{name}: expected a float array with {columns} columns, "
            f"got {value.dtype} of shape {value.shape}"
        )
    return value


def item_popularity(matrix: sp.csr_matrix) -> np.ndarray:
    """Number of distinct users per item."""
    return np.asarray((matrix > 0).sum(axis=0), dtype=np.float32).ravel()


ALGORITHMS: dict[str, type[Recommender]] = {
    cls.algorithm: cls
    for cls in (
        ALSRecommender,
        BPRRecommender,
        LMFRecommender,
        ItemKNNRecommender,
        EASERecommender,
        PopularityRecommender,
        TrendingRecommender,
    )
}


def create_model(algorithm: str, **params: Any) -> Recommender:
    """Factory: an untrained model of ``algorithm`` with ``params`` over its defaults."""
    try:
        cls = ALGORITHMS[algorithm]
    except KeyError:
        raise InvalidArgument(
            f"algorithm: unknown {algorithm!r} (choose from {', '.join(sorted(ALGORITHMS))})"
        ) from None
    return cls(**params)
