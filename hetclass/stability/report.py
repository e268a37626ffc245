"""``report.html``: a self-contained page (opens from disk) with the stability figures.

Figures use matplotlib's object API only (``matplotlib.figure.Figure`` rendered by the Agg
canvas; no pyplot, no global state) and are embedded as base64 PNG ``data:`` URIs, so the
page has no external files. The same key tables are printed by the command line
(:func:`format_key_tables`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import atomic_write_text
from .scores import BANDS

_BAND_COLOURS = {"highly stable": "#1a9850", "stable": "#91cf60", "doubtful": "#fee08b",
                 "unstable": "#d73027"}


# ----- figure helpers ------------------------------------------------------------------------
def new_figure(width_in: float = 6.0, height_in: float = 4.0) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig: Figure) -> str:
    """PNG of ``fig`` as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fig_class_sizes(histories: Sequence[Sequence[dict]], perms: np.ndarray, k: int) -> Figure:
    """Class fractions per EM iteration, one line per replicate, coloured by consensus class.

    ``histories`` per replicate the engine's per-iteration dicts (``class_fractions``);
    ``perms`` (R, K): replicate class j is consensus class ``perms[r, j]``.
    """
    fig = new_figure(6, 3.5)
    ax = fig.add_subplot()
    colours = [f"C{c % 10}" for c in range(k)]
    for r, hist in enumerate(histories):
        if not hist:
            continue
        it = [h.get("iteration", i + 1) for i, h in enumerate(hist)]
        fr = np.array([h["class_fractions"] for h in hist])
        for j in range(fr.shape[1]):
            c = int(perms[r, j]) if perms is not None else j
            ax.plot(it, fr[:, j], color=colours[c], alpha=0.7, lw=1.2,
                    label=f"class {c + 1}" if r == 0 else None)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("class fraction")
    ax.set_title(f"K = {k}: class sizes per iteration (lines = replicates)")
    ax.legend(fontsize=7, ncol=min(k, 4))
    return fig


