"""One self-contained HTML page (opens from disk, no external files) and its tables.

Figures use matplotlib's object API only (``matplotlib.figure.Figure`` on the Agg canvas; no
pyplot, no global state) and are embedded as base64 PNG ``data:`` URIs. A figure that fails
to draw becomes a one-line note on the page and an entry of :attr:`Page.failures`; the
caller reports those (one warning line), so a plotting problem never stops a run.

Tables are generic: :func:`value_html` renders any JSON-like value (dicts as key/value
tables, lists of records as grids, long number lists shortened), so a new field of a summary
dict appears as a new row without touching the report code.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import atomic_write_text

REPORT_HTML = "report.html"
MAX_LIST_ITEMS = 12          # longer number lists are shortened (the full list is in the JSON)
MAX_GRID_ROWS = 40           # longer record lists are cut (the full list is in the JSON)


# ----- figures -----------------------------------------------------------------------------
def new_figure(width_in: float = 6.0, height_in: float = 4.0, dpi: int = 90) -> Figure:
    """A figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig: Figure) -> str:
    """PNG of ``fig`` as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----- values and tables -------------------------------------------------------------------
def fmt_value(v, spec: str = ".3g") -> str:
    """A scalar as short text: ``-`` for None/NaN, yes/no for booleans."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return "-"
        return format(v, spec)
    return str(v)


def humanise(key) -> str:
    """``min_class_jaccard`` -> ``min class jaccard``."""
    return str(key).replace("_", " ")


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned plain-text table (for the terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]],
               cell_colours: Optional[Mapping[str, str]] = None,
               colour_column: Optional[int] = None, raw_cells: bool = False,
               css_class: Optional[str] = None) -> str:
    """An HTML table of text cells (escaped unless ``raw_cells``).

    ``cell_colours`` maps a cell text to a background colour, applied in ``colour_column``
    (every column when None).
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            style = ""
            if cell_colours and (colour_column is None or i == colour_column) \
                    and c in cell_colours:
                style = f' style="background:{cell_colours[c]}"'
            cells.append(f"<td{style}>{c if raw_cells else html.escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{css_class}"' if css_class else ""
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table{cls}>{thead}<tbody>{''.join(body)}</tbody></table>"


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, bool, int, float, np.generic))


def _numbers(values) -> bool:
    return all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
               for x in values)


def _list_html(values: list) -> str:
    if not values:
        return "-"
    if all(_is_scalar(x) for x in values):
        shown = [fmt_value(x) for x in values[:MAX_LIST_ITEMS]]
        more = len(values) - len(shown)
        text = ", ".join(shown) + (f", ... ({len(values)} values in the JSON file)"
                                   if more > 0 else "")
        return html.escape(text)
    if all(isinstance(x, list) and _numbers(x) for x in values):
        return html.escape(f"({len(values)} x {len(values[0]) if values else 0} matrix "
                           "in the JSON file)")
    if all(isinstance(x, Mapping) for x in values):
        return records_html(values)
    return "<br>".join(value_html(x, nested=True) for x in values[:MAX_GRID_ROWS])


def records_html(records: Sequence[Mapping], index_name: Optional[str] = None,
                 index: Optional[Sequence[str]] = None) -> str:
    """A grid: one row per record, one column per key (union over records, first-seen order);
    nested values are rendered inside their cell."""
    columns: List[str] = []
    for r in records:
        for k in r:
            if k not in columns:
                columns.append(k)
    header = ([index_name or ""] if index is not None else []) + [humanise(c) for c in columns]
    rows = []
    for i, r in enumerate(records[:MAX_GRID_ROWS]):
        row = [html.escape(str(index[i]))] if index is not None else []
        row += [value_html(r.get(c), nested=True) for c in columns]
        rows.append(row)
    table = html_table(header, rows, raw_cells=True, css_class="grid")
    if len(records) > MAX_GRID_ROWS:
        table += f"<p>({len(records)} rows; the first {MAX_GRID_ROWS} shown)</p>"
    return table


def _uniform_records(d: Mapping) -> bool:
    """True for a dict of dicts of scalars (e.g. per-K numbers): best shown as a grid."""
    return len(d) > 1 and all(isinstance(v, Mapping) and v and all(_is_scalar(x)
                                                                    for x in v.values())
                              for v in d.values())


def value_html(value, skip: Iterable[str] = (), nested: bool = False) -> str:
    """Any JSON-like value as HTML: scalars as text, dicts as key/value tables (or a grid for
    a dict of flat dicts; a small flat dict inside a table as one line ``a: 1, b: 2``), lists
    of records as grids, long lists shortened. Keys in ``skip`` are left out (bulky data that
    stays in the JSON file)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if _is_scalar(value):
        return html.escape(fmt_value(value))
    if isinstance(value, Mapping):
        items = {k: v for k, v in value.items() if k not in set(skip)}
        if not items:
            return "-"
        if nested and len(items) <= MAX_LIST_ITEMS and all(_is_scalar(v) for v in items.values()):
            return html.escape(", ".join(f"{k}: {fmt_value(v)}" for k, v in items.items()))
        if _uniform_records(items):
            return records_html(list(items.values()), index=list(items.keys()))
        rows = [[html.escape(humanise(k)), value_html(v, skip, nested=True)]
                for k, v in items.items()]
        return html_table([], rows, raw_cells=True, css_class="kv")
    if isinstance(value, (list, tuple)):
        return _list_html(list(value))
    return html.escape(str(value))


