"""Statistics and the report of the offers engine.

Every offer has two arms for its uplift: *treated* users (outside the holdout,
shown the offer) and *holdout* users (in the stable holdout share, who would
have been shown it). :func:`build_report` turns per-offer counts
(:class:`OfferArmStats`) into a JSON-able dict with score intervals:

* a rate (redemptions per impression, conversion of an arm): the Wilson score
  interval (:func:`wilson_interval`);
* the conversion uplift (treated minus holdout): Newcombe's hybrid score
  interval for a difference of independent proportions
  (:func:`difference_interval`, method 10 of Newcombe 1998).

Undefined values (a rate over zero trials, an uplift with an empty arm) are
``None`` in the report, never NaN, so ``json.dumps(report, allow_nan=False)``
works. :func:`render_html` draws the report as one self-contained HTML page
(inline CSS, plots as base64 PNGs drawn by matplotlib's Agg canvas, no pyplot
state), the way :mod:`training.report` does. :func:`thompson_draw` is the
Beta-Bernoulli Thompson-sampling draw of an offer's redemption rate.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from sessionrec.html_page import escape as _e
from sessionrec.html_page import figure, page_start
from sessionrec.html_page import png as _png

__all__ = [
    "OfferArmStats",
    "build_report",
    "difference_interval",
    "render_html",
    "thompson_draw",
    "wilson_interval",
    "write_html_report",
]

NAN = float("nan")

TOTALS_NOTE = (
    "Totals add the counts of all offers. A user shown several offers (or in the "
    "holdout of several) is counted once per offer, so 'users' are user-offer pairs, "
    "the pooled arms mix offers with different audiences, and the intervals assume "
    "independent observations, which overlapping users violate: read the totals as "
    "indicative; the per-offer numbers are the ones to judge offers by."
)


@dataclass(frozen=True)
class OfferArmStats:
    """The counts of one offer. Users and revenue count from a user's first exposure
    (or would-be exposure, for the holdout) to the offer."""

    offer_id: str
    title: str
    impressions: int  # times shown (treated arm)
    redemptions: int  # OFFER_REDEEMED events
    treated_users: int  # distinct non-holdout users shown the offer
    treated_converted: int  # of those, users with a PURCHASE after their first exposure
    treated_revenue: float  # sum of PURCHASE values of those users after first exposure
    holdout_users: int  # distinct holdout users who would have been shown it
    holdout_converted: int
    holdout_revenue: float


# -- statistics --------------------------------------------------------------------------------


def _count(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a count, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer count, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name}: must be >= 0, got {count}")
    return count


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(lo, hi)`` of a proportion ``successes / trials``
    at two-sided ``confidence``, clipped to [0, 1]. Zero trials carry no
    information: ``(nan, nan)``. Raises ``ValueError`` on negative counts or
    ``successes > trials``."""
    s = _count("successes", successes)
    n = _count("trials", trials)
    if s > n:
        raise ValueError(f"successes ({s}) > trials ({n})")
    z = _z(confidence)
    if n == 0:
        return (NAN, NAN)
    p = s / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # the exact bounds at s == 0 and s == n are 0 and 1; avoid rounding noise there
    lo = 0.0 if s == 0 else max(0.0, centre - half)
    hi = 1.0 if s == n else min(1.0, centre + half)
    return (lo, hi)


