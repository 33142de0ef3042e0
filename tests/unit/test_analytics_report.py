"""The session analytics page (sessionrec/analytics_report.py) on a real store:
its plots, escaping of hostile screen names and item ids, the empty store, the
``sessionrec report`` CLI end to end and, where Chromium is installed, the page in a
headless browser."""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from html_support import Page, chromium, screenshot
from matplotlib import image as mpimg

from sessionrec.analytics import screen_flows, session_stats
from sessionrec.analytics_report import (
    PLATFORMS,
    WEEKDAYS,
    describe_period,
    parse_iso_ms,
    render_html,
    write_report,
)
from sessionrec.cli import main
from sessionrec.events import EndReason, EventRecord, EventType, SessionRecord
from sessionrec.store import Store, open_store
from tests.conftest import store_url

#: Session length, activity, skip rate, screen flows, retention.
PLOTS = 5
SCREEN = int(EventType.SCREEN_VIEW)
ITEM = int(EventType.ITEM_VIEW)
CART = int(EventType.ADD_TO_CART)
S = 1000
H = 3_600_000
DAY = 86_400_000
#: 2024-01-01 00:00 UTC, a Monday.
T0 = 1_704_067_200_000
HOSTILE_SCREEN = "<script>alert(1)</script>"
HOSTILE_ITEM = '<img src=x onerror="alert(2)">'
MATH_SCREEN = "$x^2$ & co"
SCREENS = ["home", "list", "detail", "search", HOSTILE_SCREEN, MATH_SCREEN]
ITEMS = ["i1", "i2", "i3", HOSTILE_ITEM]


