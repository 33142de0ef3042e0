"""training.spark_als: Spark MLlib as the ALS fitting engine (``engine="spark"``).

The tests that run Spark share one local SparkSession (``spark``, created once
per test process) and are skipped without pyspark or Java; ``make test``
installs the ``spark`` extra, so CI runs them. The others (parameter mapping,
the message without pyspark, the CLI's checks) need neither.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from sessionrec.cli import main
from sessionrec.errors import FailedPrecondition, InvalidArgument
from sessionrec.events import EventType
from sessionrec.store import EventColumns
from tests.spark_support import local_spark
from training import spark_als
from training.artifact import load_artifact
from training.data import build_interactions
from training.models import create_model
from training.weighting import EventWeights

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
PARAMS = {"factors": 8, "iterations": 10, "regularization": 0.05, "random_state": 3}


@pytest.fixture(scope="session")
def spark() -> Any:
    """The test process's local SparkSession (tests/spark_support.py)."""
    return local_spark()


def two_groups(extra_items: int = 1) -> sp.csr_matrix:
    """Users 0-11 like items 0-9, users 12-19 items 10-19 (weights 1-3); the last
    ``extra_items`` columns have no interactions at all."""
    rng = np.random.default_rng(0)
    rows, cols, data = [], [], []
    for user in range(20):
        base = 0 if user < 12 else 10
        for item in rng.choice(10, size=7, replace=False):
            rows.append(user)
            cols.append(base + int(item))
            data.append(float(rng.integers(1, 4)))
    return sp.csr_matrix((data, (rows, cols)), shape=(20, 20 + extra_items), dtype=np.float32)


# ------------------------------------------------------- no Spark needed
def test_ratings_give_implicits_confidence() -> None:
    weights = np.array([1.0, 2.0, 5.5, 0.5], dtype=np.float32)
    ratings = spark_als.spark_ratings(weights, alpha=2.0)
    # MLlib: confidence 1 + r (alpha 1) == implicit's alpha * w, where that is >= 1
    np.testing.assert_allclose(1 + ratings[:3], 2.0 * weights[:3], rtol=1e-6)
    assert ratings[3] == pytest.approx(spark_als.MIN_RATING)  # 2 * 0.5 = 1: floor, still > 0
    assert (spark_als.spark_ratings(weights, alpha=1.0) > 0).all()


def test_reg_param_is_the_mean_ridge_term() -> None:
    matrix = sp.csr_matrix(
        (np.ones(5, dtype=np.float32), ([0, 0, 0, 1, 2], [0, 1, 2, 0, 0])), shape=(4, 4)
    )
    # 3 users and 3 items have ratings: 6 solves over 2 * 5 ratings -> mean 10 / 6.
    assert spark_als.spark_reg_param(matrix, 0.5) == pytest.approx(0.5 * 6 / 10)
    assert spark_als.spark_reg_param(sp.csr_matrix((3, 3), dtype=np.float32), 0.5) == 0.5


def test_engine_is_validated() -> None:
    assert create_model("als").params["engine"] == "implicit"
    with pytest.raises(InvalidArgument, match="engine: must be implicit or spark"):
        create_model("als", engine="flink")
    with pytest.raises(InvalidArgument, match="use_gpu"):
        create_model("als", engine="spark", use_gpu=True)
    with pytest.raises(InvalidArgument, match="engine: not a parameter of bpr"):
        create_model("bpr", engine="spark")


