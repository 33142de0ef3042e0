"""The statistics and the report of the offers engine (sessionrec/offer_report.py)."""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from sessionrec.offer_report import (
    OfferArmStats,
    build_report,
    difference_interval,
    render_html,
    thompson_draw,
    wilson_interval,
    write_html_report,
)

PLOTS = 4  # redemption rate, conversion treated/holdout, uplift, revenue per user
Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


# -- Wilson --------------------------------------------------------------------------------------


def test_wilson_matches_the_formula_at_the_edges_and_the_middle() -> None:
    # s = 0: lower 0, upper z^2 / (n + z^2); s = n: the mirror image
    z2 = Z95**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-12)
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-12)
    # s = n/2: centred at 1/2, half width z * sqrt(n/4 + z^2/4) / (n + z^2)
    half = Z95 * math.sqrt(10 / 4 + z2 / 4) / (10 + z2)
    assert wilson_interval(5, 10) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    # and the rounded values everybody quotes
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)


def test_wilson_matches_newcombe_1998() -> None:
    # Newcombe, "Two-sided confidence intervals for the single proportion" (1998), method 3
    table = {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }
    for (s, n), expected in table.items():
        assert wilson_interval(s, n) == pytest.approx(expected, abs=5e-5), (s, n)


def test_wilson_confidence_widens_and_bad_input() -> None:
    z99 = 2.5758293035489004
    assert wilson_interval(0, 10, 0.99)[1] == pytest.approx(z99**2 / (10 + z99**2), abs=1e-12)
    lo90, hi90 = wilson_interval(30, 100, 0.90)
    lo95, hi95 = wilson_interval(30, 100, 0.95)
    assert lo95 < lo90 < 0.3 < hi90 < hi95
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    for bad in [(-1, 10), (11, 10), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            wilson_interval(1, 10, confidence)


# -- Newcombe ------------------------------------------------------------------------------------


def test_difference_interval_matches_newcombe_1998() -> None:
    # Newcombe, "Interval estimation for the difference between independent proportions:
    # comparison of eleven methods" (1998), table II, method 10
    table = {
        (56, 70, 48, 80): (0.0524, 0.3339),
        (9, 10, 3, 10): (0.1705, 0.8090),
        (5, 56, 0, 29): (-0.0381, 0.1926),
        (0, 10, 0, 20): (-0.1611, 0.2775),
        (0, 10, 0, 10): (-0.2775, 0.2775),
        (10, 10, 0, 20): (0.6791, 1.0),
        (10, 10, 0, 10): (0.6075, 1.0),
    }
    for (s1, n1, s2, n2), (lo, hi) in table.items():
        d, got_lo, got_hi = difference_interval(s1, n1, s2, n2)
        assert d == pytest.approx(s1 / n1 - s2 / n2)
        assert (got_lo, got_hi) == pytest.approx((lo, hi), abs=5e-5), (s1, n1, s2, n2)


def test_difference_interval_is_antisymmetric_and_undefined_without_trials() -> None:
    d, lo, hi = difference_interval(12, 40, 30, 70)
    d2, lo2, hi2 = difference_interval(30, 70, 12, 40)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))
    for args in [(0, 0, 3, 10), (3, 10, 0, 0), (0, 0, 0, 0)]:
        assert all(math.isnan(v) for v in difference_interval(*args))
    with pytest.raises(ValueError):
        difference_interval(11, 10, 1, 10)


@pytest.mark.parametrize(
    ("p1", "n1", "p2", "n2"),
    [(0.30, 200, 0.20, 150), (0.08, 60, 0.05, 40)],
)
def test_difference_interval_coverage(p1: float, n1: int, p2: float, n2: int) -> None:
    rng = np.random.default_rng(20240601)
    runs = 2000
    s1 = rng.binomial(n1, p1, size=runs)
    s2 = rng.binomial(n2, p2, size=runs)
    true = p1 - p2
    covered = 0
    for a, b in zip(s1, s2, strict=True):
        _, lo, hi = difference_interval(int(a), n1, int(b), n2)
        covered += lo <= true <= hi
    coverage = covered / runs
    assert 0.92 <= coverage <= 0.98, coverage


# -- Thompson ------------------------------------------------------------------------------------