def fig_matrix(values: np.ndarray, title: str, labels: Optional[Sequence[str]] = None,
               vmin: float = 0.0, vmax: float = 1.0) -> Figure:
    """Annotated heat map of a small matrix (replicate ARI/NMI, class Jaccard...)."""
    values = np.asarray(values, dtype=float)
    fig = new_figure(3.8, 3.3)
    ax = fig.add_subplot()
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis")
    n0, n1 = values.shape
    if n0 * n1 <= 144:
        for i in range(n0):
            for j in range(n1):
                v = values[i, j]
                ax.text(j, i, "" if not np.isfinite(v) else f"{v:.2f}", ha="center",
                        va="center", fontsize=7, color="w" if v < (vmin + vmax) / 2 else "k")
    labels = labels or [str(i + 1) for i in range(max(n0, n1))]
    ax.set_xticks(range(n1), labels[:n1], fontsize=7)
    ax.set_yticks(range(n0), labels[:n0], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def mean_pair_jaccard_matrix(aligned: np.ndarray, k: int) -> np.ndarray:
    """(K, K) Jaccard between consensus classes of replicate pairs, averaged over pairs."""
    from .scores import jaccard_matrix
    r = aligned.shape[0]
    acc, count = np.zeros((k, k)), 0
    for i in range(r):
        for j in range(i + 1, r):
            acc += np.nan_to_num(jaccard_matrix(aligned[i], aligned[j], k, k))
            count += 1
    return acc / max(count, 1)


def fig_stability_hist(stability: np.ndarray, max_posterior: Optional[np.ndarray], k: int) -> Figure:
    """Histogram of per-particle stability, with the mean max posterior per bin."""
    fig = new_figure(5.5, 3.3)
    ax = fig.add_subplot()
    s = stability[np.isfinite(stability)]
    values, counts = np.unique(s, return_counts=True)
    if values.size <= 12:            # R replicates give at most R + 1 distinct values
        width = 0.8 * (np.min(np.diff(values)) if values.size > 1 else 0.1)
        ax.bar(values, counts, width=width, color="#4575b4", alpha=0.85)
    else:
        ax.hist(s, bins=20, color="#4575b4", alpha=0.85)
    ax.set_xlabel("per-particle stability (fraction of replicates agreeing)")
    ax.set_ylabel("particles")
    ax.set_title(f"K = {k}: per-particle stability", fontsize=9)
    if max_posterior is not None and np.any(np.isfinite(max_posterior)) and values.size <= 12:
        ax2 = ax.twinx()
        ok = np.isfinite(stability) & np.isfinite(max_posterior)
        means = [np.mean(max_posterior[ok & (stability == v)]) for v in values]
        ax2.plot(values, means, "o-", color="#d73027", label="mean max posterior")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("mean max posterior", color="#d73027")
    return fig


def fig_stability_vs_k(per_k_summary: Dict[str, dict]) -> Figure:
    """Weakest / mean class Jaccard and mean ARI per K, over the Jaccard bands."""
    ks = sorted(int(k) for k in per_k_summary)
    fig = new_figure(5.5, 3.5)
    ax = fig.add_subplot()
    edges = sorted(max(lo, 0.0) for lo, _ in BANDS) + [1.02]
    names = [name for _, name in sorted(BANDS, key=lambda b: b[0])]
    for lo, hi, name in zip(edges[:-1], edges[1:], names):
        ax.axhspan(lo, hi, color=_BAND_COLOURS[name], alpha=0.18, lw=0)
    for key, label, style in (("min_class_jaccard", "weakest class Jaccard", "o-"),
                              ("mean_class_jaccard", "mean class Jaccard", "s--"),
                              ("mean_ari", "mean pairwise ARI", "^:")):
        ys = [per_k_summary[str(k)].get(key) for k in ks]
        ys = [np.nan if y is None else y for y in ys]
        ax.plot(ks, ys, style, label=label)
    ax.set_xticks(ks)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("K (number of classes)")
    ax.set_ylabel("agreement between replicates")
    ax.set_title("stability versus K (bands: unstable / doubtful / stable / highly stable)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def fig_fsc(curves: Dict[str, np.ndarray], box_px: int, pixel_size_A: float,
            title: str = "FSC", threshold: Optional[float] = 0.143) -> Figure:
    """FSC curves against spatial frequency (1/A); ``curves`` label -> (n_shells,)."""
    fig = new_figure(5.5, 3.5)
    ax = fig.add_subplot()
    for label, c in curves.items():
        c = np.asarray(c, dtype=float)
        freq = np.arange(c.size) / (box_px * pixel_size_A)
        ax.plot(freq, c, label=label)
    if threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.1, 1.02)
    ax.set_xlabel("spatial frequency (1/A)")
    ax.set_ylabel("FSC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def fig_central_slices(maps: Sequence[np.ndarray], names: Sequence[str]) -> Figure:
    """Central z, y and x slices of every map (rows = maps)."""
    n = len(maps)
    fig = new_figure(5.4, 1.9 * max(n, 1))
    for i, (m, name) in enumerate(zip(maps, names)):
        m = np.asarray(m, dtype=float)
        c = m.shape[0] // 2
        for j, (sl, axis) in enumerate(((m[c], "z"), (m[:, c], "y"), (m[:, :, c], "x"))):
            ax = fig.add_subplot(max(n, 1), 3, 3 * i + j + 1)
            ax.imshow(sl, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(f"central {axis} slice", fontsize=8)
    return fig


def fig_tree(tree: dict) -> Figure:
    """The exhaustive splitting tree: one box per node (id, size, K=2 stability,
    resolution, decision or leaf reason). ``tree`` is a node dict of ``tree.json``."""
    levels: Dict[int, List[dict]] = {}
    xs: Dict[str, float] = {}
    counter = [0]

    def place(node, depth):
        levels.setdefault(depth, []).append(node)
        if not node["children"]:
            xs[node["id"]] = counter[0]
            counter[0] += 1
        else:
            for c in node["children"]:
                place(c, depth + 1)
            xs[node["id"]] = float(np.mean([xs[c["id"]] for c in node["children"]]))

    place(tree, 0)
    width = max(counter[0], 1)
    depth = max(levels) + 1
    fig = new_figure(max(4.0, 2.4 * width), 1.6 * depth + 0.6)
    ax = fig.add_subplot()
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-depth + 0.4, 0.6)
    ax.axis("off")

    def draw(node, d):
        x, y = xs[node["id"]], -d
        for c in node["children"]:
            ax.plot([x, xs[c["id"]]], [y - 0.22, -(d + 1) + 0.22], color="grey", lw=1)
            draw(c, d + 1)
        stab = node.get("stability") or {}
        j = stab.get("min_class_jaccard")
        res = node.get("resolution_A")
        lines = [f"node {node['id']}  n={node['n_particles']}",
                 "J(K=2) " + ("-" if j is None else f"{j:.2f}")
                 + ("" if res is None else f"  {res:.1f} A"),
                 "split" if node["decision"] == "split" else f"leaf: {node['reason']}"]
        colour = "#d9ef8b" if node["decision"] == "split" else "#e0e0e0"
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.3", fc=colour, ec="grey"))

    draw(tree, 0)
    ax.set_title("exhaustive splitting tree", fontsize=9)
    return fig


# ----- tables ------------------------------------------------------------------------------
def _fmt(v, spec=".3f"):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "-" if not np.isfinite(v) else format(float(v), spec)
    return str(v)


PER_K_COLUMNS = (("K", "k"), ("all stable", "all_stable"), ("min J", "min_class_jaccard"),
                 ("mean J", "mean_class_jaccard"), ("mean ARI", "mean_ari"),
                 ("mean NMI", "mean_nmi"), ("PAC", "pac"),
                 ("particle stab.", "mean_particle_stability"))
CLASS_COLUMNS = (("class", "class_number"), ("particles", "size"), ("fraction", "fraction"),
                 ("J mean", "jaccard_mean"), ("J min", "jaccard_min"), ("band", "band"),
                 ("overlap pass", "random_overlap_pass_fraction"), ("core", "core_size"),
                 ("max post.", "mean_max_posterior"), ("core res. A", "core_resolution_A"))


def table_rows(records: Iterable[dict], columns) -> List[List[str]]:
    return [[_fmt(r.get(key)) for _, key in columns] for r in records]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    out = [line]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def format_key_tables(summary: dict) -> str:
    """The CLI's text version of the report's key tables (from ``summary.json`` content)."""
    per_k = [summary["per_k"][k] for k in sorted(summary["per_k"], key=int)]
    parts = ["stability per K:",
             text_table([h for h, _ in PER_K_COLUMNS], table_rows(per_k, PER_K_COLUMNS)), "",
             f"classes at K = {summary['consensus_k']} (consensus):",
             text_table([h for h, _ in CLASS_COLUMNS], table_rows(summary["classes"], CLASS_COLUMNS)),
             "", f"recommended classes: {summary['recommended_classes']}",
             f"heterogeneity: {summary['heterogeneity']}"]
    parts += [f"  - {r}" for r in summary.get("reasons", [])]
    cont = summary.get("continuous_particles")
    if cont:
        parts.append(f"continuous part: {cont['n_particles']} particles in {cont['star']} "
                     "(ready for cryoDRGN / 3DVA)")
    return "\n".join(parts)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]],
               band_column: Optional[int] = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            style = ""
            if band_column is not None and i == band_column and c in _BAND_COLOURS:
                style = f' style="background:{_BAND_COLOURS[c]}"'
            cells.append(f"<td{style}>{html.escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----- page --------------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 6px;
text-align:right;font-size:13px}th{background:#eee}img{max-width:100%;margin:4px}
pre{background:#f6f6f6;padding:6px;font-size:12px;overflow-x:auto}.verdict{font-size:1.2em}
.note{background:#fff3cd;padding:6px;border:1px solid #e0c060}"""


class Page:
    """Accumulates sections, then writes one self-contained HTML file atomically."""

    def __init__(self, title: str):
        self.title = title
        self.parts: List[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: Optional[str] = None) -> None:
        cls = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig: Figure, alt: str) -> None:
        self.parts.append(f'<img alt="{html.escape(alt)}" src="{figure_to_data_uri(fig)}">')

    def pre(self, obj) -> None:
        text = obj if isinstance(obj, str) else json.dumps(obj, indent=1, default=_json_default)
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def html(self) -> str:
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.parts) + "</body></html>\n")

    def write(self, path) -> None:
        atomic_write_text(path, self.html())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _strip_big(evidence: dict) -> dict:
    """Evidence without the bulky distance matrices (they stay in summary.json)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in ("distance_matrix",)}
        return v
    return clean(evidence)


def write_stability_report(path, summary: dict, result, class_maps: Sequence[np.ndarray],
                           class_fsc: Dict[str, np.ndarray], map_box_px: int,
                           map_pixel_size_A: float) -> None:
    """The stability report: verdict, key tables, and every figure.

    ``summary`` the content of summary.json; ``result`` the
    :class:`hetclass.stability.analysis.StabilityResult`; ``class_maps`` the consensus
    (stable-core) class maps and ``class_fsc`` their half-map FSC curves (label -> curve)
    at ``map_box_px`` / ``map_pixel_size_A``.
    """
    page = Page("hetclass stability report")
    page.paragraph(f"{summary['input']['n_particles']} particles, K = "
                   f"{', '.join(str(k) for k in summary['parameters']['k_values'])}, "
                   f"{summary['parameters']['replicates']} replicates, subsample "
                   f"{summary['parameters']['subsample'] or 1.0}, seed "
                   f"{summary['parameters']['seed']}.")
    page.raw(f"<p class=\"verdict\">Recommended classes: <b>{summary['recommended_classes']}"
             f"</b> &mdash; heterogeneity: <b>{html.escape(summary['heterogeneity'])}</b></p>")
    page.raw("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in summary["reasons"]) + "</ul>")
    cont = summary.get("continuous_particles")
    if cont:
        page.paragraph(f"Continuous heterogeneity: {cont['n_particles']} particles written to "
                       f"{cont['star']}, ready for cryoDRGN or cryoSPARC 3D variability "
                       "analysis; discrete classes of this part only bin a continuum.", "note")

    page.heading("Stability per K")
    per_k = [summary["per_k"][k] for k in sorted(summary["per_k"], key=int)]
    page.raw(html_table([h for h, _ in PER_K_COLUMNS], table_rows(per_k, PER_K_COLUMNS)))
    if len(per_k) > 1:
        page.figure(fig_stability_vs_k(summary["per_k"]), "stability versus K")

    k = summary["consensus_k"]
    page.heading(f"Classes at K = {k}")
    page.raw(html_table([h for h, _ in CLASS_COLUMNS],
                        table_rows(summary["classes"], CLASS_COLUMNS), band_column=5))
    scores = result.per_k.get(k)
    run = result.runs.get(k)
    if run is not None and scores is not None:
        page.figure(fig_class_sizes(run.histories, scores.perms, k), "class sizes per iteration")
        page.figure(fig_matrix(mean_pair_jaccard_matrix(scores.aligned, k),
                               "class Jaccard between replicates (mean over pairs)"),
                    "Jaccard matrix")
        page.figure(fig_matrix(scores.ari, "pairwise ARI between replicates",
                               labels=[f"r{i + 1}" for i in range(scores.n_replicates)]),
                    "ARI matrix")
        page.figure(fig_matrix(scores.nmi, "pairwise NMI between replicates",
                               labels=[f"r{i + 1}" for i in range(scores.n_replicates)]),
                    "NMI matrix")
        page.figure(fig_stability_hist(scores.particle_stability, scores.max_posterior, k),
                    "per-particle stability histogram")
    if class_fsc:
        page.figure(fig_fsc(class_fsc, map_box_px, map_pixel_size_A,
                            "half-map FSC of the stable-core class maps"), "FSC curves")
    if len(class_maps):
        page.figure(fig_central_slices(class_maps, [f"class {i + 1}" for i in range(len(class_maps))]),
                    "central slices of the class maps")
    for kk in sorted(result.runs):
        if kk == k:
            continue
        s = result.per_k[kk]
        page.heading(f"K = {kk}", 3)
        page.figure(fig_class_sizes(result.runs[kk].histories, s.perms, kk), f"class sizes K={kk}")
        page.figure(fig_matrix(mean_pair_jaccard_matrix(s.aligned, kk),
                               f"K = {kk}: class Jaccard between replicates"), f"Jaccard K={kk}")
    page.heading("Evidence behind the verdict")
    page.pre(_strip_big(summary["evidence"]))
    page.heading("Files")
    page.pre(summary.get("files", {}))
    page.write(path)


def write_exhaustive_report(path, tree_summary: dict, leaf_maps: Sequence[np.ndarray],
                            leaf_names: Sequence[str], map_tests: Dict[str, dict]) -> None:
    """The exhaustive report: the tree picture, leaf table, map-difference FSC curves and
    central slices of the leaf maps."""
    page = Page("hetclass exhaustive splitting report")
    tree = tree_summary["tree"]
    page.paragraph(f"{tree['n_particles']} particles; min class size "
                   f"{tree_summary['parameters']['min_class_size']}, max depth "
                   f"{tree_summary['parameters']['max_depth']}, "
                   f"{tree_summary['parameters']['replicates']} replicates per node.")
    page.raw(f"<p class=\"verdict\">Leaves: <b>{len(tree_summary['leaves'])}</b></p>")
    page.figure(fig_tree(tree), "splitting tree")
    header = ["leaf", "node", "particles", "reason", "resolution A", "star", "map"]
    rows = [[str(i + 1), lf["id"], str(lf["n_particles"]), lf["reason"] or "-",
             _fmt(lf.get("resolution_A"), ".1f"), lf.get("star", "-"), lf.get("map", "-")]
            for i, lf in enumerate(tree_summary["leaves"])]
    page.raw(html_table(header, rows))
    for node_id, test in map_tests.items():
        curves = {}
        for pair in test["pairs"]:
            a, b = pair["children"]
            curves[f"child {a} vs {b} (deficit {pair['mean_fsc_deficit']:.3f}, threshold "
                   f"{pair['threshold']:.3f})"] = np.asarray(pair["fsc_children"])
            curves[f"random splits of {a}+{b} (mean)"] = np.asarray(pair["fsc_null_mean"])
        page.figure(fig_fsc(curves, test["box_px"], test["pixel_size_A"],
                            f"node {node_id}: child maps vs random splits", threshold=None),
                    f"map test {node_id}")
    if len(leaf_maps):
        page.figure(fig_central_slices(leaf_maps, leaf_names), "central slices of the leaf maps")
    page.heading("Tree (tree.json)")
    page.pre(tree)
    page.write(path)
