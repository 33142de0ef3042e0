"""Model registry: metrics travel with versions; promotion refuses worse models."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionrec.errors import FailedPrecondition
from sessionrec.events import EventType
from sessionrec.store import Store
from training import registry
from training.artifact import current_version, read_meta
from training.pipeline import train

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
VIEW = int(EventType.ITEM_VIEW)


@pytest.fixture
def versions(three_groups: Store, tmp_path: Path) -> tuple[str, str, str]:
    """(models dir, a good model, a worse model); the good one is current."""
    models = str(tmp_path / "models")
    good = train(three_groups, models, "itemknn", {"K": 20, "num_threads": 1}, evaluate_k=5)
    worse = train(three_groups, models, "popular", make_current=False, evaluate_k=5)
    return models, good.version, worse.version


def test_versions_carry_metrics_fingerprint_and_history(versions: tuple[str, str, str]) -> None:
    models, good, worse = versions
    meta_good, meta_worse = read_meta(models, good), read_meta(models, worse)
    assert meta_good["metrics"]["ndcg"] > meta_worse["metrics"]["ndcg"]
    assert meta_good["data_fingerprint"] == meta_worse["data_fingerprint"]  # same data
    listed = {m["version"]: m for m in registry.list_models(models)}
    assert listed[good]["current"] and not listed[worse]["current"]
    assert registry.read_history(models) == [good]


def test_promote_refuses_a_worse_model_and_shows_the_difference(
    versions: tuple[str, str, str],
) -> None:
    models, good, worse = versions
    with pytest.raises(FailedPrecondition, match="worse") as refused:
        registry.promote(models, worse)
    assert "ndcg" in str(refused.value) and "candidate" in str(refused.value)
    assert current_version(models) == good
    comparison = registry.promote(models, worse, force=True)
    assert comparison.better is False
    assert current_version(models) == worse


def test_rollback_returns_to_the_previous_promotion(versions: tuple[str, str, str]) -> None:
    models, good, worse = versions
    registry.promote(models, worse, force=True)
    assert registry.rollback(models) == good
    assert current_version(models) == good


def test_diff_names_what_changed(versions: tuple[str, str, str]) -> None:
    models, good, worse = versions
    changes = registry.diff(models, good, worse)
    assert changes["algorithm"] == {good: "itemknn", worse: "popular"}
    assert "data_fingerprint" not in changes
    assert changes["metrics"]["ndcg"][good] > changes["metrics"]["ndcg"][worse]


def test_rollback_without_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="rollback"):
        registry.rollback(tmp_path)


def test_scheduled_retraining_promotes_only_a_model_that_is_not_worse(
    three_groups: Store, tmp_path: Path
) -> None:
    from training.pipeline import retrain_periodically

    models = str(tmp_path / "models")
    good = train(three_groups, models, "itemknn", {"K": 20, "num_threads": 1}, evaluate_k=5)
    worse_runs = retrain_periodically(
        three_groups.url, models, "popular", every_s=0.01, evaluate_k=5, max_runs=2
    )
    assert [promoted for _, promoted in worse_runs] == [False, False]
    assert current_version(models) == good.version
    same_runs = retrain_periodically(
        three_groups.url,
        models,
        "itemknn",
        {"K": 20, "num_threads": 1},
        every_s=0.01,
        evaluate_k=5,
        max_runs=1,
    )
    assert same_runs[0][1] is True  # as good as the current one: promoted
    assert current_version(models) == same_runs[0][0]
