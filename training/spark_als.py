"""Spark MLlib as a fitting engine for the ALS model (``engine="spark"``).

``ALSRecommender(engine="spark")`` hands its weighted user x item matrix to
``pyspark.ml.recommendation.ALS(implicitPrefs=True)`` and keeps only the item
factors Spark learns, in the artifact's item order (items Spark never saw a
rating for get zero factors). Serving is unchanged: users are folded in by
implicit's exact least-squares solve, explanations use the factors' cosine, big
catalogs get the same ANN index, and the artifact has the same format (its
params say ``engine: spark``; its meta records Spark's version and settings).

Parameter mapping (same objective as implicit, so the same parameters give
comparable models; measured on MovieLens 100K, see the README):

* confidence. implicit weights an observed cell with ``c = alpha * w`` (its
  ``alpha`` multiplies the matrix; preference 1), an unobserved one with 1.
  MLlib uses ``c = 1 + alpha_mllib * r`` for ratings ``r > 0``. Spark therefore
  gets ``alpha_mllib = 1`` and ``r = max(alpha * w - 1, 1e-6)``: the same
  confidence whenever ``alpha * w >= 1`` (the defaults: every positive weight
  is >= 1 and alpha is 1). A cell implicit would weigh *below* an unobserved one
  (``alpha * w < 1``) cannot be expressed in MLlib and gets confidence ~1.
* regularization. implicit adds ``regularization * I`` to every least-squares
  solve; MLlib adds ``regParam * n * I`` where n is the number of ratings of the
  user (or item) solved for ("ALS-WR"). Spark gets
  ``regParam = regularization / n_mean``, with ``n_mean`` the mean number of
  ratings per solve (over every user and item with at least one), so the
  average ridge term is implicit's. Heavy users and popular items are
  regularised more than implicit would, light ones less.
* ``factors`` -> ``rank``, ``iterations`` -> ``maxIter``, ``random_state`` ->
  ``seed``. MLlib solves exactly (Cholesky) where implicit takes 3 conjugate
  gradient steps per solve, and initialises differently, so factors differ even
  with the same seed; rankings come out close (within a few % of NDCG).
* ``num_threads`` and ``use_gpu`` do not apply: Spark's parallelism is its
  master's (``local[*]`` by default).

The Spark session is created on first use with ``configure``'s settings (the
CLI's ``--spark-master`` / ``--spark-conf``, or ``$SESSIONREC_SPARK_MASTER``),
kept for the process, quiet (log level ERROR, no UI, no console progress) and,
in local mode, bound to 127.0.0.1.

``parquet_interactions`` reads the events of a Parquet export (``sessionrec
export``: ``DIR/events/day=YYYY-MM-DD/part-*.parquet``) with Spark, weighs and
sums them in Spark SQL, and returns the same ``Interactions`` the store path
builds (``training.data.build_interactions``), to float32 rounding.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sp

from sessionrec.errors import FailedPrecondition, InvalidArgument
from sessionrec.events import VIEW_TYPES

#: What to run when pyspark is missing.
INSTALL_HINT = "pip install 'sessionrec[spark]'"
#: MLlib's confidence is 1 + alpha * r; this floor keeps a confidence-1 cell positive.
MIN_RATING = 1e-6
#: Columns of the exported events that training reads.
PARQUET_COLUMNS = ("user_id", "item_id", "type", "dwell_ms", "ts_ms")
#: Starts of the local JVM tried before giving up when it exits before its gateway
#: answers (seen once in a CI run: a JVM gone at start, nothing on its stderr).
GATEWAY_TRIES = 2

log = logging.getLogger("sessionrec.spark")

_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
logger.spark.name = org.apache.spark
logger.spark.level = error
"""


@dataclass
class SparkSettings:
    """How the session is created: its master URL and extra ``spark.*`` settings."""

    master: str = field(default_factory=lambda: os.environ.get("SESSIONREC_SPARK_MASTER", ""))
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def effective_master(self) -> str:
        return self.master or "local[*]"

    @property
    def local(self) -> bool:
        return self.effective_master.startswith("local")