# ----- the page ----------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222;
line-height:1.4}table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #bbb;
padding:2px 6px;text-align:right;font-size:13px;vertical-align:top;white-space:nowrap}
th{background:#eee}table.kv td:first-child{background:#f7f7f7}
table.kv td,table.kv th,table.grid td{text-align:left}table.kv td+td{white-space:normal}
table table{margin:0}
img{max-width:100%;margin:4px}.verdict{font-size:1.2em}
.note{background:#fff3cd;padding:6px;border:1px solid #e0c060}
.limit{color:#8a5a00}.unresolved{color:#a00}.small{font-size:12px;color:#555}"""


class Page:
    """Accumulates sections, then writes one self-contained HTML file atomically."""

    def __init__(self, title: str):
        self.title = title
        self.parts: List[str] = []
        self.failures: List[str] = []    # figures that could not be drawn ("name: reason")

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: Optional[str] = None) -> None:
        cls = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], **kwargs) -> None:
        self.parts.append(html_table(header, rows, **kwargs))

    def values(self, value, skip: Iterable[str] = ()) -> None:
        """Any JSON-like value as tables (:func:`value_html`)."""
        self.parts.append(value_html(value, skip))

    def figure(self, make: Callable[[], Figure], alt: str) -> None:
        """Embed the figure ``make()`` returns; a failure becomes a note and a failure entry."""
        try:
            uri = figure_to_data_uri(make())
        except Exception as exc:  # noqa: BLE001 -- a figure never stops a run
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            self.failures.append(f"{alt}: {reason}")
            self.paragraph(f"(figure '{alt}' could not be drawn: {reason})", "note")
            return
        self.parts.append(f'<img alt="{html.escape(alt)}" src="{uri}">')

    def html(self) -> str:
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.parts) + "</body></html>\n")

    def write(self, path) -> None:
        atomic_write_text(path, self.html())


def failure_line(what: str, failures: Sequence[str]) -> str:
    """One warning line for figures that could not be drawn."""
    first = failures[0] if failures else ""
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    return f"{what}: {len(failures)} figure(s) could not be drawn ({first}{more})"


def describe(name: str, descriptions: Mapping[str, str]) -> str:
    """The description of a file name from ``{pattern: text}`` (``fnmatch`` patterns)."""
    from fnmatch import fnmatch
    for pattern, text in descriptions.items():
        if fnmatch(name, pattern):
            return text
    return ""