def test_thompson_draw_follows_the_beta_posterior() -> None:
    rng = np.random.default_rng(7)
    draws = np.array([thompson_draw(30, 100, rng) for _ in range(4000)])
    a, b = 1 + 30, 1 + 70
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert draws.mean() == pytest.approx(mean, abs=4 * sd / math.sqrt(len(draws)))
    assert draws.std() == pytest.approx(sd, rel=0.08)
    assert ((draws > 0) & (draws < 1)).all()
    # an informative prior moves the mean: Beta(1 + 0 + 50, 1 + 10 + 50)
    prior = np.array([thompson_draw(0, 10, rng, prior=(50.0, 50.0)) for _ in range(2000)])
    assert prior.mean() == pytest.approx(51 / 112, abs=0.01)


def test_thompson_draw_bad_input() -> None:
    rng = np.random.default_rng(1)
    # a redemption without a recorded impression: impressions clipped up to redemptions,
    # so the draw comes from Beta(1 + 5, 1 + 0), whose mean is 6/7
    clipped = np.array([thompson_draw(5, 2, rng) for _ in range(3000)])
    assert clipped.mean() == pytest.approx(6 / 7, abs=0.01)
    for redemptions, impressions in [(-1, 10), (1, -1)]:
        with pytest.raises(ValueError):
            thompson_draw(redemptions, impressions, rng)
    for prior in [(0.0, 1.0), (1.0, -2.0), (float("nan"), 1.0), (1.0, float("inf"))]:
        with pytest.raises(ValueError):
            thompson_draw(1, 10, rng, prior=prior)


# -- the report ----------------------------------------------------------------------------------


def example_stats() -> list[OfferArmStats]:
    return [
        OfferArmStats(
            offer_id="spring10",
            title="10% off spring shoes",
            impressions=200,
            redemptions=20,
            treated_users=100,
            treated_converted=30,
            treated_revenue=1500.0,
            holdout_users=20,
            holdout_converted=4,
            holdout_revenue=160.0,
        ),
        OfferArmStats(
            offer_id="new-only",
            title="Free shipping",
            impressions=50,
            redemptions=0,
            treated_users=40,
            treated_converted=8,
            treated_revenue=400.0,
            holdout_users=0,
            holdout_converted=0,
            holdout_revenue=0.0,
        ),
        OfferArmStats(
            offer_id="never-shown",
            title="<script>alert('x')</script> & $5 off",
            impressions=0,
            redemptions=0,
            treated_users=0,
            treated_converted=0,
            treated_revenue=0.0,
            holdout_users=3,
            holdout_converted=1,
            holdout_revenue=25.5,
        ),
    ]


def test_build_report_numbers() -> None:
    report = build_report(example_stats(), holdout_share=0.1)
    assert report["holdout_share"] == 0.1
    assert report["confidence"] == 0.95
    assert [o["offer_id"] for o in report["offers"]] == ["spring10", "new-only", "never-shown"]

    spring = report["offers"][0]
    assert spring["title"] == "10% off spring shoes"
    assert (spring["impressions"], spring["redemptions"]) == (200, 20)
    assert spring["redemption_rate"] == pytest.approx(0.1)
    assert spring["redemption_rate_ci"] == pytest.approx(list(wilson_interval(20, 200)))
    treated = dict(spring["treated"])
    assert treated.pop("conversion_ci") == pytest.approx(list(wilson_interval(30, 100)))
    assert treated == pytest.approx(
        {
            "users": 100,
            "converted": 30,
            "conversion": 0.3,
            "revenue": 1500.0,
            "revenue_per_user": 15.0,
        }
    )
    assert spring["holdout"]["conversion"] == pytest.approx(0.2)
    assert spring["holdout"]["revenue_per_user"] == pytest.approx(8.0)
    _, lo, hi = difference_interval(30, 100, 4, 20)
    assert spring["uplift"]["conversion"] == pytest.approx(0.1)
    assert spring["uplift"]["ci"] == pytest.approx([lo, hi])
    assert lo < 0 < 0.1 < hi  # 20 holdout users: no clear effect
    assert spring["revenue_uplift_per_user"] == pytest.approx(7.0)

    no_holdout = report["offers"][1]
    assert no_holdout["redemption_rate"] == 0.0
    assert no_holdout["redemption_rate_ci"][0] == 0.0
    assert no_holdout["treated"]["conversion"] == pytest.approx(0.2)
    assert no_holdout["holdout"]["users"] == 0
    assert no_holdout["holdout"]["conversion"] is None
    assert no_holdout["holdout"]["conversion_ci"] is None
    assert no_holdout["holdout"]["revenue_per_user"] is None
    assert no_holdout["uplift"] == {"conversion": None, "ci": None}
    assert no_holdout["revenue_uplift_per_user"] is None

    never = report["offers"][2]
    assert never["redemption_rate"] is None
    assert never["redemption_rate_ci"] is None
    assert never["treated"]["conversion"] is None
    assert never["holdout"]["conversion"] == pytest.approx(1 / 3)
    assert never["uplift"] == {"conversion": None, "ci": None}

    totals = report["totals"]
    assert totals["offers"] == 3
    assert (totals["impressions"], totals["redemptions"]) == (250, 20)
    assert totals["redemption_rate"] == pytest.approx(20 / 250)
    assert totals["treated"]["users"] == 140
    assert totals["treated"]["converted"] == 38
    assert totals["treated"]["revenue"] == pytest.approx(1900.0)
    assert totals["holdout"]["users"] == 23
    assert totals["holdout"]["converted"] == 5
    assert totals["holdout"]["revenue"] == pytest.approx(185.5)
    assert totals["uplift"]["conversion"] == pytest.approx(38 / 140 - 5 / 23)
    _, lo, hi = difference_interval(38, 140, 5, 23)
    assert totals["uplift"]["ci"] == pytest.approx([lo, hi])
    assert totals["revenue_uplift_per_user"] == pytest.approx(1900 / 140 - 185.5 / 23)
    assert "overlap" in totals["note"] or "once per offer" in totals["note"]


