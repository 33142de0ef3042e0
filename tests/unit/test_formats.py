"""Dataset formats (training/formats.py) through the shared import machinery:
MovieLens u.data and ratings.csv, DIGINETICA, YooChoose, a mapped CSV/TSV, format
detection and ``sessionrec import --format``; plus the real DIGINETICA sample
and MovieLens 100K (marked ``dataset``, skipped when absent)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from sessionrec.cli import main
from sessionrec.events import EndReason, EventType
from sessionrec.store import Store
from tests.conftest import raw_connection, store_exists, store_url
from training.datasets import MOVIELENS_100K, SHARED_DATASETS, movielens_to_csv
from training.formats import (
    FORMATS,
    detect_format,
    import_dataset,
    plan_import,
    reader_for,
)
from training.importer import ImportFormatError, import_csv

DIGINETICA_SAMPLE = SHARED_DATASETS / "diginetica-cikm2016-sample" / "sample_train-item-views.csv"
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
DAY_MS = 86_400_000


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def query(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with raw_connection(db_path) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


def day_ms(date: str) -> int:
    return int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp() * 1000)


# ---------------------------------------------------------------- MovieLens
def test_movielens_u_data_good_and_bad_rows(tmp_path: Path, store: Store, db_path: Path) -> None:
    path = write(
        tmp_path,
        "u.data",
        [
            f"196\t242\t3\t{T0}",  # 1 ok
            f"186\t302\t3\t{T0 + 10}",  # 2 ok
            f"22\t377\t1\t{T0 + 20}\textra",  # 3 five fields
            "",  # 4 blank: not a row
            f"244\t51\tgreat\t{T0 + 30}",  # 5 rating not a number
            "166\t346\t1\tyesterday",  # 6 bad timestamp
            f"\t346\t1\t{T0 + 40}",  # 7 no user
            f"298 474 4 {T0 + 50}",  # 8 ok: space-separated
        ],
    )
    report = import_dataset(store, path, "movielens")
    assert report.rows == 7
    assert report.imported == 3
    assert [b.line for b in report.bad] == [3, 5, 6, 7]
    reasons = [b.reason for b in report.bad]
    assert reasons[0].startswith("row") and reasons[1].startswith("rating")
    assert reasons[2].startswith("timestamp") and reasons[3].startswith("user_id")
    (e,) = store.user_item_events("196", 10)
    assert (e.item_id, e.type, e.ts_ms) == ("242", int(EventType.ITEM_VIEW), T0 * 1000)
    # The rating is kept as the event's value.
    assert query(db_path, "SELECT value FROM events WHERE user_id = '298'") == [(4.0,)]
    # No session ids in the format: one closed session per user here.
    assert report.sessions == 3


def test_movielens_min_rating_skips_lower_ratings(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "u.data",
        [f"1\t{item}\t{rating}\t{T0 + item}" for item, rating in enumerate([1, 2, 3, 4, 5, 4])],
    )
    report = import_dataset(store, path, "movielens", min_rating=4)
    assert (report.rows, report.imported, report.skipped, report.bad) == (6, 3, 3, [])
    assert report.to_dict()["skipped"] == 3
    assert sorted(e.item_id for e in store.user_item_events("1", 10)) == ["3", "4", "5"]


def test_movielens_event_ids_match_the_converted_csv(tmp_path: Path, store: Store) -> None:
    """Importing u.data directly or through movielens_to_csv gives the same event
    ids: the second import stores nothing twice."""
    path = write(
        tmp_path, "u.data", [f"{u}\t{i}\t4\t{T0 + 60 * i}" for u in "12" for i in range(5)]
    )
    first = import_dataset(store, path, "movielens")
    assert (first.imported, first.duplicates) == (10, 0)
    again = import_dataset(store, path, "movielens")
    assert (again.imported, again.duplicates) == (0, 10)
    converted = tmp_path / "ml.csv"
    movielens_to_csv(path, converted)
    via_csv = import_csv(store, converted)
    assert (via_csv.imported, via_csv.duplicates) == (0, 10)
    assert store.count_events() == 10


def test_movielens_ratings_csv(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            f"1,31,2.5,{T0}",  # 2 skipped (< 3.5)
            f"1,1029,3.5,{T0 + 1}",  # 3 ok
            f"1,1061,x,{T0 + 2}",  # 4 bad rating
            "1,1129,4.0",  # 5 three fields
            f"2,10,nan,{T0 + 4}",  # 6 not finite
            f"2,17,5.0,{T0 + 5}",  # 7 ok
        ],
    )
    report = import_dataset(store, path, "movielens-csv", min_rating=3.5)
    assert (report.rows, report.imported, report.skipped) == (6, 2, 1)
    assert [b.line for b in report.bad] == [4, 5, 6]
    assert report.bad[0].reason.startswith("rating") and report.bad[1].reason.startswith("row")
    again = import_dataset(store, path, "movielens-csv", min_rating=3.5)
    assert (again.imported, again.duplicates) == (0, 2)


def test_movielens_ratings_csv_needs_its_header(tmp_path: Path, store: Store) -> None:
    path = write(tmp_path, "ratings.csv", ["user,movie,rating,timestamp", f"1,2,3,{T0}"])
    with pytest.raises(ImportFormatError, match="userId,movieId,rating,timestamp"):
        import_dataset(store, path, "movielens-csv")
    assert store.count_events() == 0


# --------------------------------------------------------------- DIGINETICA
DIGI_HEADER = "session_id;user_id;item_id;timeframe;eventdate"


def test_diginetica_sessions_kept_sorted_by_time_and_anonymous_users(
    tmp_path: Path, store: Store, db_path: Path
) -> None:
    path = write(
        tmp_path,
        "train-item-views.csv",
        [
            DIGI_HEADER,
            "1;NA;81766;526309;2016-05-09",  # rows of a session are not in time order
            "1;NA;31331;1031018;2016-05-09",
            "1;NA;32118;243569;2016-05-09",
            "2;NA;33043;9000;2016-05-10",
            "3;5;11;2000;2016-05-09",
            "3;5;12;1000;2016-05-09",
        ],
    )
    report = import_dataset(store, path, "diginetica")
    assert (report.rows, report.imported, report.sessions, report.bad) == (6, 6, 3, [])
    s1 = store.get_session("1")
    assert s1 is not None
    assert s1.user_id == "anon-1"  # anonymous: a stable per-session user
    base = day_ms("2016-05-09")
    assert (s1.started_at_ms, s1.ended_at_ms) == (base + 243569, base + 1031018)
    assert s1.end_reason == EndReason.TIMEOUT and s1.event_count == 3
    # Newest first; times are eventdate (UTC midnight) + timeframe ms.
    events = store.session_item_events("1", 10)
    assert [(e.item_id, e.ts_ms) for e in events] == [
        ("31331", base + 1031018),
        ("81766", base + 526309),
        ("32118", base + 243569),
    ]
    # Dwell derived in time order, not file order.
    assert [e.dwell_ms for e in events] == [None, 1031018 - 526309, 526309 - 243569]
    s3 = store.get_session("3")
    assert s3 is not None and (s3.user_id, s3.event_count) == ("5", 2)
    assert [e.item_id for e in store.user_item_events("5", 10)] == ["11", "12"]
    users = {u for (u,) in query(db_path, "SELECT DISTINCT user_id FROM events")}
    assert users == {"anon-1", "anon-2", "5"}


def test_diginetica_camel_case_header_and_columns_in_any_order(
    tmp_path: Path, store: Store
) -> None:
    path = write(
        tmp_path,
        "views.csv",
        ["eventdate;timeframe;itemId;userId;sessionId", "2016-01-03;5;9;NA;44"],
    )
    report = import_dataset(store, path, "diginetica")
    assert report.imported == 1
    (e,) = store.session_item_events("44", 1)
    assert (e.item_id, e.ts_ms) == ("9", day_ms("2016-01-03") + 5)


def test_diginetica_bad_rows_are_reported_with_their_line(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "views.csv",
        [
            DIGI_HEADER,  # 1
            "1;NA;10;100;2016-05-09",  # 2 ok
            "1;NA;11;soon;2016-05-09",  # 3 timeframe not an integer
            "1;NA;12;-5;2016-05-09",  # 4 negative timeframe
            "1;NA;13;100;09/05/2016",  # 5 bad date
            "1;NA;14;100",  # 6 four fields
            ";NA;15;100;2016-05-09",  # 7 no session
            "1;NA;;100;2016-05-09",  # 8 no item
            "2;7;16;100;2016-05-09",  # 9 ok
        ],
    )
    report = import_dataset(store, path, "diginetica")
    assert report.rows == 8 and report.imported == 2
    assert [b.line for b in report.bad] == [3, 4, 5, 6, 7, 8]
    assert [b.reason.split(":")[0] for b in report.bad] == [
        "timeframe",
        "timeframe",
        "eventdate",
        "row",
        "session_id",
        "item_id",
    ]


def test_diginetica_na_rows_of_a_known_users_session_are_that_users(
    tmp_path: Path, store: Store
) -> None:
    path = write(
        tmp_path,
        "views.csv",
        [
            DIGI_HEADER,
            "7;NA;1;100;2016-05-09",  # 2: NA before the user logged in
            "7;42;2;200;2016-05-09",
            "7;NA;3;300;2016-05-09",
            "7;42;4;400;2016-05-09",
            "7;99;5;50;2016-05-09",  # 6: a second known user (fewer rows): bad
        ],
    )
    report = import_dataset(store, path, "diginetica")
    assert report.imported == 4
    assert [b.line for b in report.bad] == [6]
    assert "'7' used by two users (it is '42''s)" in report.bad[0].reason
    s = store.get_session("7")
    assert s is not None and (s.user_id, s.event_count) == ("42", 4)
    assert store.user_item_events("99", 10) == []


def test_diginetica_reimport_stores_nothing_twice(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "views.csv",
        [DIGI_HEADER, "1;NA;10;100;2016-05-09", "1;NA;10;100;2016-05-09", "2;3;4;5;2016-05-10"],
    )
    first = import_dataset(store, path, "diginetica")
    # An identical repeated click is the same event.
    assert (first.imported, first.duplicates) == (2, 1)
    second = import_dataset(store, path, "diginetica")
    assert (second.imported, second.duplicates) == (0, 3)
    assert store.count_events() == 2 and store.count_sessions() == 2


def test_diginetica_header_required(tmp_path: Path, store: Store) -> None:
    path = write(tmp_path, "views.csv", ["session_id;item_id;timeframe", "1;2;3"])
    with pytest.raises(ImportFormatError, match="missing userid, eventdate"):
        import_dataset(store, path, "diginetica")


# ---------------------------------------------------------------- YooChoose
def test_yoochoose_clicks(tmp_path: Path, store: Store, db_path: Path) -> None:
    path = write(
        tmp_path,
        "yoochoose-clicks.dat",
        [
            "1,2014-04-07T10:54:09.868Z,214536500,0",  # 1 ok
            "1,2014-04-07T10:51:09.277Z,214536502,S",  # 2 ok (earlier)
            "2,2014-04-06T13:26:42.223Z,214662819",  # 3 ok, no category
            "2,yesterday,214662819,0",  # 4 bad timestamp
            "3,2014-04-06T13:26:42.223Z",  # 5 two fields
            ",2014-04-06T13:26:42.223Z,214662819,0",  # 6 no session
            "4,2014-04-06T13:26:42.223Z,,0",  # 7 no item
        ],
    )
    report = import_dataset(store, path, "yoochoose")
    assert (report.rows, report.imported, report.sessions) == (7, 3, 2)
    assert [b.line for b in report.bad] == [4, 5, 6, 7]
    assert [b.reason.split(":")[0] for b in report.bad] == [
        "timestamp",
        "row",
        "session_id",
        "item_id",
    ]
    s1 = store.get_session("1")
    assert s1 is not None and s1.user_id == "anon-1"
    start = int(dt.datetime(2014, 4, 7, 10, 51, 9, 277000, tzinfo=dt.UTC).timestamp() * 1000)
    assert (s1.started_at_ms, s1.ended_at_ms) == (start, start + 180_591)
    props = dict(query(db_path, "SELECT item_id, properties FROM events"))
    assert json.loads(props["214536502"]) == {"category": "S"}
    assert props["214662819"] is None
    again = import_dataset(store, path, "yoochoose")
    assert (again.imported, again.duplicates) == (0, 3)


def test_yoochoose_tolerates_a_header_line(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "clicks.csv",
        ["session_id,timestamp,item_id,category", "9,2014-04-07T10:54:09Z,5,0"],
    )
    report = import_dataset(store, path, "yoochoose")
    assert (report.rows, report.imported, report.bad) == (1, 1, [])


# ------------------------------------------------------------------- mapped
def test_mapped_csv_with_a_constant_event_type(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "export.txt",
        [
            "uid;product;time;price",
            f"u1;p1;{T0};9.99",  # 2 ok
            f"u1;p2;{T0 + 5};1",  # 3 ok
            f";p3;{T0};1",  # 4 no user
            "u2;p4;later;1",  # 5 bad time
            f"u2;p5;{T0};1;extra",  # 6 more fields than the header
        ],
    )
    mapping = {"user_id": "uid", "item_id": "product", "timestamp": "time"}
    report = import_dataset(
        store, path, mapping=mapping, event_type="ITEM_VIEW", delimiter=";", session_timeout_s=60
    )
    assert (report.rows, report.imported, report.sessions) == (5, 2, 1)
    assert [b.line for b in report.bad] == [4, 5, 6]
    assert [b.reason.split(":")[0] for b in report.bad] == ["user_id", "timestamp", "row"]
    events = store.user_item_events("u1", 10)
    assert [(e.item_id, e.type) for e in events] == [
        ("p2", int(EventType.ITEM_VIEW)),
        ("p1", int(EventType.ITEM_VIEW)),
    ]
    again = import_dataset(store, path, mapping=mapping, event_type="ITEM_VIEW", delimiter=";")
    assert (again.imported, again.duplicates) == (0, 2)


def test_mapped_tsv_with_types_sessions_and_milliseconds(tmp_path: Path, store: Store) -> None:
    path = write(
        tmp_path,
        "events.tsv",
        [
            "visitor\titemid\tevent\tts\tsession_id",
            f"v1\ti1\tPURCHASE\t{T0 * 1000 + 5}\ts1",
            f"v1\ti2\t\t{T0 * 1000 + 9}\ts1",  # empty type: the constant one
            f"\ti3\tCLICK\t{T0 * 1000}\ts2",  # no user: anonymous per session
        ],
    )
    report = import_dataset(
        store,
        path,
        "mapped",
        mapping={
            "user_id": "visitor",
            "item_id": "itemid",
            "event_type": "event",
            "timestamp": "ts",
        },
        event_type="item_view",
        timestamp_unit="ms",
    )
    assert (report.imported, report.bad) == (3, [])
    assert [(e.item_id, e.type, e.ts_ms) for e in store.user_item_events("v1", 10)] == [
        ("i2", int(EventType.ITEM_VIEW), T0 * 1000 + 9),
        ("i1", int(EventType.PURCHASE), T0 * 1000 + 5),
    ]
    s2 = store.get_session("s2")
    assert s2 is not None and s2.user_id == "anon-s2"


@pytest.mark.parametrize(
    ("mapping", "event_type", "message"),
    [
        ({"user": "uid"}, "ITEM_VIEW", "unknown field 'user'"),
        ({"user_id": "nope", "item_id": "product", "timestamp": "time"}, "ITEM_VIEW", "'nope'"),
        ({"user_id": "uid", "item_id": "product", "timestamp": "time"}, None, "event_type"),
        ({"user_id": "uid", "timestamp": "time"}, "ITEM_VIEW", "item_id"),
    ],
)
def test_mapped_header_problems_fail_the_whole_file(
    tmp_path: Path, store: Store, mapping: dict[str, str], event_type: str | None, message: str
) -> None:
    path = write(tmp_path, "x.csv", ["uid,product,time", f"u1,p1,{T0}"])
    with pytest.raises(ImportFormatError, match=message):
        import_dataset(store, path, "mapped", mapping=mapping, event_type=event_type)
    assert store.count_events() == 0


# ------------------------------------------------------- detection, options
@pytest.mark.parametrize(
    ("name", "first_line", "expected"),
    [
        ("events.csv", "user_id,item_id,event_type,timestamp", "csv"),
        ("u.data", f"196\t242\t3\t{T0}", "movielens"),
        ("u1.base", "", "movielens"),
        ("ratings.csv", "userId,movieId,rating,timestamp", "movielens-csv"),
        ("views.csv", DIGI_HEADER, "diginetica"),
        ("views.csv", "sessionId;userId;itemId;timeframe;eventdate", "diginetica"),
        ("clicks.dat", "1,2014-04-07T10:51:09.277Z,214536502,0", "yoochoose"),
        ("clicks.dat", "1,2014-04-07T10:51:09.277Z,214536502", "yoochoose"),
        ("other.csv", "a,b,c", "csv"),
    ],
)
def test_detect_format(tmp_path: Path, name: str, first_line: str, expected: str) -> None:
    assert detect_format(write(tmp_path, name, [first_line])) == expected


def test_options_a_format_does_not_take_are_refused() -> None:
    with pytest.raises(ImportFormatError, match="min_rating: not an option of the diginetica"):
        reader_for("diginetica", min_rating=4)
    with pytest.raises(ImportFormatError, match="mapping"):
        reader_for("csv", mapping={"user_id": "u"})
    with pytest.raises(ImportFormatError, match="event_type: unknown"):
        reader_for("yoochoose", event_type="LOOKED")
    with pytest.raises(ImportFormatError, match="format: unknown"):
        reader_for("parquet")
    assert set(FORMATS) == {
        "csv",
        "movielens",
        "movielens-csv",
        "diginetica",
        "yoochoose",
        "mapped",
    }


def test_plan_picks_mapped_with_a_mapping_and_tab_for_tsv(tmp_path: Path) -> None:
    path = write(tmp_path, "x.tsv", ["a\tb"])
    assert plan_import(path, mapping={"user_id": "a"}).format == "mapped"
    assert plan_import(path).format == "csv"


# ---------------------------------------------------------------------- CLI
def run_import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(["import", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_cli_movielens_format_with_min_rating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "ratings.tsv", [f"1\t{i}\t{i}\t{T0 + i}" for i in range(1, 6)])
    db = tmp_path / "cli.db"
    code, report, _ = run_import(
        capsys, "--db", store_url(db), str(path), "--format", "movielens", "--min-rating", "4"
    )
    assert code == 0
    assert (report["rows"], report["imported"], report["skipped"]) == (5, 2, 3)


def test_cli_detects_diginetica_and_reports_bad_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "views.csv", [DIGI_HEADER, "1;NA;10;100;2016-05-09", "1;NA;11;x;2016"])
    db = tmp_path / "cli.db"
    code, report, err = run_import(capsys, "--db", store_url(db), str(path))
    assert code == 0
    assert (report["imported"], report["bad_rows"]) == (1, 1)
    assert f"{path}:3: timeframe" in err
    assert query(db, "SELECT session_id, user_id FROM events") == [("1", "anon-1")]


def test_cli_map_implies_the_mapped_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "export.csv", ["uid;product;time", f"u1;p1;{T0}"])
    db = tmp_path / "cli.db"
    args = ["--map", "user_id=uid", "--map", "item_id=product", "--map", "timestamp=time"]
    code, report, _ = run_import(
        capsys,
        "--db",
        store_url(db),
        str(path),
        *args,
        "--event-type",
        "ITEM_VIEW",
        "--delimiter",
        ";",
    )
    assert code == 0 and report["imported"] == 1


def test_cli_option_errors_exit_2_before_creating_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "views.csv", [DIGI_HEADER, "1;NA;10;100;2016-05-09"])
    db = tmp_path / "cli.db"
    code, report, err = run_import(capsys, "--db", store_url(db), str(path), "--min-rating", "4")
    assert (code, report) == (2, None)
    assert "min_rating" in err and "error" in err
    assert not store_exists(db)
    code, _, err = run_import(capsys, "--db", store_url(db), str(path), "--map", "user_id")
    assert code == 2 and "FIELD=COLUMN" in err


def test_cli_a_bad_header_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "x.csv", ["a,b,c", "1,2,3"])
    code, _, err = run_import(capsys, "--db", store_url(tmp_path / "x.db"), str(path))
    assert code == 2 and "missing required column" in err


# ------------------------------------------------------------ real datasets
@pytest.mark.dataset
def test_the_real_diginetica_sample(store: Store, db_path: Path) -> None:
    if not DIGINETICA_SAMPLE.exists():
        pytest.skip(f"DIGINETICA sample not found at {DIGINETICA_SAMPLE} (../shared/datasets)")
    report = import_dataset(store, DIGINETICA_SAMPLE)  # detected by its header
    # Its README: 12,391 rows, 2,986 sessions, 7,139 items, 1,270 known users.
    assert report.rows == 12_391
    assert report.sessions == 2_986
    assert query(db_path, "SELECT COUNT(DISTINCT item_id) FROM events") == [(7_139,)]
    assert query(db_path, "SELECT COUNT(DISTINCT session_id) FROM events") == [(2_986,)]
    # Two sessions have two known users each (1691: 1 row each, 2998: 6 and 2
    # rows): a session belongs to one user, so the other user's 3 rows are bad.
    assert [b.line for b in report.bad] == [5029, 9368, 9369]
    assert all("used by two users" in b.reason for b in report.bad)
    assert report.imported == 12_391 - 3
    known = query(
        db_path, "SELECT COUNT(DISTINCT user_id) FROM events WHERE user_id NOT LIKE 'anon-%'"
    )
    assert known == [(1_270 - 2,)]  # users 17143 and 1328 had only the bad rows
    again = import_dataset(store, DIGINETICA_SAMPLE, "diginetica")
    assert (again.imported, again.duplicates) == (0, 12_391 - 3)


@pytest.mark.dataset
def test_the_real_movielens_u_data_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not MOVIELENS_100K.exists():
        pytest.skip(f"MovieLens 100K not found at {MOVIELENS_100K} (../shared/datasets)")
    db = tmp_path / "ml.db"
    code, report, _ = run_import(
        capsys, "--db", store_url(db), str(MOVIELENS_100K), "--format", "movielens"
    )
    assert code == 0
    assert (report["rows"], report["imported"], report["bad_rows"]) == (100_000, 100_000, 0)
    assert report["sessions"] > 943
    assert query(db, "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM events") == [(100_000, 943)]
