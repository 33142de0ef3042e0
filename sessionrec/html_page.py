"""What every self-contained HTML report page shares: the style sheet, the page
head, figures as inline PNGs, and escaping (evaluation, offers and analytics
reports all build on it; no scripts, nothing loaded from outside)."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 12px 0 4px; }
p.sub { color: #59636e; margin: 0 0 16px; }
p.note { color: #59636e; font-size: 13px; margin: 4px 0 12px; }
p.nodata { color: #59636e; font-style: italic; border: 1px dashed #d0d7de; border-radius: 6px;
           padding: 16px; text-align: center; margin: 12px 0 20px; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #59636e; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
th { background: #f6f8fa; }
td.l, th.l { text-align: left; }
td { white-space: nowrap; }
td.t { white-space: normal; max-width: 360px; overflow-wrap: anywhere; }
td .ci { color: #59636e; font-size: 10px; }
tr.total td { font-weight: 600; background: #f6f8fa; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 8px; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 140px; }
.card b { display: block; font-size: 22px; }
.card span { color: #59636e; font-size: 12px; }
.cols { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
"""


def escape(value: object) -> str:
    """Any value as HTML text (quotes too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


def page_start(title: str) -> list[str]:
    """The opening of a page: doctype, head with the style sheet, and the title."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
    ]


def figure(width: float, height: float) -> Figure:
    """A constrained-layout matplotlib figure of ``width`` x ``height`` inches.
    matplotlib is imported here, on the first report drawn: a server that never
    draws one does not load it (about 30 MiB and half a second per process)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def percent_axis(axis: Any) -> None:
    """Ticks of a matplotlib axis as percentages of 1.0."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0))


def png(fig: Figure) -> str:
    """A matplotlib figure as base64 PNG, for ``<img src="data:image/png;base64,...">``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")