_settings = SparkSettings()
_session: Any = None


def require_pyspark() -> ModuleType:
    """pyspark, or a FailedPrecondition that says how to install it."""
    try:
        import pyspark
    except ImportError:
        raise FailedPrecondition(
            f"engine: spark needs pyspark, which is not installed; run {INSTALL_HINT} "
            "(and have Java 17 or later)"
        ) from None
    return pyspark


def configure(master: str | None = None, conf: Mapping[str, str] | None = None) -> None:
    """Settings for the session this process creates (no effect once it exists)."""
    if master:
        _settings.master = master
    if conf:
        _settings.conf.update({str(k): str(v) for k, v in conf.items()})


def spark_session(progress: Callable[[str], None] | None = None) -> Any:
    """The process's SparkSession, created on first use (see ``configure``)."""
    global _session
    if _session is not None and _session.sparkContext._jsc is not None:
        return _session
    require_pyspark()
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    conf: dict[str, str] = {
        "spark.app.name": "sessionrec",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if _settings.local:
        conf.update(
            {
                # No Python workers are needed, but if one is, it is this interpreter.
                "spark.pyspark.python": sys.executable,
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.sql.shuffle.partitions": "4",
            }
        )
    conf.update(_settings.conf)
    log_dir = tempfile.mkdtemp(prefix="sessionrec-spark-")
    options = conf.get("spark.driver.extraJavaOptions", "")
    if "log4j" not in options:  # quiet unless the caller configured logging
        log4j = Path(log_dir) / "log4j2.properties"
        log4j.write_text(_LOG4J)
        conf["spark.driver.extraJavaOptions"] = (
            f"{options} -Dlog4j2.configurationFile={log4j.as_uri()}".strip()
        )
    builder = SparkSession.builder.master(_settings.effective_master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        for attempt in range(1, GATEWAY_TRIES + 1):
            try:
                session = builder.getOrCreate()
                break
            except Exception as exc:  # no Java, a bad master URL, ...
                if attempt < GATEWAY_TRIES and "JAVA_GATEWAY_EXITED" in str(exc):
                    log.warning("spark: the JVM exited before its gateway answered; again")
                    time.sleep(1.0)
                    continue
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise FailedPrecondition(
                    f"engine: could not start Spark ({_settings.effective_master}): "
                    f"{first_line or type(exc).__name__} "
                    "(Java 17 or later must be installed, on PATH or in JAVA_HOME)"
                ) from exc
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)  # read once, at JVM start
    session.sparkContext.setLogLevel("ERROR")
    if _settings.local and session.sparkContext.getCheckpointDir() is None:
        # Many ALS iterations build a long lineage; checkpoints cut it.
        checkpoints = tempfile.mkdtemp(prefix="sessionrec-spark-checkpoints-")
        atexit.register(shutil.rmtree, checkpoints, True)
        session.sparkContext.setCheckpointDir(checkpoints)
    _session = session
    if progress is not None:
        progress(
            f"spark: started Spark {session.version} on {session.sparkContext.master} "
            f"({time.perf_counter() - started:.1f}s)"
        )
    return session


# ---------------------------------------------------------- parameters
def spark_ratings(weights: np.ndarray, alpha: float) -> np.ndarray:
    """MLlib ratings (with MLlib alpha 1) giving implicit's confidences ``alpha * w``."""
    return np.maximum(alpha * np.asarray(weights, dtype=np.float64) - 1.0, MIN_RATING).astype(
        np.float32
    )


def spark_reg_param(matrix: sp.csr_matrix, regularization: float) -> float:
    """MLlib's regParam whose mean ridge term over all solves is ``regularization``."""
    m = matrix.tocsr().copy()
    m.data[m.data < 0] = 0  # what Spark is given: positive cells only
    m.eliminate_zeros()
    if m.nnz == 0:
        return regularization
    solves = np.count_nonzero(np.diff(m.indptr)) + np.count_nonzero(np.bincount(m.indices))
    return float(regularization * solves / (2.0 * m.nnz))


# ----------------------------------------------------------------- fit
def fit_item_factors(
    matrix: sp.csr_matrix,
    params: Mapping[str, Any],
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fits MLlib implicit ALS on ``matrix`` (users x items, implicit's weights)
    with the ALS model's ``params`` (mapped as the module docstring says).
    Returns the item factors (float32, one row per column of ``matrix``) and
    what to record about the fit."""
    require_pyspark()
    import pyarrow as pa
    from pyspark.ml.recommendation import ALS

    say = progress or (lambda _msg: None)
    m = matrix.tocsr()
    coo = m.tocoo()
    keep = coo.data > 0
    n_items, rank = m.shape[1], int(params["factors"])
    alpha, regularization = float(params["alpha"]), float(params["regularization"])
    reg_param = spark_reg_param(m, regularization)
    spark = spark_session(progress=say)
    table = pa.table(
        {
            "user": pa.array(coo.row[keep].astype(np.int32)),
            "item": pa.array(coo.col[keep].astype(np.int32)),
            "rating": pa.array(spark_ratings(coo.data[keep], alpha)),
        }
    )
    blocks = max(1, int(spark.sparkContext.defaultParallelism))
    als = ALS(
        rank=rank,
        maxIter=int(params["iterations"]),
        regParam=reg_param,
        alpha=1.0,
        implicitPrefs=True,
        nonnegative=False,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        seed=int(params["random_state"]),
        numUserBlocks=blocks,
        numItemBlocks=blocks,
    )
    say(
        f"spark: fitting ALS ({rank} factors, {int(params['iterations'])} iterations, "
        f"regParam {reg_param:.3g}) on {int(keep.sum())} interactions, {blocks} blocks"
    )
    started = time.perf_counter()
    ratings = spark.createDataFrame(table)
    model = als.fit(ratings)
    found = model.itemFactors.toArrow()
    fit_seconds = time.perf_counter() - started
    for frame in (model.userFactors, model.itemFactors):
        frame.unpersist()
    ids = found.column("id").to_numpy()
    features = found.column("features").combine_chunks()
    flat = features.flatten().to_numpy(zero_copy_only=False)
    factors = np.zeros((n_items, rank), dtype=np.float32)
    if len(ids):
        factors[ids] = np.asarray(flat, dtype=np.float32).reshape(len(ids), rank)
    say(f"spark: collected {len(ids)} of {n_items} item factors ({fit_seconds:.1f}s)")
    info = {
        "engine": "spark",
        "spark": {
            "version": spark.version,
            "master": spark.sparkContext.master,
            "reg_param": reg_param,
            "alpha": 1.0,
            "blocks": blocks,
            "items_without_ratings": int(n_items - len(ids)),
            "fit_seconds": round(fit_seconds, 3),
        },
    }
    return factors, info


# ------------------------------------------------------ Parquet events
def check_parquet_weights(weights: Any) -> None:
    """Refuses the weighting options ``parquet_interactions`` cannot reproduce."""
    if weights.recency_half_life > 0:
        raise InvalidArgument(
            "recency_half_life: not supported with --events-parquet (the recency factor "
            "counts each user's later events in the store's insertion order, which the "
            "export does not carry for events of the same millisecond); train from the "
            "store (--db) to use --recency-half-life"
        )


def _weight_column(weights: Any, newest_ts: int | None) -> Any:
    """Spark SQL expression of ``EventWeights.weigh`` over the export's columns."""
    from pyspark.sql import functions as F

    table = weights.table()
    base = F.lit(0.0)
    for number in np.flatnonzero(table).tolist():
        base = F.when(F.col("type") == number, F.lit(float(table[number]))).otherwise(base)
    view = F.col("type").isin([int(t) for t in VIEW_TYPES])
    dwell = F.col("dwell_ms")  # null: unknown
    saturation = float(weights.dwell_saturation_ms)
    bonus = F.least(dwell.cast("double") / F.lit(saturation), F.lit(1.0))
    weight = F.when(
        view & dwell.isNotNull() & (dwell > 0) & (base > 0),
        base + F.lit(float(weights.dwell_bonus)) * bonus,
    ).otherwise(base)
    skipped = view & dwell.isNotNull() & (dwell >= 0) & (dwell < int(weights.skip_below_ms))
    weight = F.when(skipped, weight * F.lit(float(weights.skip_factor))).otherwise(weight)
    if weights.time_half_life_days > 0 and newest_ts is not None:
        days = F.greatest(F.lit(int(newest_ts)) - F.col("ts_ms"), F.lit(0)).cast("double") / F.lit(
            86_400_000.0
        )
        weight = weight * F.pow(F.lit(2.0), -days / F.lit(float(weights.time_half_life_days)))
    return weight.cast("float")


def events_path(directory: str | os.PathLike[str]) -> str:
    """The events table of an export directory (``DIR/events``), or ``DIR`` itself
    when it is the events table."""
    root = Path(directory)
    if not root.exists():
        raise InvalidArgument(f"--events-parquet: no such directory {root}")
    return str(root / "events") if (root / "events").is_dir() else str(root)


def parquet_interactions(
    directory: str | os.PathLike[str],
    weights: Any,
    *,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """``Interactions`` from the item events of a Parquet export, weighed and
    summed per (user, item) by Spark; the vocabularies are every user and item
    with an item event, sorted, as ``build_interactions`` makes them."""
    from training.data import Interactions, Vocabulary, weighted_matrix

    check_parquet_weights(weights)
    say = progress or (lambda _msg: None)
    path = events_path(directory)
    spark = spark_session(progress=say)
    from pyspark.sql import functions as F

    started = time.perf_counter()
    try:
        frame = spark.read.parquet(path)
    except Exception as exc:  # no Parquet files, unreadable files, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"--events-parquet: cannot read Parquet at {path}: {first}") from None
    missing = [c for c in PARQUET_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidArgument(
            f"--events-parquet: {path} has no column {missing[0]} (expected the events of "
            "`sessionrec export`)"
        )
    events = frame.select(*PARQUET_COLUMNS).where(F.col("item_id").isNotNull())
    newest = None
    if weights.time_half_life_days > 0:
        newest = events.agg(F.max("ts_ms")).first()[0]
    weight = _weight_column(weights, newest)
    positive = F.when(weight > 0, weight)
    summed = (
        events.groupBy("user_id", "item_id")
        .agg(
            F.sum(positive).alias("weight"),
            F.count(positive).alias("events"),
        )
        .toArrow()
    )
    users, rows = Vocabulary.factorize(summed.column("user_id").to_numpy(zero_copy_only=False))
    items, cols = Vocabulary.factorize(summed.column("item_id").to_numpy(zero_copy_only=False))
    weight_values = summed.column("weight").to_numpy(zero_copy_only=False)
    keep = ~np.isnan(np.asarray(weight_values, dtype=np.float64))
    data = np.asarray(weight_values, dtype=np.float64)[keep].astype(np.float32)
    matrix, scaling = weighted_matrix(
        rows[keep], cols[keep], data, (len(users), len(items)), weights
    )
    n_events = int(np.asarray(summed.column("events").to_numpy(zero_copy_only=False)).sum())
    say(
        f"spark: read {n_events} weighted item events from {path} -> {len(users)} users x "
        f"{len(items)} items, {matrix.nnz} interactions ({time.perf_counter() - started:.1f}s)"
    )
    return Interactions(users=users, items=items, matrix=matrix, events=n_events, scaling=scaling)
