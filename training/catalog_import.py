"""Catalog import: items from CSV or JSON lines into the store.

CSV: a header naming ``item_id`` (required) and any of ``title, categories,
price, available, attributes, created_at``; other columns are ignored.
``categories`` are separated by ``|``; ``price`` empty means no price;
``available`` is ``true/false`` (``1/0``, ``yes/no``; empty: true);
``attributes`` is a JSON object (scalar values are kept as their JSON text);
``created_at`` is epoch seconds or ISO 8601 (empty: the time of the first
import, kept on later ones).

JSON lines: one object per line with the same keys; ``categories`` a list (or
a ``|``-separated string), ``price`` a number or null, ``available`` a boolean,
``attributes`` an object. Blank lines are skipped.

Bad rows are reported with their line numbers while good rows load, in batches
of one transaction each. Importing is idempotent: a row identical to the
stored item changes nothing; a later row for the same item replaces it.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from sessionrec.items import ItemRecord, check_item
from sessionrec.store import Store
from training.importer import BadRow, ImportFormatError, parse_timestamp_ms

COLUMNS = ("item_id", "title", "categories", "price", "available", "attributes", "created_at")
FORMATS = ("csv", "jsonl")
BATCH = 1000
CATEGORY_SEPARATOR = "|"
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass
class CatalogImportReport:
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    catalog_version: int = 0
    seconds: float = 0.0
    bad: list[BadRow] = field(default_factory=list)

    def to_dict(self, max_bad: int = 100) -> dict:
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "bad_rows": len(self.bad),
            "catalog_version": self.catalog_version,
            "seconds": round(self.seconds, 3),
            "bad": [{"line": b.line, "reason": b.reason} for b in self.bad[:max_bad]],
        }


def detect_format(path: str | Path) -> str:
    """``jsonl`` for ``.jsonl``, ``.ndjson`` and ``.json`` files, else ``csv``."""
    suffix = Path(path).suffix.lower()
    return "jsonl" if suffix in {".jsonl", ".ndjson", ".json"} else "csv"


def _categories(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(CATEGORY_SEPARATOR) if c.strip()]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return [c.strip() for c in value if c.strip()]
    raise ValueError(f"categories: expected a list of names or a '|'-separated text, got {value!r}")


def _price(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"price: not a number: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"price: not a number: {value!r}") from None


def _available(value: Any) -> bool | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"available: expected true or false, got {value!r}")


def _attributes(value: Any) -> dict[str, str]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"attributes: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError("attributes: expected a JSON object")
    out: dict[str, str] = {}
    for key, v in value.items():
        if isinstance(v, str):
            out[key] = v
        elif isinstance(v, bool | int | float):
            out[key] = json.dumps(v)
        else:
            raise ValueError(f"attributes[{key}]: expected a string or a number, got {v!r}")
    return out


def _created_at(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"created_at: not epoch seconds or ISO 8601: {value!r}")
    try:
        return parse_timestamp_ms(str(value))
    except ValueError as exc:
        raise ValueError(f"created_at: {str(exc).removeprefix('timestamp: ')}") from None


def parse_item(row: Mapping[str, Any]) -> ItemRecord:
    """One row (CSV texts or JSON values) as an item; ``ValueError`` names the field."""
    item_id = row.get("item_id")
    title = row.get("title")
    return check_item(
        item_id=item_id.strip() if isinstance(item_id, str) else item_id or "",
        title="" if title is None else title,
        categories=_categories(row.get("categories")),
        price=_price(row.get("price")),
        available=_available(row.get("available")),
        attributes=_attributes(row.get("attributes")),
        created_at_ms=_created_at(row.get("created_at")),
    )


def read_csv_items(fh: TextIO, report: CatalogImportReport) -> Iterator[tuple[int, ItemRecord]]:
    reader = csv.DictReader(fh)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "item_id" not in header:
        raise ImportFormatError("header: missing required column item_id")
    reader.fieldnames = header
    for row in reader:
        report.rows += 1
        if None in row:  # more fields than the header
            report.bad.append(BadRow(reader.line_num, "row: more fields than the header"))
            continue
        try:
            yield reader.line_num, parse_item(row)
        except ValueError as exc:
            report.bad.append(BadRow(reader.line_num, str(exc)))


def read_jsonl_items(fh: TextIO, report: CatalogImportReport) -> Iterator[tuple[int, ItemRecord]]:
    for line_number, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        report.rows += 1
        try:
            row = json.loads(line)
        except ValueError as exc:
            report.bad.append(BadRow(line_number, f"row: not JSON ({exc})"))
            continue
        if not isinstance(row, dict):
            report.bad.append(BadRow(line_number, "row: expected a JSON object"))
            continue
        try:
            yield line_number, parse_item(row)
        except ValueError as exc:
            report.bad.append(BadRow(line_number, str(exc)))


READERS: dict[str, Callable[[TextIO, CatalogImportReport], Iterator[tuple[int, ItemRecord]]]] = {
    "csv": read_csv_items,
    "jsonl": read_jsonl_items,
}


def import_catalog(
    store: Store,
    path: str | Path,
    *,
    format: str | None = None,
    show_progress: bool = False,
    on_bad_row: Callable[[BadRow], None] | None = None,
) -> CatalogImportReport:
    """Imports the items of ``path`` (format by extension unless given)."""
    fmt = format or detect_format(path)
    if fmt not in READERS:
        raise ImportFormatError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    report = CatalogImportReport()
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(
            tqdm(READERS[fmt](fh, report), desc="read", unit=" rows", disable=not show_progress)
        )
    bar = tqdm(total=len(rows), desc="store", unit=" items", disable=not show_progress)
    for start in range(0, len(rows), BATCH):
        chunk = [item for _, item in rows[start : start + BATCH]]
        result = store.upsert_items(chunk)
        report.inserted += result.inserted
        report.updated += result.updated
        report.unchanged += result.unchanged
        bar.update(len(chunk))
    bar.close()
    report.catalog_version = store.catalog_version()
    if on_bad_row:
        for bad in report.bad:
            on_bad_row(bad)
    report.seconds = time.perf_counter() - started
    return report
