"""``sessionrec export --format parquet``: training.export on real SQLite stores,
read back with pyarrow.dataset (Hive partitioning), and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sessionrec.events import EndReason, EventRecord, EventType, SessionRecord
from sessionrec.isotime import parse_iso_ms
from sessionrec.items import check_item
from sessionrec.store import Store
from training import export as export_mod
from training.export import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    MANIFEST,
    SCHEMA_VERSION,
    SESSIONS_SCHEMA,
    SUCCESS,
    ExportError,
    export_parquet,
)

DAY = 86_400_000
#: 2024-03-10T00:00:00Z
T0 = 1_710_028_800_000
VIEW = int(EventType.ITEM_VIEW)
SCREEN = int(EventType.SCREEN_VIEW)
PURCHASE = int(EventType.PURCHASE)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def read(root: Path, table: str, schema: pa.Schema | None = None) -> pa.Table:
    partitioning = None if table == "items" else "hive"
    return ds.dataset(
        root / table, format="parquet", partitioning=partitioning, schema=schema
    ).to_table()


def by_id(table: pa.Table, key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in table.to_pylist()}


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def fill(store: Store) -> None:
    """Two users, three sessions over three days (one still open), every kind of
    event column, and a small catalog."""
    s1 = SessionRecord(
        "s1", "u1", T0 + 1000, T0 + 1000, platform=1, app_version="3.1", utc_offset_min=120
    )
    s2 = SessionRecord("s2", "u2", T0 + DAY - 5000, T0 + DAY - 5000, platform=3)
    s3 = SessionRecord("s3", "u1", T0 + 2 * DAY + 10, T0 + 2 * DAY + 10, app_version="ü-1")
    events = [
        EventRecord("e1", "s1", "u1", SCREEN, T0 + 1000, screen="home"),
        EventRecord("e2", "s1", "u1", VIEW, T0 + 4000, "sku-1", properties={"src": "push"}),
        EventRecord("e3", "s1", "u1", VIEW, T0 + 9000, "sku-2", dwell_ms=1500),
        EventRecord(
            "e4",
            "s1",
            "u1",
            PURCHASE,
            T0 + 12_000,
            "sku-2",
            value=19.99,
            properties={"currency": "EUR", "coupon": "ä€"},
        ),
        EventRecord("e5", "s2", "u2", VIEW, T0 + DAY - 5000, "sku-1"),
        EventRecord("e6", "s2", "u2", VIEW, T0 + DAY + 1, "sku-3"),  # the session crosses midnight
        EventRecord("e7", "s3", "u1", int(EventType.SEARCH), T0 + 2 * DAY + 10, screen="search"),
    ]
    store.append_events(events, [s1, s2, s3], received_ms=T0 + 3 * DAY)
    store.end_session("s1", T0 + 20_000, EndReason.CLOSED, derive_last_dwell=True)
    store.end_session("s2", T0 + DAY + 1, EndReason.TIMEOUT, derive_last_dwell=False)
    store.upsert_items(
        [
            check_item(item_id="sku-1", title="Shoe", categories=["shoes", "men"], price=59.5),
            check_item(item_id="sku-2", attributes={"color": "red", "size": "42"}, available=False),
            check_item(item_id="sku-3", title="Sock", created_at_ms=T0 - DAY),
        ],
        now_ms=T0 + 500,
    )


@pytest.fixture
def filled(store: Store) -> Store:
    fill(store)
    return store


# -------------------------------------------------------------- round trip
def test_every_value_round_trips(filled: Store, raw_db: Any, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    summary = export_parquet(filled, out)

    events = read(out, "events")
    stored = raw_db.execute(
        "SELECT event_id, session_id, user_id, type, item_id, screen, dwell_ms, dwell_derived,"
        " value, ts_ms, properties, received_at_ms FROM events"
    ).fetchall()
    assert events.num_rows == len(stored) == 7
    got = by_id(events, "event_id")
    for row in stored:
        (eid, sid, uid, etype, item, screen, dwell, derived, value, ts, props, received) = row
        e = got[eid]
        assert e == {
            "event_id": eid,
            "session_id": sid,
            "user_id": uid,
            "type": etype,
            "type_name": EventType(etype).name,
            "item_id": item,
            "screen": screen,
            "dwell_ms": dwell,
            "dwell_derived": bool(derived),
            "value": value,
            "ts_ms": ts,
            "ts": datetime.fromtimestamp(ts / 1000, UTC),
            "properties": props,
            "received_at_ms": received,
            "day": day_of(ts),
        }, eid
    # What the store derived and kept is what the lake sees.
    assert got["e2"]["dwell_ms"] == 5000 and got["e2"]["dwell_derived"] is True
    assert got["e3"]["dwell_ms"] == 1500 and got["e3"]["dwell_derived"] is False
    assert json.loads(got["e4"]["properties"]) == {"currency": "EUR", "coupon": "ä€"}
    assert got["e4"]["value"] == pytest.approx(19.99)
    assert got["e1"]["item_id"] is None and got["e5"]["properties"] is None

    sessions = read(out, "sessions")
    cols = (
        "session_id, user_id, platform, app_version, started_at_ms, last_event_at_ms,"
        " ended_at_ms, end_reason, event_count, total_dwell_ms, last_seen_ms, utc_offset_min"
    )
    names = [c.strip() for c in cols.split(",")]
    stored_sessions = raw_db.execute(f"SELECT {cols} FROM sessions").fetchall()
    got_sessions = by_id(sessions, "session_id")
    assert len(got_sessions) == len(stored_sessions) == 3
    for row in stored_sessions:
        expected = dict(zip(names, row, strict=True))
        expected["started_at"] = datetime.fromtimestamp(expected["started_at_ms"] / 1000, UTC)
        expected["day"] = day_of(expected["started_at_ms"])
        assert got_sessions[row[0]] == expected
    assert got_sessions["s3"]["ended_at_ms"] is None  # still open
    assert got_sessions["s1"]["utc_offset_min"] == 120

    items = by_id(read(out, "items"), "item_id")
    stored_items = raw_db.execute(
        "SELECT item_id, title, categories, price, available, attributes, created_at_ms,"
        " updated_at_ms FROM items"
    ).fetchall()
    assert len(items) == len(stored_items) == 3
    for iid, title, cats, price, available, attrs, created, updated in stored_items:
        assert items[iid] == {
            "item_id": iid,
            "title": title,
            "categories": json.loads(cats),
            "price": price,
            "available": bool(available),
            "attributes": attrs,
            "created_at_ms": created,
            "updated_at_ms": updated,
        }
    assert items["sku-1"]["categories"] == ["shoes", "men"]
    assert items["sku-2"]["available"] is False and items["sku-2"]["price"] is None
    assert json.loads(items["sku-2"]["attributes"]) == {"color": "red", "size": "42"}

    # The files carry the declared schemas exactly (the partition column is not in them).
    for table, schema in (
        ("events", EVENTS_SCHEMA),
        ("sessions", SESSIONS_SCHEMA),
        ("items", ITEMS_SCHEMA),
    ):
        for f in (out / table).rglob("*.parquet"):
            assert pq.read_schema(f).equals(schema, check_metadata=False), f
        assert (out / table / SUCCESS).is_file()
    assert pq.read_metadata(next((out / "events").rglob("*.parquet"))).row_group(0).column(
        0
    ).compression.lower() in {"zstd", "snappy"}

    assert summary.tables["events"].rows == 7
    assert summary.tables["sessions"].rows == 3
    assert summary.tables["items"].rows == 3
    assert summary.rows == 13
    assert summary.bytes == sum(f.stat().st_size for f in out.rglob("*.parquet"))


def test_layout_manifest_and_day_partitions(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    export_parquet(filled, out)
    days = ["2024-03-10", "2024-03-11", "2024-03-12"]
    assert sorted(p.name for p in (out / "events").iterdir()) == [
        SUCCESS,
        *(f"day={d}" for d in days),
    ]
    # Sessions by the day they started: s2 started on the 10th, five seconds before midnight.
    assert sorted(p.name for p in (out / "sessions").iterdir()) == [
        SUCCESS,
        "day=2024-03-10",
        "day=2024-03-12",
    ]
    assert sorted(p.name for p in (out / "items").iterdir()) == [SUCCESS, "part-00000.parquet"]
    for d in days:
        assert [p.name for p in (out / "events" / f"day={d}").iterdir()] == ["part-00000.parquet"]

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["range"]["from"] is None and manifest["range"]["to"] is None
    events = manifest["tables"]["events"]
    assert [(p["day"], p["rows"]) for p in events["partitions"]] == [
        ("2024-03-10", 5),
        ("2024-03-11", 1),
        ("2024-03-12", 1),
    ]
    assert events["partitions"][0]["path"] == "day=2024-03-10/part-00000.parquet"
    assert sum(p["bytes"] for p in events["partitions"]) == events["bytes"]
    for p in events["partitions"]:
        assert (out / "events" / p["path"]).stat().st_size == p["bytes"]
    assert [(p["day"], p["rows"]) for p in manifest["tables"]["sessions"]["partitions"]] == [
        ("2024-03-10", 2),
        ("2024-03-12", 1),
    ]
    assert manifest["tables"]["items"]["partition_by"] is None
    assert manifest["tables"]["items"]["rows"] == 3
    assert [c["name"] for c in events["columns"]] == EVENTS_SCHEMA.names
    # Nothing is left beside the export (the staging directory was renamed into place).
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_day_boundary_last_millisecond_and_midnight(store: Store, tmp_path: Path) -> None:
    late = ms("2024-05-01T23:59:59.999")
    midnight = ms("2024-05-02T00:00:00")
    before_epoch = -1  # 1969-12-31T23:59:59.999Z: floor division, not truncation
    store.append_events(
        [
            EventRecord("late", "s1", "u1", VIEW, late, "i1"),
            EventRecord("midnight", "s1", "u1", VIEW, midnight, "i2"),
            EventRecord("old", "s0", "u1", VIEW, before_epoch, "i3"),
        ],
        [SessionRecord("s1", "u1", late, late), SessionRecord("s0", "u1", -1, -1)],
    )
    out = tmp_path / "lake"
    export_parquet(store, out)
    rows = by_id(read(out, "events"), "event_id")
    assert rows["late"]["day"] == "2024-05-01"
    assert rows["midnight"]["day"] == "2024-05-02"
    assert rows["old"]["day"] == "1969-12-31"
    assert rows["late"]["ts"] == datetime(2024, 5, 1, 23, 59, 59, 999000, UTC)
    assert (out / "events" / "day=2024-05-01" / "part-00000.parquet").is_file()
    assert (out / "events" / "day=2024-05-02" / "part-00000.parquet").is_file()
    assert read(out, "sessions").column("day").to_pylist() == ["1969-12-31", "2024-05-01"]


def test_partitions_spanning_many_small_batches(store: Store, tmp_path: Path) -> None:
    """Batches of 3 rows: a day's rows arrive over several batches into one file."""
    events, sessions = [], []
    for d in range(4):
        sid = f"s{d}"
        sessions.append(SessionRecord(sid, "u1", T0 + d * DAY, T0 + d * DAY))
        for k in range(5 + d):
            events.append(EventRecord(f"e{d}-{k}", sid, "u1", VIEW, T0 + d * DAY + k, f"i{k}"))
    store.append_events(events, sessions)
    out = tmp_path / "lake"
    summary = export_parquet(store, out, batch_rows=3)
    counts = {p: n for p, n in summary.tables["events"].partitions.items()}
    assert counts == {f"day=2024-03-{10 + d:02d}": 5 + d for d in range(4)}
    for d in range(4):
        files = list((out / "events" / f"day=2024-03-{10 + d:02d}").iterdir())
        assert len(files) == 1
        assert pq.read_table(files[0]).column("ts_ms").to_pylist() == [
            T0 + d * DAY + k for k in range(5 + d)
        ]
    assert read(out, "events").num_rows == len(events)


