"""The pieces every report shares: matplotlib figures saved as PNG (atomically), and self-contained HTML (one
style sheet, escaped cells, PNGs inline as base64; no scripts, no external resources)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.storage import atomic_write_bytes

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #f7931a; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child, td.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.note { color: #555; font-size: 13px; }
code { background: #f4f4f4; padding: 0 3px; }
details { margin-top: 2em; }
details > summary { cursor: pointer; font-size: 1.2em; font-weight: bold; }
"""


def fmt(v: Any) -> str:
    """Display text of a table cell."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else ("−∞" if v < 0 else "NaN")
        if v == int(v) and abs(v) < 1e15 and abs(v) >= 1:
            return f"{int(v):,}"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(ncols: int = 1, *, figsize: tuple[float, float]):
    """A figure with ``ncols`` axes in one row, laid out by matplotlib's constrained layout.

    Constrained layout keeps titles, axis labels and legends placed outside the axes inside the
    image; titles are set with ``wrap=True`` so that a long one breaks into lines instead of being cut.
    """
    return pyplot().subplots(1, ncols, figsize=figsize, squeeze=False, layout="constrained")


def save_png(fig, path: Path) -> Path:
    plt = pyplot()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def html_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], raw: bool = False, text_cols: int = 1) -> str:
    """An HTML table; cells are formatted with ``fmt`` unless ``raw`` (already text), always escaped.

    The first ``text_cols`` columns (and, unless ``raw``, every string cell) are left aligned.
    """
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = str(v) if raw else fmt(v)
            cls = ' class="text"' if i < text_cols or (isinstance(v, str) and not raw) else ""
            cells.append(f"<td{cls}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = Path(path).stem
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(name)}">'
            f"<figcaption>{esc(Path(path).name)}</figcaption></figure>")
