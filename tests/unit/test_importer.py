"""CSV import (training/importer.py) into a real store: bad rows with line numbers,
timestamps, sessionization, idempotent re-imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionrec.events import EndReason, EventType
from sessionrec.store import Store
from tests.conftest import raw_connection
from training.importer import BadRow, ImportFormatError, import_csv, parse_timestamp_ms

HEADER = "user_id,item_id,event_type,timestamp,session_id,dwell_ms"
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def write_csv(tmp_path: Path, lines: list[str], name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def session_ids(db_path: Path, user: str) -> list[str]:
    with raw_connection(db_path) as conn:
        rows = conn.execute(
            "SELECT session_id FROM sessions WHERE user_id = ? ORDER BY started_at_ms", (user,)
        ).fetchall()
    return [r[0] for r in rows]


def test_good_rows_load_and_bad_rows_are_reported_with_their_line(
    tmp_path: Path, store: Store
) -> None:
    path = write_csv(
        tmp_path,
        [
            HEADER,  # line 1
            f"u1,i1,ITEM_VIEW,{T0},,",  # 2 ok
            f",i1,ITEM_VIEW,{T0 + 1},,",  # 3 missing user
            f"u2,i2,VIEWED_IT,{T0 + 2},,",  # 4 unknown type
            "u2,i2,ITEM_VIEW,yesterday,,",  # 5 bad timestamp
            f"u2,,ITEM_VIEW,{T0 + 3},,",  # 6 ITEM_VIEW without item
            f"u2,i2,ITEM_VIEW,{T0 + 4},,-5",  # 7 negative dwell
            f"u2,i3,purchase,{T0 + 5},,",  # 8 ok
            "",  # 9 blank line
            f"u3,i4,2,{T0 + 6},,1500",  # 10 ok (type by number)
            f"u3,i4,ITEM_VIEW,{T0 + 7},,abc",  # 11 dwell not a number
            f"u3,i5,item-view,{T0 + 8},,",  # 12 ok
        ],
    )
    report = import_csv(store, path)
    assert report.imported == 4
    assert store.count_events() == 4
    assert report.duplicates == 0
    assert [b.line for b in report.bad] == [3, 4, 5, 6, 7, 11]
    reasons = [b.reason for b in report.bad]
    assert reasons[0].startswith("user_id")
    assert reasons[1].startswith("event_type") and "VIEWED_IT" in reasons[1]
    assert reasons[2].startswith("timestamp")
    assert reasons[3].startswith("item_id")
    assert reasons[4].startswith("dwell_ms")
    assert reasons[5].startswith("dwell_ms")
    assert report.rows == 10
    assert report.to_dict()["bad_rows"] == 6
    u3 = store.user_item_events("u3", 10)
    assert [(e.item_id, e.dwell_ms) for e in u3] == [("i5", None), ("i4", 1500)]
    (u2,) = store.user_item_events("u2", 10)
    assert (u2.item_id, u2.type) == ("i3", int(EventType.PURCHASE))


def test_a_row_with_more_fields_than_the_header_is_bad(tmp_path: Path, store: Store) -> None:
    path = write_csv(tmp_path, [HEADER, f"u1,i1,ITEM_VIEW,{T0},,,extra", f"u1,i2,CLICK,{T0},,"])
    report = import_csv(store, path)
    assert [b.line for b in report.bad] == [2]
    assert report.imported == 1


def test_on_bad_row_is_called_for_every_bad_row(tmp_path: Path, store: Store) -> None:
    path = write_csv(tmp_path, [HEADER, f",i1,ITEM_VIEW,{T0},,", f"u1,,PURCHASE,{T0},,"])
    seen: list[BadRow] = []
    import_csv(store, path, on_bad_row=seen.append)
    assert [b.line for b in seen] == [2, 3]


def test_iso_8601_and_epoch_timestamps(tmp_path: Path, store: Store) -> None:
    path = write_csv(
        tmp_path,
        [
            "user_id,item_id,event_type,timestamp",
            f"u1,epoch,ITEM_VIEW,{T0}",
            f"u1,epoch-frac,ITEM_VIEW,{T0}.25",
            "u1,iso-z,ITEM_VIEW,2023-11-14T22:13:21Z",
            "u1,iso-naive,ITEM_VIEW,2023-11-14T22:13:22.5",
            "u1,iso-offset,ITEM_VIEW,2023-11-15T00:13:23+02:00",
        ],
    )
    report = import_csv(store, path)
    assert report.bad == []
    ts = {e.item_id: e.ts_ms for e in store.user_item_events("u1", 10)}
    base = T0 * 1000
    assert ts == {
        "epoch": base,
        "epoch-frac": base + 250,
        "iso-z": base + 1000,
        "iso-naive": base + 2500,  # naive means UTC
        "iso-offset": base + 3000,
    }


def test_parse_timestamp_ms() -> None:
    assert parse_timestamp_ms("0") == 0
    assert parse_timestamp_ms(" 1.5 ") == 1500
    assert parse_timestamp_ms("1970-01-01T00:00:01") == 1000
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp_ms("")
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp_ms("nan")


@pytest.mark.parametrize(
    "header",
    [
        "user_id,item_id,event_type",
        "user,item_id,event_type,timestamp",
        "item_id,timestamp",
    ],
)
def test_a_missing_required_column_fails_the_whole_file(
    tmp_path: Path, store: Store, header: str
) -> None:
    path = write_csv(tmp_path, [header, "a,b,c,d"])
    with pytest.raises(ImportFormatError, match="missing required column"):
        import_csv(store, path)
    assert store.count_events() == 0


def test_header_names_may_have_spaces_and_columns_any_order(tmp_path: Path, store: Store) -> None:
    path = write_csv(
        tmp_path, [" timestamp , event_type , item_id , user_id ", f"{T0},CLICK,i1,u1"]
    )
    report = import_csv(store, path)
    assert report.imported == 1
    (e,) = store.user_item_events("u1", 1)
    assert (e.item_id, e.type, e.ts_ms) == ("i1", int(EventType.CLICK), T0 * 1000)


def test_rows_without_session_are_split_into_sessions_by_the_timeout(
    tmp_path: Path, store: Store, db_path: Path
) -> None:
    timeout = 1800
    path = write_csv(
        tmp_path,
        [
            HEADER,
            f"u1,i1,ITEM_VIEW,{T0},,",
            f"u1,i3,ITEM_VIEW,{T0 + 120},,",  # rows need not be in time order
            f"u1,i2,ITEM_VIEW,{T0 + 60},,",
            f"u1,i4,ITEM_VIEW,{T0 + 120 + timeout + 1},,",  # gap > timeout: new session
            f"u1,i5,ITEM_VIEW,{T0 + 120 + timeout + 31},,",
            f"u2,i1,ITEM_VIEW,{T0 + 30},,",
            f"u1,i6,ITEM_VIEW,{T0 + 120 + 2 * timeout + 31},,",  # gap == timeout: same session
        ],
    )
    report = import_csv(store, path, session_timeout_s=timeout)
    assert report.sessions == 3
    assert store.count_sessions() == 3
    ids = session_ids(db_path, "u1")  # ordered by start
    found = store.get_sessions(ids)
    first, second = found[ids[0]], found[ids[1]]
    assert (first.started_at_ms, first.ended_at_ms) == (T0 * 1000, (T0 + 120) * 1000)
    assert first.event_count == 3
    assert second.event_count == 3
    assert second.started_at_ms == (T0 + 120 + timeout + 1) * 1000
    for s in (first, second):
        assert s.end_reason == EndReason.TIMEOUT  # imported sessions are closed
        assert s.ended_at_ms == s.last_event_at_ms
    # Dwell derived like a live session: gap to the next event, last view unknown.
    dwell = {e.item_id: e.dwell_ms for e in store.user_item_events("u1", 10)}
    assert dwell == {
        "i1": 60_000,
        "i2": 60_000,
        "i3": None,
        "i4": 30_000,
        "i5": 1_800_000,
        "i6": None,
    }
    assert first.total_dwell_ms == 120_000


def test_rows_with_a_session_id_keep_it(tmp_path: Path, store: Store) -> None:
    path = write_csv(
        tmp_path,
        [
            HEADER,
            f"u1,i1,ITEM_VIEW,{T0},web-1,",
            f"u1,i2,ITEM_VIEW,{T0 + 5000},web-1,",  # far apart, same given session
            f"u1,i3,ITEM_VIEW,{T0 + 10},,",
        ],
    )
    import_csv(store, path)
    s = store.get_session("web-1")
    assert s is not None
    assert (s.user_id, s.event_count) == ("u1", 2)
    assert (s.started_at_ms, s.ended_at_ms) == (T0 * 1000, (T0 + 5000) * 1000)
    assert store.count_sessions() == 2


def test_reimporting_the_same_file_stores_nothing_twice(
    tmp_path: Path, store: Store, db_path: Path
) -> None:
    path = write_csv(
        tmp_path,
        [
            HEADER,
            f"u1,i1,ITEM_VIEW,{T0},,",
            f"u1,i2,ADD_TO_CART,{T0 + 10},,",
            f"u2,i1,ITEM_VIEW,{T0 + 20},s-given,700",
            f"u1,i9,ITEM_VIEW,{T0 + 9999},,",
        ],
    )
    first = import_csv(store, path)
    assert (first.imported, first.duplicates) == (4, 0)
    sessions_before = store.get_sessions([*session_ids(db_path, "u1"), "s-given"])
    second = import_csv(store, path)
    assert (second.imported, second.duplicates) == (0, 4)
    assert store.count_events() == 4
    assert store.count_sessions() == 3
    assert store.get_sessions([*session_ids(db_path, "u1"), "s-given"]) == sessions_before


def test_a_session_id_used_by_two_users_is_reported_and_not_stored(
    tmp_path: Path, store: Store
) -> None:
    path = write_csv(
        tmp_path,
        [HEADER, f"u1,i1,ITEM_VIEW,{T0},shared,", f"u2,i2,ITEM_VIEW,{T0 + 1},shared,"],
    )
    report = import_csv(store, path)
    assert report.imported == 1
    assert len(report.bad) == 1
    assert "shared" in report.bad[0].reason and "two users" in report.bad[0].reason
    s = store.get_session("shared")
    assert s is not None and (s.user_id, s.event_count) == ("u1", 1)
    assert store.user_item_events("u2", 10) == []


def test_a_session_id_used_by_two_users_is_reported_with_its_line(
    tmp_path: Path, store: Store
) -> None:
    path = write_csv(
        tmp_path,
        [
            HEADER,
            f"u1,i1,ITEM_VIEW,{T0},shared,",
            f"u1,i2,ITEM_VIEW,{T0 + 1},,",
            f"u2,i2,ITEM_VIEW,{T0 + 2},shared,",  # line 4
        ],
    )
    report = import_csv(store, path)
    assert [b.line for b in report.bad] == [4]


def test_a_session_id_of_another_user_already_in_the_store_is_reported(
    tmp_path: Path, store: Store
) -> None:
    import_csv(store, write_csv(tmp_path, [HEADER, f"u1,i1,ITEM_VIEW,{T0},shared,"], "a.csv"))
    report = import_csv(
        store, write_csv(tmp_path, [HEADER, f"u2,i2,ITEM_VIEW,{T0 + 1},shared,"], "b.csv")
    )
    s = store.get_session("shared")
    assert s is not None and s.user_id == "u1"
    assert len(report.bad) == 1 and "shared" in report.bad[0].reason
    assert report.imported == 0
    assert s.event_count == 1


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("u1,i1,ITEM_VIEW,inf,,", "timestamp"),
        ("u1,i1,ITEM_VIEW,1e400,,", "timestamp"),
        # Finite, but past what SQLite's 64-bit INTEGER holds once in milliseconds.
        ("u1,i1,ITEM_VIEW,1e20,,", "timestamp"),
        (f"u1,i1,ITEM_VIEW,{T0},,inf", "dwell_ms"),
    ],
    ids=["timestamp-inf", "timestamp-1e400", "timestamp-1e20", "dwell-inf"],
)
def test_an_out_of_range_number_is_a_bad_row_not_a_failed_import(
    tmp_path: Path, store: Store, row: str, field: str
) -> None:
    path = write_csv(tmp_path, [HEADER, f"u1,i0,ITEM_VIEW,{T0},,", row])
    report = import_csv(store, path)
    assert [b.line for b in report.bad] == [3]
    assert report.bad[0].reason.startswith(field)
    assert report.imported == 1