# ----------------------------------------------------------------- ranges
def test_from_inclusive_to_exclusive(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    start, end = T0 + 4000, T0 + DAY + 1  # e2 (== start) in, e6 (== end) out
    summary = export_parquet(filled, out, start_ms=start, end_ms=end)
    events = read(out, "events")
    assert sorted(events.column("event_id").to_pylist()) == ["e2", "e3", "e4", "e5"]
    # Sessions by their start: s1 started at T0 + 1000, before the range.
    assert read(out, "sessions").column("session_id").to_pylist() == ["s2"]
    assert read(out, "items").num_rows == 3  # the catalog is not time-filtered
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["range"]["from_ms"] == start and manifest["range"]["to_ms"] == end
    assert manifest["range"]["from"] == "2024-03-10T00:00:04.000Z"
    assert summary.to_dict()["from"] == "2024-03-10T00:00:04.000Z"


def test_day_range_selects_whole_days(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    export_parquet(
        filled, out, start_ms=parse_iso_ms("2024-03-11"), end_ms=parse_iso_ms("2024-03-12")
    )
    assert sorted(read(out, "events").column("event_id").to_pylist()) == ["e6"]
    assert [p.name for p in (out / "sessions").iterdir()] == [SUCCESS]  # s2 started on the 10th


def test_parse_iso_ms() -> None:
    assert parse_iso_ms("2024-03-10") == T0
    assert parse_iso_ms("2024-03-10T00:00:01") == T0 + 1000
    assert parse_iso_ms("2024-03-10T02:00:00+02:00") == T0
    assert parse_iso_ms("2024-03-10T00:00:00.5Z") == T0 + 500
    with pytest.raises(ValueError, match="2024-13-01"):
        parse_iso_ms("2024-13-01")
    with pytest.raises(ValueError, match="yesterday"):
        parse_iso_ms("yesterday")


# ------------------------------------------------------------------- empty
def test_empty_store(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    summary = export_parquet(store, out)
    assert summary.rows == 0
    assert [p.name for p in (out / "events").iterdir()] == [SUCCESS]
    assert [p.name for p in (out / "sessions").iterdir()] == [SUCCESS]
    # Read with the declared schema: zero rows of the same types.
    empty = read(out, "events", schema=EVENTS_SCHEMA)
    assert empty.num_rows == 0 and empty.schema.equals(EVENTS_SCHEMA, check_metadata=False)
    items = pq.read_table(out / "items" / "part-00000.parquet")
    assert items.num_rows == 0 and items.schema.equals(ITEMS_SCHEMA, check_metadata=False)
    manifest = json.loads((out / MANIFEST).read_text())
    for table in ("events", "sessions"):
        assert manifest["tables"][table]["rows"] == 0
        assert manifest["tables"][table]["partitions"] == []
    assert manifest["tables"]["items"]["rows"] == 0


# ------------------------------------------------- overwrite and failures
def test_refuses_a_non_empty_directory_unless_overwrite(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    export_parquet(filled, out)
    first = json.loads((out / MANIFEST).read_text())
    with pytest.raises(ExportError, match="not empty"):
        export_parquet(filled, out)
    assert json.loads((out / MANIFEST).read_text()) == first

    filled.append_events(
        [EventRecord("e8", "s3", "u1", VIEW, T0 + 2 * DAY + 20, "sku-1")],
    )
    export_parquet(filled, out, overwrite=True, start_ms=T0 + DAY)
    again = json.loads((out / MANIFEST).read_text())
    assert again["tables"]["events"]["rows"] == 3  # e6, e7, e8
    assert not (out / "events" / "day=2024-03-10").exists()  # nothing of the old export stays
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_refuses_what_is_not_an_export(filled: Store, tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not a sessionrec export"):
        export_parquet(filled, precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_parquet(filled, a_file)


def test_an_existing_empty_directory_is_used(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    out.mkdir()
    export_parquet(filled, out)
    assert (out / MANIFEST).is_file()


def test_a_failure_leaves_no_partial_export(
    filled: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lake"
    export_parquet(filled, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def broken(rows: list[tuple]) -> pa.Table:
        raise OSError("disk full")

    tables = tuple(
        dataclasses.replace(t, build=broken) if t.name == "sessions" else t
        for t in export_mod._TABLES
    )
    monkeypatch.setattr(export_mod, "_TABLES", tables)
    with pytest.raises(OSError, match="disk full"):
        export_parquet(filled, out, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_parquet(filled, tmp_path / "fresh")
    # The old export is untouched, the new one never appeared, no staging is left.
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------- CLI
def test_cli_end_to_end(filled: Store, tmp_path: Path, cli: Callable[..., Any]) -> None:
    db = filled.url
    out = tmp_path / "lake"
    result = cli(
        "export",
        "--db",
        db,
        "--format",
        "parquet",
        "--out",
        str(out),
        "--from",
        "2024-03-10T00:00:04Z",
        "--to",
        "2024-03-12",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    summary = result.json()
    assert summary["tables"]["events"]["rows"] == 5  # e2..e6
    assert summary["tables"]["events"]["partitions"] == 2
    assert summary["tables"]["sessions"]["rows"] == 1
    assert summary["tables"]["items"]["rows"] == 3
    assert summary["rows"] == 9 and summary["seconds"] >= 0
    assert summary["from"] == "2024-03-10T00:00:04.000Z"
    assert summary["to"] == "2024-03-12T00:00:00.000Z"
    assert read(out, "events").num_rows == 5
    assert result.stderr == ""  # --quiet

    again = cli("export", "--db", db, "--out", str(out))
    assert again.returncode == 2
    assert again.stderr.startswith("sessionrec export: error: --out: ")
    assert "--overwrite" in again.stderr

    replaced = cli("export", "--db", db, "--out", str(out), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.json()["tables"]["events"]["rows"] == 7
    assert "events" in replaced.stderr  # progress (tqdm bars and one line per table)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "last tuesday"], "--from: expected an ISO date"),
        (["--to", "2024-02-30"], "--to: expected an ISO date"),
        (["--from", "2024-03-02", "--to", "2024-03-01"], "--from: must be before --to"),
    ],
)
def test_cli_bad_ranges_name_the_option(
    args: list[str],
    message: str,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sessionrec.cli import main

    out = tmp_path / "lake"
    code = main(["export", "--db", store.url, "--out", str(out), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sessionrec export: error: {message}"), err
    assert not out.exists()


@pytest.mark.sqlite_only
def test_cli_refuses_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sessionrec.cli import main

    missing = tmp_path / "nope.db"
    code = main(["export", "--db", f"sqlite:///{missing}", "--out", str(tmp_path / "lake")])
    assert code == 2
    assert "--db: no store file" in capsys.readouterr().err
    assert not missing.exists()  # not created by the export
