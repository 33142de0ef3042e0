"""The tune and models commands end to end on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessionrec.cli import main
from sessionrec.events import EventType
from sessionrec.store import Store
from tests.conftest import store_url
from training.artifact import current_version, list_versions

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
VIEW = int(EventType.ITEM_VIEW)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_promote_refusal_and_rollback(
    three_groups: Store, db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, models = store_url(db_path), str(tmp_path / "models")
    code, out, _ = run(
        capsys,
        "train",
        "--quiet",
        "--db",
        db,
        "--models",
        models,
        "--algorithm",
        "itemknn",
        "--K",
        "20",
        "--num-threads",
        "1",
        "--evaluate",
        "5",
    )
    assert code == 0
    good = json.loads(out)
    assert good["metrics"]["ndcg"] > 0
    code, out, _ = run(
        capsys,
        "train",
        "--quiet",
        "--db",
        db,
        "--models",
        models,
        "--algorithm",
        "popular",
        "--evaluate",
        "5",
        "--no-promote",
    )
    worse = json.loads(out)["version"]
    code, out, err = run(capsys, "models", "--models", models, "promote", worse)
    assert code == 2 and "worse" in err and "ndcg" in err
    assert current_version(models) == good["version"]
    code, out, _ = run(capsys, "models", "--models", models, "promote", worse, "--force")
    assert code == 0 and "candidate" in out and current_version(models) == worse
    code, out, _ = run(capsys, "models", "--models", models, "rollback")
    assert code == 0 and current_version(models) == good["version"]
    code, out, _ = run(capsys, "models", "--models", models, "list")
    assert {m["version"] for m in json.loads(out)} == set(list_versions(models))
    code, out, _ = run(capsys, "models", "--models", models, "diff", good["version"], worse)
    assert json.loads(out)["algorithm"] == {good["version"]: "itemknn", worse: "popular"}


def test_tune_saves_and_promotes_the_winner(
    three_groups: Store, db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = str(tmp_path / "models")
    code, out, _ = run(
        capsys,
        "tune",
        "--quiet",
        "--db",
        store_url(db_path),
        "--models",
        models,
        "--trials",
        "4",
        "--algorithms",
        "ease,itemknn",
        "--k",
        "5",
        "--seed",
        "3",
    )
    assert code == 0
    result = json.loads(out)
    assert result["trials"] == 4 and result["promoted"] is True
    assert current_version(models) == result["version"]
    assert result["test"]["ndcg"] >= result["popularity_test"]["ndcg"]


def test_weight_flags_are_checked(
    three_groups: Store, db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "train",
        "--quiet",
        "--db",
        store_url(db_path),
        "--models",
        str(tmp_path / "m"),
        "--weight",
        "NOPE=2",
    )
    assert code == 2 and "type_weights" in err