def test_build_report_redemptions_without_impressions_and_empty() -> None:
    odd = OfferArmStats("x", "x", 3, 5, 4, 1, 10.0, 0, 0, 0.0)
    report = build_report([odd], holdout_share=0.0)
    assert report["offers"][0]["impressions"] == 3  # reported as recorded
    assert report["offers"][0]["redemption_rate"] == 1.0  # rate over max(impressions, redemptions)
    empty = build_report([], holdout_share=0.05)
    assert empty["offers"] == []
    assert empty["totals"]["redemption_rate"] is None
    assert empty["totals"]["uplift"] == {"conversion": None, "ci": None}
    json.dumps(empty, allow_nan=False)


def test_build_report_rejects_bad_input() -> None:
    good = example_stats()[0]
    bad = [
        OfferArmStats("a", "a", 10, 1, 5, 6, 0.0, 0, 0, 0.0),  # converted > users
        OfferArmStats("a", "a", 10, 1, 5, 1, 0.0, 2, 3, 0.0),  # holdout converted > users
        OfferArmStats("a", "a", -1, 0, 5, 1, 0.0, 0, 0, 0.0),  # negative count
        OfferArmStats("a", "a", 10, 1, 5, 1, float("nan"), 0, 0, 0.0),  # NaN revenue
    ]
    for stats in bad:
        with pytest.raises(ValueError):
            build_report([stats], holdout_share=0.1)
    with pytest.raises(ValueError, match="more than once"):
        build_report([good, good], holdout_share=0.1)
    for share in (-0.1, 1.0):
        with pytest.raises(ValueError):
            build_report([good], holdout_share=share)
    with pytest.raises(ValueError):
        build_report([good], holdout_share=0.1, confidence=1.0)


def test_report_json_round_trip_has_no_nan() -> None:
    report = build_report(example_stats(), holdout_share=0.1, confidence=0.9)
    text = json.dumps(report, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == report


# -- HTML ----------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "script":
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_render_html_escapes_and_has_one_image_per_plot(tmp_path: Path) -> None:
    report = json.loads(json.dumps(build_report(example_stats(), holdout_share=0.1)))
    out = tmp_path / "offers.html"
    write_html_report(out, report, title="Offers <b>Q2</b>")  # renders with render_html
    page_html = out.read_text(encoding="utf-8")
    assert "<script>" not in page_html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; $5 off" in page_html
    assert "<b>Q2</b>" not in page_html and "Offers &lt;b&gt;Q2&lt;/b&gt;" in page_html

    page = _Page()
    page.feed(page_html)
    assert page.scripts == 0
    assert len(page.images) == PLOTS
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]).startswith(b"\x89PNG\r\n\x1a\n")
    text = " ".join(page.text)
    assert "<script>alert('x')</script> & $5 off" in text  # shown as text, not markup
    assert "spring10" in text and "0.1000" in text  # the table carries the numbers


def test_render_html_without_offers() -> None:
    page = _Page()
    page.feed(render_html(build_report([], holdout_share=0.1)))
    assert len(page.images) == PLOTS