def build_store(url: str, seed: int = 5) -> dict[str, Any]:
    """30 sessions of 10 users over January 2024 (iOS and Android), each of a few
    screen and item views with dwell times; some users come back days later. Every
    session starting with its user's first session is iOS; end reasons vary."""
    rng = random.Random(seed)
    events: list[EventRecord] = []
    sessions: list[SessionRecord] = []
    ends: list[tuple[str, int, EndReason]] = []
    for k in range(30):
        user = f"u{k % 10}"
        day = (k // 10) * rng.choice([1, 3, 8, 12])
        at = T0 + day * DAY + rng.randrange(24) * H + rng.randrange(3600) * S
        platform = PLATFORMS["IOS"] if k % 3 else PLATFORMS["ANDROID"]
        sid = f"s{k:02d}"
        sessions.append(
            SessionRecord(
                sid, user, at, at, platform=platform, app_version="3.1" if k % 2 else "3.0"
            )
        )
        t = at
        for j in range(rng.randrange(1, 7)):
            screen = SCREENS[0] if j == 0 else rng.choice(SCREENS)
            dwell = rng.choice([500, 1500, 4000, 12000, 40000])
            events.append(
                EventRecord(f"{sid}-v{j}", sid, user, SCREEN, t, screen=screen, dwell_ms=dwell)
            )
            t += dwell
            if rng.random() < 0.5:
                item = rng.choice(ITEMS)
                events.append(
                    EventRecord(f"{sid}-i{j}", sid, user, ITEM, t, item_id=item, dwell_ms=2000)
                )
                t += 2000
                if rng.random() < 0.3:
                    events.append(EventRecord(f"{sid}-c{j}", sid, user, CART, t, item_id=item))
        if k % 4:
            ends.append((sid, t + 5 * S, EndReason.CLOSED if k % 4 == 1 else EndReason.TIMEOUT))
    with open_store(url) as store:
        store.append_events(events, sessions, received_ms=T0 + 40 * DAY)
        for sid, at, reason in ends:
            store.end_session(sid, at, reason, derive_last_dwell=False)
    return {"events": len(events), "sessions": len(sessions)}


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def decode_png(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    png = base64.b64decode(src[len(prefix) :], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(mpimg.imread(io.BytesIO(png), format="png"))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analytics") / "store.db"
    build_store(store_url(path))
    return path


@pytest.fixture(scope="module")
def db_store(db: Path) -> Iterator[Store]:
    with open_store(store_url(db)) as store:
        yield store


@pytest.fixture(scope="module")
def report(db: Path, db_store: Store) -> Iterator[tuple[Path, dict[str, Any]]]:
    out = db.parent / "report.html"
    stats = write_report(out, db_store)
    yield out, stats


# ------------------------------------------------------------------ the page
def test_one_self_contained_page_with_one_png_per_plot(
    report: tuple[Path, dict[str, Any]],
) -> None:
    path, _ = report
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("<html") == 1 and "<style>" in text
    page = parse(text)
    assert page.external == []  # no scripts, stylesheets or links to fetch
    assert len(page.images) == PLOTS
    for src in page.images:
        pixels = decode_png(src)
        assert pixels.shape[0] >= 240 and pixels.shape[1] == 1000
        assert np.ptp(pixels[..., :3]) > 0.5  # a drawing, not a blank
    assert 'class="nodata"' not in text
    assert page.tables == ["screens", "entry", "exit", "flows", "items", "retention", "end-reasons"]


def test_the_page_has_the_numbers(db_store: Store, report: tuple[Path, dict[str, Any]]) -> None:
    path, stats = report
    want = session_stats(db_store).to_dict()
    assert {k: v for k, v in stats.items() if k != "now_ms"} == {
        k: v for k, v in want.items() if k != "now_ms"
    }
    assert stats["sessions"] == 30 and stats["users"] == 10
    json.dumps(stats, allow_nan=False)
    page = parse(path.read_text(encoding="utf-8"))
    text = "".join(page.text)
    cells = [c.strip() for c in page.cells]
    for label in ("Sessions", "Users", "Sessions per user", "Bounce rate"):
        assert label in text
    assert "Median session length" in text and "p90 session length" in text
    assert f"{stats['bounce_rate']:.1%}" in text
    screens = {s["screen"]: s for s in stats["screens"]}
    assert set(screens) == set(SCREENS)
    for name, s in screens.items():
        assert name in cells
        assert f"{s['skip_rate']:.1%}" in cells
    for item in stats["top_items"]:
        assert item["item_id"] in cells
    for point in stats["retention"]["days"]:
        assert str(point["eligible"]) in cells
    for reason in ("OPEN", "CLOSED", "TIMEOUT"):
        assert reason in cells
    flows = screen_flows(db_store, max_steps=5, top=20)
    assert flows and cells.count("(exit)") == sum(1 for _, b, _ in flows if b == "(exit)")
    assert "all sessions" in text


def test_hostile_names_are_escaped(report: tuple[Path, dict[str, Any]]) -> None:
    path, _ = report
    text = path.read_text(encoding="utf-8")
    assert HOSTILE_SCREEN not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in text
    assert "$x^2$ &amp; co" in text
    page = parse(text)
    assert "script" not in page.tags
    assert page.tags.count("img") == PLOTS
    assert HOSTILE_SCREEN in page.cells and HOSTILE_ITEM in page.cells  # shown as text


def test_the_empty_store_still_renders(tmp_path: Path) -> None:
    with open_store(store_url(tmp_path / "empty.db")) as store:
        stats = write_report(tmp_path / "empty.html", store)
    assert stats["sessions"] == 0 and stats["bounce_rate"] is None
    text = (tmp_path / "empty.html").read_text(encoding="utf-8")
    page = parse(text)
    assert page.images == [] and page.external == []
    assert text.count('class="nodata"') == PLOTS + 1  # one per plot and the headline note
    assert "No sessions in this period" in text
    assert "no data" in text  # empty tables say so
    # the stats read back from JSON render the same way; title and period are escaped
    again = render_html(json.loads(json.dumps(stats)), [], title="<b>T</b>", period="<p>")
    assert "<b>T</b>" not in again and "&lt;b&gt;T&lt;/b&gt;" in again and "&lt;p&gt;" in again
    assert again.count('class="nodata"') == PLOTS + 1


def test_refuses_an_empty_period_and_an_unknown_platform(db_store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        write_report(tmp_path / "x.html", db_store, start_ms=T0 + DAY, end_ms=T0)
    with pytest.raises(ValueError, match="platform"):
        write_report(tmp_path / "x.html", db_store, platform=9)
    assert not (tmp_path / "x.html").exists()


@pytest.mark.sqlite_only  # a SQLite store file read by its path
def test_refuses_a_missing_sqlite_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "x.html", tmp_path / "missing.db")
    assert not (tmp_path / "x.html").exists()


def test_parse_iso_ms_and_describe_period() -> None:
    assert parse_iso_ms("2024-01-01") == T0
    assert parse_iso_ms("2024-01-01T10:30") == T0 + 10 * H + 30 * 60 * S
    assert parse_iso_ms("2024-01-01T00:00:00Z") == T0
    assert parse_iso_ms("2024-01-01T02:00:00+02:00") == T0
    for bad in ("yesterday", "2024-13-01", ""):
        with pytest.raises(ValueError, match="ISO"):
            parse_iso_ms(bad)
    assert describe_period(None, None) == "all sessions"
    assert describe_period(T0, None) == "sessions starting from 2024-01-01 UTC"
    assert (
        describe_period(None, T0 + 90 * 60 * S) == "sessions starting before 2024-01-01 01:30 UTC"
    )
    assert WEEKDAYS[0] == "Mon" and len(WEEKDAYS) == 7


# ------------------------------------------------------------------ the CLI
def test_cli_writes_the_page_and_prints_the_stats(
    db: Path, db_store: Store, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    out = tmp_path / "cli.html"
    done = cli(
        "report",
        "--db",
        store_url(db),
        "--out",
        str(out),
        "--from",
        "2024-01-01",
        "--to",
        "2024-03-01T00:00:00Z",
        "--platform",
        "ios",
    )
    assert done.returncode == 0, done.stderr
    stats = done.json()
    want = session_stats(db_store, start_ms=T0, end_ms=parse_iso_ms("2024-03-01"), platform=1)
    assert 0 < stats["sessions"] == want.sessions < 30
    assert stats["filters"] == {
        "start_ms": T0,
        "end_ms": parse_iso_ms("2024-03-01"),
        "platform": 1,
        "app_version": None,
        "segment": None,
    }
    assert str(out) in done.stderr
    text = out.read_text(encoding="utf-8")
    assert len(parse(text).images) == PLOTS
    assert "sessions starting from 2024-01-01 until before 2024-03-01 UTC" in text
    assert "platform IOS" in text


def test_cli_errors_exit_2(
    db: Path, tmp_path: Path, cli: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bad.html"
    url = store_url(db)
    done = cli("report", "--db", url, "--out", str(out), "--from", "last tuesday")
    assert done.returncode == 2
    assert "sessionrec report: error: --from:" in done.stderr and "ISO" in done.stderr
    assert done.stdout == ""
    # the other refusals in process (the same main() the console script runs)
    missing = tmp_path / "nope.db"  # a SQLite URL whatever the store: its file is checked
    cases = [
        (["--db", "sqlite:///" + str(missing)], "--db: no store file"),
        (["--db", url, "--from", "2024-02-01", "--to", "2024-01-01"], "--from: must be before"),
        (["--db", url, "--to", "2024-02-30"], "--to:"),
    ]
    for extra, message in cases:
        assert main(["report", "--out", str(out), *extra]) == 2
        captured = capsys.readouterr()
        assert f"sessionrec report: error: {message}" in captured.err
        assert captured.out == ""
    assert main(["report", "--db", url, "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "--out: no such directory" in capsys.readouterr().err
    assert not missing.exists() and not out.exists()


# ------------------------------------------------------------------ a real browser
@pytest.mark.skipif(chromium() is None, reason="no chromium binary found")
def test_the_page_renders_in_headless_chromium(
    report: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = report
    pixels = screenshot(path, tmp_path)
    assert np.ptp(pixels[..., :3]) > 0.5  # not all one colour
    # the page's white column and grey margins both show, and much of it is drawn on
    rgb = pixels[..., :3]
    assert (rgb.std(axis=2) < 0.02).mean() < 0.995
    assert (rgb.mean(axis=2) < 0.9).mean() > 0.01  # text, plots: not an empty white page