def test_without_pyspark_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
    with pytest.raises(FailedPrecondition, match=r"pip install 'sessionrec\[spark\]'"):
        create_model("als", engine="spark").fit(two_groups())
    db = "sqlite:///" + str(tmp_path / "none.db")
    argv = ["train", "--db", db, "--models", str(tmp_path / "m"), "--engine", "spark"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sessionrec train: error: engine: spark needs pyspark" in err
    assert "pip install 'sessionrec[spark]'" in err
    assert not (tmp_path / "none.db").exists()  # refused before the store was opened


def test_cli_engine_spark_only_with_als(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = "sqlite:///" + str(tmp_path / "none.db")
    for command in ("train", "evaluate"):
        assert main([command, "--db", db, "--algorithm", "bpr", "--engine", "spark"]) == 2
        err = capsys.readouterr().err
        assert f"sessionrec {command}: error: --engine: spark fits only --algorithm als" in err


def test_cli_refuses_what_parquet_input_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--models", str(tmp_path / "m"), "--events-parquet", str(tmp_path)]
    for extra, flag in (
        (["--evaluate", "10"], "--evaluate"),
        (["--every", "1h"], "--every"),
        (["--db", "sqlite:///" + str(tmp_path / "x.db")], "--db"),
    ):
        assert main([*base, *extra]) == 2
        assert f"error: {flag}: not with --events-parquet" in capsys.readouterr().err
    assert main([*base, "--recency-half-life", "5"]) == 2
    assert "recency_half_life" in capsys.readouterr().err


# ------------------------------------------------------------- Spark
def test_spark_fit_gives_item_factors_in_the_matrix_order(spark: Any) -> None:
    matrix = two_groups(extra_items=1)
    model = create_model("als", engine="spark", **PARAMS)
    model.fit(matrix)
    factors = model.item_factors
    assert factors.shape == (21, 8) and factors.dtype == np.float32
    assert not factors[20].any()  # never rated: zero factors
    assert np.abs(factors[:20]).sum(axis=1).min() > 0
    info = model.fit_info
    assert info["engine"] == "spark" and info["spark"]["version"] == spark.version
    assert info["spark"]["items_without_ratings"] == 1
    assert info["spark"]["reg_param"] == pytest.approx(spark_als.spark_reg_param(matrix, 0.05))
    # Items of one group are alike (the order survived the round trip) ...
    sims = model.item_similarity(np.arange(20), np.arange(20))
    same = np.add.outer(np.arange(20) < 10, np.arange(20) < 10) != 1
    off_diagonal = ~np.eye(20, dtype=bool)
    assert sims[same & off_diagonal].mean() > sims[~same].mean() + 0.3
    # ... and folded-in users get their group's items, as with implicit.
    rows = matrix[[0, 15]]
    for fitted in (model, _implicit_model(matrix)):
        scores = fitted.score(rows)
        assert (np.argsort(-scores[0])[:5] < 10).all()
        assert (np.argsort(-scores[1])[:5] >= 10).all()


def _exact_solve(fixed: np.ndarray, matrix: sp.csr_matrix, alpha: float, reg: float) -> np.ndarray:
    """implicit's least-squares step, solved exactly: each row's factors given the
    other side's, with confidence alpha * w on its cells and 1 elsewhere."""
    gram = fixed.T @ fixed + reg * np.eye(fixed.shape[1])
    out = np.zeros((matrix.shape[0], fixed.shape[1]))
    for r in range(matrix.shape[0]):
        cells = slice(matrix.indptr[r], matrix.indptr[r + 1])
        y, c = fixed[matrix.indices[cells]], alpha * matrix.data[cells].astype(np.float64)
        out[r] = np.linalg.solve(gram + (y.T * (c - 1)) @ y, y.T @ c)
    return out


def test_spark_converges_to_implicits_objective(
    spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a negligible ridge term (where ALS-WR and implicit's plain ridge agree),
    Spark's item factors are a fixed point of implicit's exact ALS update: the
    confidence mapping gives MLlib implicit's objective. The unmapped ratings
    (r = w) do not."""
    matrix = two_groups(extra_items=0)
    alpha, reg = 3.0, 1e-3
    params = {"factors": 4, "iterations": 40, "regularization": reg, "alpha": alpha}

    def residual() -> float:
        items, _ = spark_als.fit_item_factors(matrix, {**params, "random_state": 1})
        items = items.astype(np.float64)
        users = _exact_solve(items, matrix.tocsr(), alpha, reg)
        again = _exact_solve(users, matrix.T.tocsr(), alpha, reg)
        return float(np.linalg.norm(again - items) / np.linalg.norm(items))

    assert residual() < 5e-3  # measured 2e-3 (0 at full convergence)
    monkeypatch.setattr(spark_als, "spark_ratings", lambda w, a: (a * w).astype(np.float32))
    assert residual() > 1e-2  # measured 1.8e-2


def _implicit_model(matrix: sp.csr_matrix) -> Any:
    model = create_model("als", num_threads=1, **PARAMS)
    model.fit(matrix)
    return model


def test_spark_artifact_saves_loads_and_recommends(spark: Any, tmp_path: Path) -> None:
    from sessionrec.events import EventRecord, ItemEvent, SessionRecord
    from sessionrec.store import open_store
    from tests.conftest import store_url
    from training.pipeline import train

    view = int(EventType.ITEM_VIEW)
    with open_store(store_url(tmp_path / "events.db")) as store:
        events, sessions, t = [], [], 1_000_000
        for prefix, n_users in (("a", 12), ("b", 8)):
            for u in range(n_users):
                user = f"{prefix}{u:02d}"
                sessions.append(SessionRecord("s-" + user, user, t, t))
                for i in range(8):
                    item = f"{prefix.upper()}{(u + i) % 10}"
                    events.append(EventRecord(f"{user}-{i}", "s-" + user, user, view, t, item))
                    t += 1000
        store.append_events(events, sessions)
        messages: list[str] = []
        artifact = train(
            store,
            str(tmp_path / "models"),
            "als",
            {"engine": "spark", **PARAMS},
            session_model=False,
            progress=messages.append,
        )
    assert artifact.meta["engine"] == "spark"
    assert artifact.meta["spark"]["version"] == spark.version
    loaded = load_artifact(tmp_path / "models", artifact.version)
    assert loaded.params["engine"] == "spark"
    np.testing.assert_array_equal(loaded.model.item_factors, artifact.model.item_factors)
    history = [ItemEvent(f"B{i}", view, None, 1_000) for i in range(3)]
    rec = loaded.recommend(history, 5)
    assert rec.strategy == "personalized"
    assert len(rec.item_ids) == 5
    assert all(item.startswith("B") for item in rec.item_ids[:3])  # as implicit ranks them
    assert all(reason.startswith("similar to B") for reason in rec.reasons[:3])


def _export_layout(root: Path, columns: dict[str, list[Any]]) -> None:
    """Events in the layout of ``sessionrec export``: events/day=YYYY-MM-DD/part-*.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "event_id": pa.array(columns["event_id"], pa.string()),
            "session_id": pa.array(columns["session_id"], pa.string()),
            "user_id": pa.array(columns["user_id"], pa.string()),
            "type": pa.array(columns["type"], pa.int32()),
            "item_id": pa.array(columns["item_id"], pa.string()),
            "dwell_ms": pa.array(columns["dwell_ms"], pa.int64()),
            "ts_ms": pa.array(columns["ts_ms"], pa.int64()),
        }
    )
    days = np.asarray(columns["ts_ms"]) // 86_400_000
    for day in np.unique(days):
        folder = root / "events" / f"day=2024-01-{int(day) + 1:02d}"
        folder.mkdir(parents=True)
        pq.write_table(table.filter(pa.array(days == day)), folder / "part-00000.parquet")


def test_parquet_events_weigh_as_the_store_path(spark: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 600
    types = [int(EventType.ITEM_VIEW), int(EventType.ADD_TO_CART), int(EventType.PURCHASE)]
    types += [int(EventType.OFFER_IMPRESSION), int(EventType.CLICK), int(EventType.SCREEN_VIEW)]
    ts = np.sort(rng.integers(0, 4 * 86_400_000, n))
    columns: dict[str, list[Any]] = {
        "event_id": [f"e{i}" for i in range(n)],
        "session_id": [f"s{i % 40}" for i in range(n)],
        "user_id": [f"u{int(u):02d}" for u in rng.integers(0, 30, n)],
        "type": [types[int(k)] for k in rng.integers(0, len(types), n)],
        "item_id": [None if k == 0 else f"i{int(k):02d}" for k in rng.integers(0, 40, n)],
        "dwell_ms": [None if d < 0 else int(d) for d in rng.integers(-20_000, 90_000, n)],
        "ts_ms": ts.tolist(),
    }
    columns["user_id"][-1] = "only-impressions"  # a user whose item events all weigh 0
    columns["type"][-1] = int(EventType.OFFER_IMPRESSION)
    columns["item_id"][-1] = "i01"
    _export_layout(tmp_path, columns)
    has_item = np.array([i is not None for i in columns["item_id"]])
    store_events = EventColumns(
        np.array(columns["user_id"], dtype=object)[has_item],
        np.array(columns["item_id"], dtype=object)[has_item],
        np.array(columns["type"], dtype=np.int8)[has_item],
        np.array([-1 if d is None else d for d in columns["dwell_ms"]], dtype=np.int64)[has_item],
        ts[has_item],
    )
    for weights in (
        EventWeights(),
        EventWeights(
            type_weights={**EventWeights().type_weights, "PURCHASE": 8.0},
            dwell_bonus=2.0,
            skip_factor=0.25,
            time_half_life_days=1.5,
            scaling="bm25",
        ),
    ):
        expected = build_interactions(store_events, weights)
        got = spark_als.parquet_interactions(tmp_path, weights)
        assert got.users.ids.tolist() == expected.users.ids.tolist()
        assert "only-impressions" in got.users.ids.tolist()
        assert got.items.ids.tolist() == expected.items.ids.tolist()
        assert got.events == expected.events
        np.testing.assert_array_equal(got.matrix.indptr, expected.matrix.indptr)
        np.testing.assert_array_equal(got.matrix.indices, expected.matrix.indices)
        np.testing.assert_allclose(got.matrix.data, expected.matrix.data, rtol=1e-5)
        assert (got.scaling is None) == (weights.scaling == "none")
    with pytest.raises(InvalidArgument, match="recency_half_life: not supported"):
        spark_als.parquet_interactions(tmp_path, EventWeights(recency_half_life=5))
    with pytest.raises(InvalidArgument, match="no such directory"):
        spark_als.parquet_interactions(tmp_path / "missing", EventWeights())


def test_train_from_parquet_events(spark: Any, tmp_path: Path) -> None:
    from training.pipeline import train

    view = int(EventType.ITEM_VIEW)
    columns: dict[str, list[Any]] = {k: [] for k in ("event_id", "session_id", "user_id")}
    columns.update({"type": [], "item_id": [], "dwell_ms": [], "ts_ms": []})
    t = 0
    for prefix, n_users in (("a", 12), ("b", 8)):
        for u in range(n_users):
            for i in range(8):
                columns["event_id"].append(f"{prefix}{u}-{i}")
                columns["session_id"].append(f"s-{prefix}{u}")
                columns["user_id"].append(f"{prefix}{u:02d}")
                columns["type"].append(view)
                columns["item_id"].append(f"{prefix.upper()}{(u + i) % 10}")
                columns["dwell_ms"].append(None)
                columns["ts_ms"].append(t)
                t += 60_000
    _export_layout(tmp_path / "export", columns)
    artifact = train(
        None,
        str(tmp_path / "models"),
        "als",
        {"engine": "spark", **PARAMS},
        events_parquet=str(tmp_path / "export"),
    )
    meta = artifact.meta
    assert (meta["users"], meta["items"], meta["interactions"]) == (20, 20, 160)
    assert meta["events_parquet"] == str(tmp_path / "export") and meta["store"] is None
    assert "session" not in meta
    loaded = load_artifact(tmp_path / "models", artifact.version)
    rec = loaded.recommend([], 3)
    assert rec.strategy == "popular" and len(rec.item_ids) == 3


def test_a_jvm_that_cannot_start_is_tried_twice_then_named(tmp_path: Path) -> None:
    """No usable Java (JAVA_HOME names none): the start is tried again once (a JVM
    can exit before its gateway answers for reasons that pass), then the error
    says what is needed."""
    pytest.importorskip("pyspark", reason="the spark extra: pip install 'sessionrec[spark]'")
    import os
    import subprocess

    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from sessionrec.errors import FailedPrecondition\n"
        "from training import spark_als\n"
        "spark_als.configure('local[1]')\n"
        "try:\n"
        "    spark_als.spark_session()\n"
        "except FailedPrecondition as exc:\n"
        "    print('FAILED:', exc)\n"
    )
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "FAILED: engine: could not start Spark (local[1])" in done.stdout, done.stderr
    assert "Java 17 or later must be installed" in done.stdout
    assert done.stderr.count("the JVM exited before its gateway answered; again") == 1
