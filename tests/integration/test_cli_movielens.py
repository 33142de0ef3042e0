"""The ``sessionrec`` CLI: import, train, evaluate; on MovieLens 100K where the
tests need it (marked ``dataset``; skipped when the dataset is absent)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import store_url
from training.artifact import current_version, load_artifact

from .support import sql_scalar

#: Acceptance criteria for the default ALS on MovieLens 100K (per-user temporal 80/20).
MIN_ALS_NDCG = 0.18
MIN_RATIO_VS_POPULAR = 1.4


@pytest.mark.dataset
def test_import_reports_every_row(movielens):
    assert movielens.rows == 100_000
    result = movielens.import_result
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["rows"] == 100_000
    assert report["imported"] == 100_000
    assert report["duplicates"] == 0
    assert report["bad_rows"] == 0 and report["bad"] == []
    assert report["sessions"] > 943  # sessions split at gaps: more than one per user
    assert sql_scalar(movielens.db_path, "SELECT COUNT(*) FROM events") == 100_000
    assert sql_scalar(movielens.db_path, "SELECT COUNT(DISTINCT user_id) FROM events") == 943
    # Imported sessions are closed at their last event.
    assert sql_scalar(movielens.db_path, "SELECT COUNT(*) FROM sessions") == report["sessions"]
    assert (
        sql_scalar(movielens.db_path, "SELECT COUNT(*) FROM sessions WHERE ended_at_ms IS NULL")
        == 0
    )
    assert sql_scalar(movielens.db_path, "SELECT SUM(event_count) FROM sessions") == 100_000


@pytest.mark.dataset
def test_import_twice_stores_nothing_twice(movielens_copy, movielens, cli):
    again = cli("import", "--db", movielens_copy.db_url, str(movielens.csv_path), "--quiet")
    assert again.returncode == 0, again.stderr
    report = again.json()
    assert (report["imported"], report["duplicates"]) == (0, 100_000)
    assert sql_scalar(movielens_copy.db_path, "SELECT COUNT(*) FROM events") == 100_000


@pytest.mark.dataset
def test_import_reports_bad_rows_with_line_numbers(movielens, tmp_path, cli):
    lines = movielens.csv_path.read_text().splitlines()
    header, good = lines[0], lines[1:41]
    bad = {
        # line number in the new file -> the row
        5: "196,242,NOT_A_TYPE,881250949",
        9: "196,,ITEM_VIEW,881250949",
        14: "196,242,ITEM_VIEW,yesterday",
        20: ",242,ITEM_VIEW,881250949",
        25: "196,242,ITEM_VIEW,881250949,extra",
    }
    rows: list[str] = []
    good_iter = iter(good)
    for line_no in range(2, 2 + len(good) + len(bad)):
        rows.append(bad[line_no] if line_no in bad else next(good_iter))
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    db_url = store_url(tmp_path / "mixed.db")

    result = cli("import", "--db", db_url, str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["rows"] == len(good) + len(bad)
    assert report["imported"] == len(good)
    assert report["bad_rows"] == len(bad)
    assert {b["line"] for b in report["bad"]} == set(bad)

    reported = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(rf"^{re.escape(str(path))}:(\d+): (.*)$", result.stderr, re.M)
    }
    assert set(reported) == set(bad), result.stderr
    assert reported[5].startswith("event_type")
    assert reported[9].startswith("item_id")
    assert reported[14].startswith("timestamp")
    assert reported[20].startswith("user_id")
    assert reported[25].startswith("row")
    assert sql_scalar(tmp_path / "mixed.db", "SELECT COUNT(*) FROM events") == len(good)


@pytest.mark.dataset
def test_train_writes_a_current_version(movielens):
    result = movielens.train_result
    assert result.returncode == 0, result.stderr
    info = result.json()
    assert info["algorithm"] == "als"
    assert info["current"] is True
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100_000)
    assert current_version(movielens.models_dir) == info["version"]
    artifact = load_artifact(movielens.models_dir, info["version"])  # verifies the checksum
    assert artifact.algorithm == "als"
    assert len(artifact.items) == 1682
    assert artifact.params["factors"] == info["params"]["factors"]


@pytest.mark.dataset
def test_train_no_promote_keeps_current(movielens_copy, cli):
    before = current_version(movielens_copy.models_dir)
    result = cli(
        "train",
        "--db",
        movielens_copy.db_url,
        "--models",
        str(movielens_copy.models_dir),
        "--algorithm",
        "popular",
        "--no-promote",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    info = result.json()
    assert info["current"] is False and info["algorithm"] == "popular"
    assert current_version(movielens_copy.models_dir) == before
    assert (movielens_copy.models_dir / "versions" / info["version"] / "meta.json").is_file()


@pytest.mark.dataset
def test_evaluate_als_beats_popularity(movielens, cli):
    result = cli("evaluate", "--db", movielens.db_url, "--algorithm", "als", "--k", "10", "--quiet")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["k"] == 10
    by_name = {r["algorithm"]: r for r in out["results"]}
    assert set(by_name) == {"als", "popular"}
    als, popular = by_name["als"]["ndcg"], by_name["popular"]["ndcg"]
    assert als >= MIN_ALS_NDCG, out
    assert als >= MIN_RATIO_VS_POPULAR * popular, out
    assert out["ndcg_ratio_vs_popular"] == pytest.approx(als / popular, abs=1e-3)
    assert by_name["als"]["users"] == 943


def test_import_reports_a_session_shared_by_two_users_at_its_line(tmp_path, cli):
    """A session id given in the file must belong to one user; the offending row
    is reported like every other bad row: with its line number."""
    path = tmp_path / "sessions.csv"
    path.write_text(
        "user_id,item_id,event_type,timestamp,session_id\n"
        "u1,i1,ITEM_VIEW,1000,s1\n"
        "u1,i2,ITEM_VIEW,1010,s1\n"
        "u2,i3,ITEM_VIEW,1020,s1\n"
        "u2,i4,ITEM_VIEW,1030,s2\n"
    )
    db = tmp_path / "sessions.db"
    result = cli("import", "--db", store_url(db), str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert (report["imported"], report["bad_rows"]) == (3, 1)
    assert sql_scalar(db, "SELECT COUNT(*) FROM events") == 3
    assert sql_scalar(db, "SELECT COUNT(DISTINCT user_id) FROM sessions WHERE session_id='s1'") == 1
    assert "session_id" in report["bad"][0]["reason"]
    assert report["bad"][0]["line"] == 4, report["bad"]
    assert f"{path}:4: session_id" in result.stderr, result.stderr


def test_cli_errors_exit_2(tmp_path, cli):
    missing = cli("import", "--db", store_url(tmp_path / "e.db"), str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "error" in missing.stderr
    empty = cli("evaluate", "--db", store_url(tmp_path / "e.db"), "--quiet")
    assert empty.returncode == 2
    assert "store" in empty.stderr