def difference_interval(
    s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(p1 - p2, lo, hi)``: the difference of two independent proportions
    ``s1/n1 - s2/n2`` and Newcombe's hybrid score interval for it, built from the
    two Wilson intervals ``(l1, u1)``, ``(l2, u2)``::

        lo = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
        hi = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)

    If either arm has no trials the difference is undefined: ``(nan, nan, nan)``.
    Raises ``ValueError`` like :func:`wilson_interval`."""
    l1, u1 = wilson_interval(s1, n1, confidence)
    l2, u2 = wilson_interval(s2, n2, confidence)
    if n1 == 0 or n2 == 0:
        return (NAN, NAN, NAN)
    p1 = s1 / n1
    p2 = s2 / n2
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (d, max(-1.0, lo), min(1.0, hi))


def thompson_draw(
    redemptions: int,
    impressions: int,
    rng: np.random.Generator,
    prior: tuple[float, float] = (1.0, 1.0),
) -> float:
    """One Thompson-sampling draw of an offer's redemption rate: a draw from
    ``Beta(prior_a + redemptions, prior_b + impressions - redemptions)``.

    A redemption can arrive without a recorded impression (a lost or late event),
    so ``impressions`` is clipped up to ``redemptions`` rather than rejected.
    Raises ``ValueError`` on negative counts or a prior parameter that is not a
    positive finite number."""
    r = _count("redemptions", redemptions)
    n = max(_count("impressions", impressions), r)
    a, b = (float(x) for x in prior)
    if not (math.isfinite(a) and math.isfinite(b) and a > 0.0 and b > 0.0):
        raise ValueError(f"prior: both parameters must be positive and finite, got {prior!r}")
    return float(rng.beta(a + r, b + (n - r)))


# -- the report --------------------------------------------------------------------------------


def _opt(value: float) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: float, den: int) -> float | None:
    return float(num) / den if den > 0 else None


def _ci(interval: tuple[float, ...]) -> list[float] | None:
    values = [_opt(v) for v in interval]
    if any(v is None for v in values):
        return None
    return [v for v in values if v is not None]


def _arm(users: int, converted: int, revenue: float, confidence: float) -> dict[str, Any]:
    return {
        "users": users,
        "converted": converted,
        "conversion": _ratio(converted, users),
        "conversion_ci": _ci(wilson_interval(converted, users, confidence)),
        "revenue": float(revenue),
        "revenue_per_user": _ratio(revenue, users),
    }


def _entry(
    impressions: int,
    redemptions: int,
    treated: tuple[int, int, float],
    holdout: tuple[int, int, float],
    confidence: float,
) -> dict[str, Any]:
    # redemptions may exceed recorded impressions (see thompson_draw): rate over the larger
    shown = max(impressions, redemptions)
    t = _arm(*treated, confidence)
    h = _arm(*holdout, confidence)
    diff, lo, hi = difference_interval(treated[1], treated[0], holdout[1], holdout[0], confidence)
    rev_uplift = None
    if t["revenue_per_user"] is not None and h["revenue_per_user"] is not None:
        rev_uplift = t["revenue_per_user"] - h["revenue_per_user"]
    return {
        "impressions": impressions,
        "redemptions": redemptions,
        "redemption_rate": _ratio(redemptions, shown),
        "redemption_rate_ci": _ci(wilson_interval(redemptions, shown, confidence)),
        "treated": t,
        "holdout": h,
        "uplift": {"conversion": _opt(diff), "ci": _ci((lo, hi))},
        "revenue_uplift_per_user": rev_uplift,
    }


def _checked(s: OfferArmStats) -> OfferArmStats:
    who = f"offer {s.offer_id!r}"
    for name in (
        "impressions",
        "redemptions",
        "treated_users",
        "treated_converted",
        "holdout_users",
        "holdout_converted",
    ):
        _count(f"{who}: {name}", getattr(s, name))
    for arm in ("treated", "holdout"):
        users, converted = getattr(s, f"{arm}_users"), getattr(s, f"{arm}_converted")
        if converted > users:
            raise ValueError(f"{who}: {arm}_converted ({converted}) > {arm}_users ({users})")
        revenue = float(getattr(s, f"{arm}_revenue"))
        if not math.isfinite(revenue):
            raise ValueError(f"{who}: {arm}_revenue must be finite, got {revenue!r}")
    return s


def build_report(
    stats: Sequence[OfferArmStats], *, holdout_share: float, confidence: float = 0.95
) -> dict[str, Any]:
    """The JSON-able report of ``stats`` (one per offer, offer ids unique)::

        {"holdout_share", "confidence",
         "offers": [{"offer_id", "title", "impressions", "redemptions",
                     "redemption_rate", "redemption_rate_ci": [lo, hi],
                     "treated": {"users", "converted", "conversion", "conversion_ci",
                                 "revenue", "revenue_per_user"},
                     "holdout": {...the same},
                     "uplift": {"conversion": treated - holdout, "ci": [lo, hi]},
                     "revenue_uplift_per_user"}, ...],
         "totals": {...an offer's fields without offer_id and title, summed, "note"}}

    The redemption rate is redemptions per impression (impressions clipped up to
    redemptions); rates and their intervals over zero trials are ``None``, and the
    uplifts are ``None`` (the ``uplift`` dict keeps its keys) unless both arms have
    users. Conversion intervals are Wilson, the uplift's Newcombe's hybrid score
    interval, all at ``confidence``. Raises ``ValueError`` on inconsistent counts."""
    share = float(holdout_share)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"holdout_share: must be in [0, 1), got {holdout_share!r}")
    _z(confidence)
    seen: set[str] = set()
    offers: list[dict[str, Any]] = []
    total = np.zeros(8)  # impressions, redemptions, t users/converted/revenue, h users/...
    for s in stats:
        _checked(s)
        if s.offer_id in seen:
            raise ValueError(f"offer {s.offer_id!r}: appears more than once")
        seen.add(s.offer_id)
        treated = (s.treated_users, s.treated_converted, float(s.treated_revenue))
        holdout = (s.holdout_users, s.holdout_converted, float(s.holdout_revenue))
        entry = _entry(s.impressions, s.redemptions, treated, holdout, confidence)
        offers.append({"offer_id": str(s.offer_id), "title": str(s.title), **entry})
        total += [s.impressions, s.redemptions, *treated, *holdout]
    ints = [int(v) for v in total[[0, 1, 2, 3, 5, 6]]]
    totals = _entry(
        ints[0],
        ints[1],
        (ints[2], ints[3], float(total[4])),
        (ints[4], ints[5], float(total[7])),
        confidence,
    )
    totals["offers"] = len(offers)
    totals["note"] = TOTALS_NOTE
    return {
        "holdout_share": share,
        "confidence": float(confidence),
        "offers": offers,
        "totals": totals,
    }


# -- HTML --------------------------------------------------------------------------------------


TREATED_COLOR = "#0969da"
HOLDOUT_COLOR = "#bf8700"
UPLIFT_COLOR = "#1a7f37"
LABEL_CHARS = 24


def write_html_report(path: str | Path, report: Mapping[str, Any], **kw: Any) -> None:
    """Writes :func:`render_html` of ``report`` (from :func:`build_report`, or
    its JSON read back) to ``path``; ``kw`` go to :func:`render_html`."""
    Path(path).write_text(render_html(report, **kw), encoding="utf-8")


def render_html(report: Mapping[str, Any], *, title: str = "sessionrec offers report") -> str:
    """One self-contained HTML page of ``report``: four plots (redemption rate,
    conversion treated against holdout, conversion uplift, revenue per user; the
    intervals as error bars) and every number in a table. All text is escaped."""
    offers: list[Mapping[str, Any]] = list(report.get("offers", []))
    confidence = report.get("confidence")
    level = f"{confidence:.0%}" if isinstance(confidence, int | float) else "?"
    figures = [
        (
            "Redemption rate",
            _redemption_figure(offers),
            f"Redemptions per impression; error bars: {level} Wilson score interval.",
        ),
        (
            "Conversion: treated against holdout",
            _conversion_figure(offers),
            "Share of users with a purchase after their first (would-be) exposure; "
            f"error bars: {level} Wilson score interval. A missing bar: no users in that arm.",
        ),
        (
            "Conversion uplift",
            _uplift_figure(offers),
            f"Treated minus holdout conversion; error bars: {level} Newcombe hybrid score "
            "interval. An interval that crosses zero shows no clear effect. Offers with an "
            "empty arm are marked n/a.",
        ),
        (
            "Revenue per user: treated against holdout",
            _revenue_figure(offers),
            "Purchase value after the first (would-be) exposure divided by the arm's users.",
        ),
    ]
    totals = report.get("totals") or {}
    share = report.get("holdout_share")
    sub = [f"{len(offers)} offers"]
    if isinstance(share, int | float):
        sub.append(f"holdout share {share:.1%}")
    sub.append(f"confidence {level}")
    parts = [
        *page_start(title),
        f'<p class="sub">{_e(" · ".join(sub))}</p>',
    ]
    for heading, png, caption in figures:
        parts.append(f"<h2>{_e(heading)}</h2>")
        parts.append(
            f'<figure><img alt="{_e(heading)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    parts.append("<h2>All numbers</h2>")
    parts.append(
        f'<p class="note">Intervals ({_e(level)}) below each value. '
        "Conversion, revenue and users count from a user's first (would-be) exposure.</p>"
    )
    parts.append(_numbers_table(offers, totals))
    if totals.get("note"):
        parts.append(f'<p class="note">{_e(totals["note"])}</p>')
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Generated {generated} by sessionrec.</p>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


# -- plots -------------------------------------------------------------------------------------


def _num(value: Any) -> float:
    """A report value as a float for plotting: None (undefined) becomes NaN."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return NAN


def _label(offer: Mapping[str, Any]) -> str:
    text = str(offer.get("offer_id", ""))
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _figure(offers: Sequence[Mapping[str, Any]]) -> tuple[Figure, Any, np.ndarray]:
    width = min(16.0, max(7.0, 0.6 * len(offers) + 3.0))
    fig = figure(width, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(offers), dtype=float)
    # offer ids are user input: no mathtext parsing of "$...$"
    ax.set_xticks(x, [_label(o) for o in offers], parse_math=False)
    if len(offers) > 6:
        ax.tick_params(axis="x", labelrotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.set_xlim(-0.6, max(0.6, len(offers) - 0.4))
    ax.grid(axis="y", alpha=0.3)
    if not offers:
        ax.text(0.5, 0.5, "no offers", ha="center", va="center", transform=ax.transAxes)
    return fig, ax, x


def _bars(
    ax: Any,
    pos: np.ndarray,
    values: np.ndarray,
    cis: Sequence[Any] | None,
    width: float,
    color: str,
    label: str,
) -> None:
    ok = np.isfinite(values)
    ax.bar(pos[ok], values[ok], width, color=color, alpha=0.85, label=label)
    if cis is None:
        return
    err = np.full((2, len(values)), NAN)
    for j, ci in enumerate(cis):
        if ok[j] and isinstance(ci, Sequence) and len(ci) == 2:
            lo, hi = _num(ci[0]), _num(ci[1])
            err[:, j] = [max(0.0, values[j] - lo), max(0.0, hi - values[j])]
    has = np.isfinite(err).all(axis=0)
    if has.any():
        ax.errorbar(
            pos[has], values[has], yerr=err[:, has], fmt="none", ecolor="#24292f", capsize=3, lw=1
        )


def _redemption_figure(offers: Sequence[Mapping[str, Any]]) -> str:
    fig, ax, x = _figure(offers)
    rates = np.array([_num(o.get("redemption_rate")) for o in offers], dtype=float)
    cis = [o.get("redemption_rate_ci") for o in offers]
    _bars(ax, x, rates, cis, 0.6, TREATED_COLOR, "Redemption rate")
    ax.set_ylabel("Redemptions per impression")
    ax.set_ylim(bottom=0.0)
    ax.set_title("Redemption rate per offer (error bars: confidence interval)")
    return _png(fig)


def _arm_values(offers: Sequence[Mapping[str, Any]], arm: str, key: str) -> np.ndarray:
    return np.array([_num((o.get(arm) or {}).get(key)) for o in offers], dtype=float)


def _conversion_figure(offers: Sequence[Mapping[str, Any]]) -> str:
    fig, ax, x = _figure(offers)
    for i, (arm, color) in enumerate((("treated", TREATED_COLOR), ("holdout", HOLDOUT_COLOR))):
        values = _arm_values(offers, arm, "conversion")
        cis = [(o.get(arm) or {}).get("conversion_ci") for o in offers]
        _bars(ax, x - 0.2 + 0.4 * i, values, cis, 0.38, color, arm.capitalize())
    ax.set_ylabel("Users who purchased / users")
    ax.set_ylim(bottom=0.0)
    ax.set_title("Conversion per offer, treated and holdout (error bars: confidence interval)")
    ax.legend()
    return _png(fig)


def _uplift_figure(offers: Sequence[Mapping[str, Any]]) -> str:
    fig, ax, x = _figure(offers)
    ax.axhline(0.0, color="#57606a", lw=1)
    values = np.array([_num((o.get("uplift") or {}).get("conversion")) for o in offers])
    err = np.full((2, len(offers)), NAN)
    for j, o in enumerate(offers):
        ci = (o.get("uplift") or {}).get("ci")
        if np.isfinite(values[j]) and isinstance(ci, Sequence) and len(ci) == 2:
            err[:, j] = [max(0.0, values[j] - _num(ci[0])), max(0.0, _num(ci[1]) - values[j])]
    ok = np.isfinite(values)
    has = ok & np.isfinite(err).all(axis=0)
    ax.plot(x[ok], values[ok], "o", color=UPLIFT_COLOR, label="Uplift")
    if has.any():
        ax.errorbar(
            x[has],
            values[has],
            yerr=err[:, has],
            fmt="none",
            ecolor=UPLIFT_COLOR,
            capsize=4,
            lw=1.5,
        )
    for missing in np.flatnonzero(~ok):
        ax.annotate("n/a", (x[missing], 0.0), ha="center", va="bottom", color="#59636e", fontsize=9)
    ax.set_ylabel("Conversion, treated minus holdout")
    ax.set_title("Conversion uplift per offer (error bars: confidence interval; line: no effect)")
    return _png(fig)


def _revenue_figure(offers: Sequence[Mapping[str, Any]]) -> str:
    fig, ax, x = _figure(offers)
    for i, (arm, color) in enumerate((("treated", TREATED_COLOR), ("holdout", HOLDOUT_COLOR))):
        values = _arm_values(offers, arm, "revenue_per_user")
        _bars(ax, x - 0.2 + 0.4 * i, values, None, 0.38, color, arm.capitalize())
    ax.axhline(0.0, color="#57606a", lw=0.8)
    ax.set_ylabel("Revenue per user")
    ax.set_title("Revenue per user per offer, treated and holdout")
    ax.legend()
    return _png(fig)


# -- tables ------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    number = _num(value)
    if not math.isfinite(number):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{number:.{digits}f}"


def _with_ci(value: Any, ci: Any, digits: int = 4) -> str:
    text = _e(_fmt(value, digits))
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        lo, hi = _e(_fmt(ci[0], 3)), _e(_fmt(ci[1], 3))
        text += f'<br><span class="ci">{lo}&ndash;{hi}</span>'
    return f"<td>{text}</td>"


def _row(entry: Mapping[str, Any], first: str, css: str = "") -> str:
    t = entry.get("treated") or {}
    h = entry.get("holdout") or {}
    up = entry.get("uplift") or {}
    cells = [
        first,
        f"<td>{_e(_fmt(entry.get('impressions')))}</td>",
        f"<td>{_e(_fmt(entry.get('redemptions')))}</td>",
        _with_ci(entry.get("redemption_rate"), entry.get("redemption_rate_ci")),
    ]
    for arm in (t, h):
        cells += [
            f"<td>{_e(_fmt(arm.get('users')))}</td>",
            f"<td>{_e(_fmt(arm.get('converted')))}</td>",
            _with_ci(arm.get("conversion"), arm.get("conversion_ci")),
            f"<td>{_e(_fmt(arm.get('revenue'), 2))}</td>",
            f"<td>{_e(_fmt(arm.get('revenue_per_user'), 2))}</td>",
        ]
    cells += [
        _with_ci(up.get("conversion"), up.get("ci")),
        f"<td>{_e(_fmt(entry.get('revenue_uplift_per_user'), 2))}</td>",
    ]
    cls = f' class="{css}"' if css else ""
    return f"<tr{cls}>{''.join(cells)}</tr>"


def _numbers_table(offers: Sequence[Mapping[str, Any]], totals: Mapping[str, Any]) -> str:
    arm_heads = ["Users", "Converted", "Conversion", "Revenue", "Revenue / user"]
    head1 = (
        '<tr><th class="l" rowspan="2">Offer</th><th rowspan="2">Impressions</th>'
        '<th rowspan="2">Redemptions</th><th rowspan="2">Redemption rate</th>'
        '<th colspan="5">Treated</th><th colspan="5">Holdout</th>'
        '<th rowspan="2">Conversion uplift</th><th rowspan="2">Revenue uplift / user</th></tr>'
    )
    head2 = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in arm_heads * 2) + "</tr>"
    rows = [f'<div class="scroll"><table class="numbers"><thead>{head1}{head2}</thead><tbody>']
    for offer in offers:
        name = (
            f'<td class="l t"><b>{_e(offer.get("title", ""))}</b><br>'
            f'<span class="ci">{_e(offer.get("offer_id", ""))}</span></td>'
        )
        rows.append(_row(offer, name))
    if totals:
        rows.append(_row(totals, '<td class="l">All offers</td>', "total"))
    rows.append("</tbody></table></div>")
    return "".join(rows)


def arm_stats(outcomes: Sequence[Any], titles: Mapping[str, str]) -> list[OfferArmStats]:
    """One ``OfferArmStats`` per offer from the store's per-(offer, arm) outcomes
    (``sessionrec.store.OfferOutcome``; arm 0 treated, 1 holdout)."""
    by_offer: dict[str, dict[int, Any]] = {}
    for o in outcomes:
        by_offer.setdefault(o.offer_id, {})[o.arm] = o
    out = []
    for offer_id in sorted(by_offer):
        treated, holdout = by_offer[offer_id].get(0), by_offer[offer_id].get(1)
        out.append(
            OfferArmStats(
                offer_id=offer_id,
                title=titles.get(offer_id, ""),
                impressions=treated.impressions if treated else 0,
                redemptions=treated.redemptions if treated else 0,
                treated_users=treated.users if treated else 0,
                treated_converted=treated.converted if treated else 0,
                treated_revenue=treated.revenue if treated else 0.0,
                holdout_users=holdout.users if holdout else 0,
                holdout_converted=holdout.converted if holdout else 0,
                holdout_revenue=holdout.revenue if holdout else 0.0,
            )
        )
    return out
