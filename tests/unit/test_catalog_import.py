"""Catalog import (training/catalog_import.py and ``sessionrec catalog import``):
CSV and JSON lines, bad rows with line numbers, idempotent re-imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessionrec.store import Store, open_store
from tests.conftest import store_url
from training.catalog_import import detect_format, import_catalog
from training.importer import ImportFormatError

CSV = """item_id,title,categories,price,available,attributes,created_at,ignored
sku-1,Trail,shoes|outdoor,59.90,true,"{""color"": ""red"", ""size"": 42}",2024-01-02T03:04:05Z,x
sku-2,Tote,bags,,no,,1700000000,x
sku-3,Bad price,bags,-1,,,,x
sku-4,Bad flag,bags,3,maybe,,,x
sku-5,Bad attrs,bags,3,,[1],,x
,No id,bags,3,,,,x
sku-6,Bad time,bags,3,,,yesterday,x
sku-7,,,,,,,x
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_rows_load_and_bad_rows_are_reported_by_line(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "items.csv", CSV)
    seen = []
    report = import_catalog(store, path, on_bad_row=seen.append)
    assert (report.rows, report.inserted, report.updated, report.unchanged) == (8, 3, 0, 0)
    bad = {b.line: b.reason for b in report.bad}
    assert bad == {
        4: "price: must be >= 0, got -1.0",
        5: "available: expected true or false, got 'maybe'",
        6: "attributes: expected a JSON object",
        7: "item_id: required",
        8: "created_at: not epoch seconds or ISO 8601: 'yesterday'",
    }
    assert [b.line for b in seen] == [4, 5, 6, 7, 8]
    shoe = store.get_item("sku-1")
    assert shoe is not None
    assert shoe.categories == ("shoes", "outdoor") and shoe.price == 59.90 and shoe.available
    assert shoe.attributes == {"color": "red", "size": "42"}
    assert shoe.created_at_ms == 1704164645000
    tote = store.get_item("sku-2")
    assert tote is not None and tote.price is None and tote.available is False
    assert tote.created_at_ms == 1_700_000_000_000
    plain = store.get_item("sku-7")
    assert plain is not None and plain.categories == () and plain.available is True
    # Importing again stores nothing; created_at of rows without one is kept.
    again = import_catalog(store, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
    assert again.catalog_version == report.catalog_version == 1
    plain_again = store.get_item("sku-7")
    assert plain_again is not None and plain_again.created_at_ms == plain.created_at_ms


def test_json_lines(store: Store, tmp_path: Path) -> None:
    lines = [
        {"item_id": "j1", "categories": ["a", "b", "a"], "price": 3, "attributes": {"k": "v"}},
        {"item_id": "j2", "categories": "x|y", "available": False, "created_at": 1.5},
        {"item_id": "j3", "price": "abc"},
        {"item_id": 7},
        {"item_id": "j1", "title": "renamed", "categories": ["a", "b"], "price": 3},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:2]) + "\n\nnot json\n[1]\n"
    text += "\n".join(json.dumps(x) for x in lines[2:]) + "\n"
    path = write(tmp_path, "items.jsonl", text)
    report = import_catalog(store, path)
    assert report.rows == 7
    assert {b.line: b.reason.split(":")[0] for b in report.bad} == {
        4: "row",
        5: "row",
        6: "price",
        7: "item_id",
    }
    assert (report.inserted, report.updated) == (2, 1)  # j1 twice: the later row wins
    j1 = store.get_item("j1")
    assert j1 is not None and j1.title == "renamed" and j1.categories == ("a", "b")
    j2 = store.get_item("j2")
    assert j2 is not None and j2.categories == ("x", "y") and j2.created_at_ms == 1500


def test_format_detection_and_a_csv_without_item_id(store: Store, tmp_path: Path) -> None:
    assert detect_format("x.jsonl") == detect_format("x.NDJSON") == "jsonl"
    assert detect_format("items.csv") == detect_format("items.txt") == "csv"
    path = write(tmp_path, "items.csv", "sku,title\n1,x\n")
    with pytest.raises(ImportFormatError, match="item_id"):
        import_catalog(store, path)
    with pytest.raises(ImportFormatError, match="format"):
        import_catalog(store, path, format="xml")


def test_the_cli_reports_bad_rows_on_stderr_and_json_on_stdout(tmp_path: Path, cli) -> None:
    path = write(tmp_path, "items.csv", CSV)
    url = store_url(tmp_path / "cat.db")
    result = cli("catalog", "import", "--db", url, str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    out = result.json()
    assert (out["rows"], out["inserted"], out["bad_rows"]) == (8, 3, 5)
    assert f"{path}:4: price: must be >= 0" in result.stderr
    with open_store(url) as store:
        assert store.catalog_version() == 1 and store.get_item("sku-1") is not None
    only_bad = write(tmp_path, "bad.csv", "item_id,price\nx,-1\n")
    failed = cli("catalog", "import", "--db", url, str(only_bad), "--quiet")
    assert failed.returncode == 2 and f"{only_bad}:2: price" in failed.stderr
