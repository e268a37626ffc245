"""``report.html`` of ``stability`` and ``exhaustive``: a self-contained page (opens from
disk) with the verdict, tables and figures; every number also stays in ``summary.json`` /
``tree.json``.

The page is driven by the summary dict: the per-K and class tables show their known columns
first and then any further scalar field of the records; the evidence behind the verdict is
rendered generically (one table per piece of evidence, whatever keys it holds), so new fields
and new kinds of evidence appear without touching this module. Page, tables and the PNG
embedding come from :mod:`hetclass.reports.page`; the key tables are also printed by the
command line (:func:`format_key_tables`).
"""

from __future__ import annotations

import html
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from ..errors import HetclassWarning
from ..reports.figures import fig_fsc, fig_map_views
from ..reports.labels import resolution_text
from ..reports.page import (  # noqa: F401
    Page,
    describe,
    failure_line,
    figure_to_data_uri,
    fmt_value,
    html_table,
    humanise,
    new_figure,
    text_table,
    value_html,
)
from .scores import BANDS

_BAND_COLOURS = {"highly stable": "#1a9850", "stable": "#91cf60", "doubtful": "#fee08b",
                 "unstable": "#d73027"}


# ----- figures -----------------------------------------------------------------------------
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
    ax.set_title(f"K = {k}: class sizes per iteration (lines = replicates)", fontsize=10)
    ax.legend(fontsize=7, ncol=min(k, 4))
    ax.grid(alpha=0.3)
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


def stability_bins(stability: np.ndarray, n_replicates: Optional[int] = None) -> np.ndarray:
    """Bin edges over [0, 1]: one bin centred on each attainable value j / R when every
    value is such a multiple (R = ``n_replicates`` <= 20), else 20 equal bins."""
    s = stability[np.isfinite(stability)]
    if n_replicates and 1 <= n_replicates <= 20:
        step = 1.0 / n_replicates
        if np.allclose(s / step, np.round(s / step), atol=1e-6):
            centres = np.arange(n_replicates + 1) * step
            return np.concatenate([centres - step / 2, [1 + step / 2]])
    return np.linspace(0, 1, 21)


def fig_stability_hist(stability: np.ndarray, max_posterior: Optional[np.ndarray], k: int,
                       core_threshold: Optional[float] = None,
                       n_replicates: Optional[int] = None) -> Figure:
    """Left: histogram of per-particle stability over [0, 1] (counts written on the bars,
    the stable-core threshold marked). Right: the largest class probability of the particles
    at or above the threshold versus those below it (when posteriors are given)."""
    s_all = np.asarray(stability, dtype=float)
    ok = np.isfinite(s_all)
    s = s_all[ok]
    has_post = max_posterior is not None and np.any(np.isfinite(max_posterior))
    fig = new_figure(9.5 if has_post else 5.5, 3.4)
    axes = fig.subplots(1, 2 if has_post else 1)
    ax = axes[0] if has_post else axes
    edges = stability_bins(s_all, n_replicates)
    counts, _, bars = ax.hist(s, bins=edges, color="#4575b4", edgecolor="white")
    log = bool(s.size) and counts.max() > 0.8 * s.size and np.count_nonzero(counts) > 1
    if log:                        # one bin holds most particles: a log scale shows the rest
        ax.set_yscale("log")
    for c, bar in zip(counts, bars):
        if c > 0:
            ax.text(bar.get_x() + bar.get_width() / 2, c, f"{int(c)}", ha="center",
                    va="bottom", fontsize=7)
    if core_threshold is not None:
        ax.axvline(core_threshold, color="#d73027", ls="--", lw=1)
        ax.text(core_threshold, ax.get_ylim()[1] * 0.97, " core threshold", color="#d73027",
                fontsize=7, va="top", ha="right")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("per-particle stability (fraction of replicates agreeing)")
    ax.set_ylabel("particles (log scale)" if log else "particles")
    ax.set_title(f"K = {k}: per-particle stability ({s.size} particles, mean "
                 f"{s.mean() if s.size else float('nan'):.2f})", fontsize=9)
    if has_post:
        mp = np.asarray(max_posterior, dtype=float)
        thr = 0.8 if core_threshold is None else core_threshold
        both = ok & np.isfinite(mp)
        stable, unstable = mp[both & (s_all >= thr)], mp[both & (s_all < thr)]
        bins = np.linspace(min(1.0 / max(k, 1), float(np.nanmin(mp[both])) if both.any() else 0),
                           1, 21)
        axes[1].hist([stable, unstable], bins=bins, stacked=True,
                     color=["#1a9850", "#d73027"], edgecolor="white",
                     label=[f"stability >= {thr:g} ({stable.size})",
                            f"stability < {thr:g} ({unstable.size})"])
        log2 = max(stable.size, unstable.size) > 0.8 * max(both.sum(), 1)
        if log2:
            axes[1].set_yscale("log")
        axes[1].set_xlabel("largest class probability (mean over replicates)")
        axes[1].set_ylabel("particles (log scale)" if log2 else "particles")
        axes[1].set_title("assignment confidence of stable and unstable particles", fontsize=9)
        axes[1].legend(fontsize=7)
    fig.tight_layout()
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


_LEAF_COLOURS = {"too small": "#d9d9d9", "max depth": "#d9d9d9",
                 "unstable split": "#fdd0a2", "continuous": "#dadaeb",
                 "no significant map difference": "#c6dbef"}
_SPLIT_COLOUR = "#c7e9c0"


def fig_null(null: dict, points: Sequence[Tuple[float, float, str]], title: str) -> Figure:
    """The map statistic ``log T`` against the number of particles: the null
    classifications (grey), the null model's mean and 99 % prediction band, and the tested
    pairs (``points``: particles, log T, label)."""
    from scipy import stats as sstats
    fig = new_figure(6, 3.8)
    ax = fig.add_subplot()
    recs = [r for r in null.get("classifications", []) if r.get("log_ratio") is not None]
    ax.scatter([r["particles"] for r in recs], [r["log_ratio"] for r in recs], color="0.55",
               s=18, label="null classifications", zorder=2)
    model = null.get("log_ratio_model") or {}
    sizes = np.asarray(model.get("sizes") or [], dtype=float)
    values = np.asarray([np.nan if v is None else v for v in model.get("log_ratio") or []])
    xs = [p[0] for p in points] + list(sizes)
    if len(xs) and np.isfinite(values).sum() >= 3:
        from .distinguish import NullModel
        nm = NullModel(sizes, values)
        grid = np.geomspace(max(min(xs) * 0.8, 2), max(xs) * 1.2, 60)
        pred = np.array([nm.predict(n) for n in grid])
        upper = pred[:, 0] + sstats.t.ppf(0.99, pred[:, 2]) * pred[:, 1]
        ax.plot(grid, pred[:, 0], color="0.3", lw=1, label="null mean")
        ax.fill_between(grid, pred[:, 0] - (upper - pred[:, 0]), upper, color="0.85",
                        label="null 99 % band", zorder=1)
    for i, (n, value, label) in enumerate(points):
        ax.scatter([n], [value], color=f"C{i % 10}", s=40, marker="D", zorder=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("particles in the two classes")
    ax.set_ylabel("log T (map difference / its noise)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return fig


def pose_error_text(pose: Optional[dict], starts: Optional[int] = None) -> str:
    """One sentence on the STAR poses' errors and what the null did with them
    (``null.pose_errors``; ``starts``: ``null.starts_per_classification``)."""
    if not pose:
        return "The null data were made at the STAR poses (pose errors not measured)."
    measured = (f"Pose errors of the STAR file, measured on {pose['particles']} particles "
                f"(isotropic part): rms displacement {pose['rms_displacement_A']:.1f} A at "
                f"the map's mass radius, against the likelihood's "
                f"{pose['likelihood_resolution_A']:.1f} A")
    if not pose.get("simulated_in_null"):
        return measured + ": too small to matter; the null data were made at the STAR poses."
    return (measured + f" (median {pose['median_rotation_error_deg']:.1f} deg and "
            f"{pose['median_shift_error_A']:.1f} A). The null data were made at poses moved by "
            "errors of that size and classified at the STAR poses, and every map difference "
            "is taken after the best rigid motion of one map onto the other, so a split by "
            "the direction of the pose errors is not taken for heterogeneity."
            + (f" Each null classification kept the best of {starts} exploration starts, so "
               "that none misses that split." if starts and starts > 1 else ""))


def null_points(evidence: dict) -> List[Tuple[float, float, str]]:
    """The tested pairs of a stability run for :func:`fig_null`: the heterogeneity test,
    the recommended K's pairs and the within-class splits."""
    out = []
    het = evidence.get("heterogeneity_test") or {}
    if het.get("log_ratio") is not None:
        out.append((het["particles"], het["log_ratio"], "K=2 split (heterogeneity test)"))
    k_rec = (evidence.get("scan") or {}).get("recommended_k")
    for k, rec in (evidence.get("distinguishability") or {}).items():
        if k == "2" or (k_rec is not None and int(k) != k_rec):
            continue
        for pair in rec["pairs"]:
            if pair["log_ratio"] is not None and len(out) < 12:
                out.append((pair["particles"], pair["log_ratio"],
                            f"K={k}: classes {pair['classes'][0]}-{pair['classes'][1]}"))
    for c, rec in (evidence.get("within_class") or {}).items():
        vals = [v for v in rec.get("log_ratio") or [] if v is not None]
        if vals and len(out) < 16:
            out.append((rec["particles"], float(np.mean(vals)), f"inside class {c}"))
    return out


def tree_layout(tree: dict) -> Tuple[Dict[str, Tuple[float, float]], int, int]:
    """``({node id: (x = depth, y = row)}, n_leaves, n_levels)``: leaves on consecutive
    rows, a parent centred on its children (root on the left, leaves on the right)."""
    pos: Dict[str, Tuple[float, float]] = {}
    counter = [0]
    depth_max = [0]

    def place(node, depth) -> float:
        depth_max[0] = max(depth_max[0], depth)
        if not node["children"]:
            y = float(counter[0])
            counter[0] += 1
        else:
            y = float(np.mean([place(c, depth + 1) for c in node["children"]]))
        pos[node["id"]] = (float(depth), y)
        return y

    place(tree, 0)
    return pos, max(counter[0], 1), depth_max[0] + 1


def node_label(node: dict) -> str:
    """Three lines: id and size, K=2 stability and resolution, decision."""
    stab = node.get("stability") or {}
    j = stab.get("min_class_jaccard")
    res = node.get("resolution_A")
    second = [] if j is None else [f"J(K=2) {j:.2f}"]
    if res is not None:
        second.append(resolution_text(res, node.get("resolution_status"), html=True))
    chosen = (node.get("verdict") or {}).get("chosen_k")
    third = (f"split into {chosen}" if node["decision"] == "split" and chosen
             else "split" if node["decision"] == "split" else f"leaf: {node.get('reason')}")
    return "\n".join([f"node {node['id']}  ({node['n_particles']} particles)",
                      "  ".join(second) or "-", third])


def fig_tree(tree: dict) -> Figure:
    """The exhaustive splitting tree, root on the left: one box per node (id, size, weakest
    class Jaccard at K=2, resolution, decision or leaf reason), coloured by decision.
    ``tree`` is a node dict of ``tree.json``. Rows grow with the leaves and columns with the
    depth, so the text keeps its size for large trees."""
    pos, n_leaves, n_levels = tree_layout(tree)
    fig = new_figure(min(2.9 * n_levels + 0.4, 12.0), 0.95 * n_leaves + 0.7)
    ax = fig.add_subplot()
    ax.set_xlim(-0.5, n_levels - 0.5)
    ax.set_ylim(n_leaves - 0.5, -0.6)
    ax.axis("off")
    half_w = 0.42

    def draw(node):
        x, y = pos[node["id"]]
        for c in node["children"]:
            cx, cy = pos[c["id"]]
            mid = x + 0.5
            ax.plot([x + half_w, mid, mid, cx - half_w], [y, y, cy, cy], color="grey", lw=1,
                    zorder=1)
            draw(c)
        colour = (_SPLIT_COLOUR if node["decision"] == "split"
                  else _LEAF_COLOURS.get(node.get("reason"), "#e0e0e0"))
        ax.text(x, y, node_label(node), ha="center", va="center", fontsize=8.5, zorder=2,
                linespacing=1.3, bbox=dict(boxstyle="round,pad=0.35", fc=colour, ec="grey"))

    draw(tree)
    ax.set_title("exhaustive splitting tree (green: split; other colours: leaf, by reason)",
                 fontsize=10)
    return fig


# ----- tables ------------------------------------------------------------------------------
def _fmt(v, spec=".3f"):
    return fmt_value(v, spec)


PER_K_COLUMNS = (("K", "k"), ("all stable", "all_stable"), ("empty classes", "empty_classes"),
                 ("min J", "min_class_jaccard"),
                 ("mean J", "mean_class_jaccard"), ("mean ARI", "mean_ari"),
                 ("mean NMI", "mean_nmi"), ("PAC", "pac"),
                 ("particle stab.", "mean_particle_stability"))
CLASS_COLUMNS = (("class", "class_number"), ("particles", "size"), ("fraction", "fraction"),
                 ("J mean", "jaccard_mean"), ("J min", "jaccard_min"), ("band", "band"),
                 ("overlap pass", "random_overlap_pass_fraction"), ("core", "core_size"),
                 ("max post.", "mean_max_posterior"), ("core res.", "core_resolution_A"))
# shown elsewhere or redundant: never extra columns
_NOT_EXTRA = {"core_resolution_status", "half_maps"}


def _cell(record: dict, key: str, html_text: bool = False) -> str:
    value = record.get(key)
    if key == "core_resolution_A" and "core_resolution_status" in record:
        return resolution_text(value, record["core_resolution_status"], html=html_text)
    if isinstance(value, list):                 # class numbers
        return ", ".join(str(v) for v in value) or "none"
    return _fmt(value)


def table_rows(records: Iterable[dict], columns) -> List[List[str]]:
    return [[_cell(r, key) for _, key in columns] for r in records]


def extra_columns(records: Sequence[dict], columns) -> List[Tuple[str, str]]:
    """Scalar fields of ``records`` that ``columns`` does not show (new fields appear)."""
    known = {key for _, key in columns} | _NOT_EXTRA
    extra: List[Tuple[str, str]] = []
    for r in records:
        for key, v in r.items():
            if key not in known and (v is None or isinstance(v, (str, bool, int, float))) \
                    and key not in {k for _, k in extra}:
                extra.append((humanise(key), key))
    return extra


def records_table(records: Sequence[dict], columns, colour_column: Optional[int] = None) -> str:
    """HTML table of ``records``: ``columns`` first, then every further scalar field."""
    cols = list(columns) + extra_columns(records, columns)
    rows = [[_cell(r, key, html_text=True) for _, key in cols] for r in records]
    return html_table([h for h, _ in cols], rows, cell_colours=_BAND_COLOURS,
                      colour_column=colour_column)


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
    parts += [f"  suggestion ({sug['action']}): {sug['why']}"
              for sug in summary.get("suggestions") or []]
    parts += [f"  note: {text}" for text in set_aside_text(summary.get("per_k") or {})]
    cont = summary.get("continuous_particles")
    if cont:
        parts.append(f"continuous part: {cont['n_particles']} particles in {cont['star']} "
                     "(ready for cryoDRGN / 3DVA)")
    return "\n".join(parts)


# what each piece of evidence of the verdict is (hetclass.stability.verdict); a piece not
# listed is shown under its own name
EVIDENCE_TITLES = {
    "stability_vs_k": "How the agreement between replicates changes with K",
    "map_path": "Do the class maps lie on a path (a continuum) or apart?",
    "neighbour_disagreement": "Are disagreements between replicates concentrated between "
                              "neighbouring classes?",
    "posterior_spread": "How confidently particles are assigned",
    "within_class_paths": "Paths inside the classes",
    "split_map_signal": "Do the maps of a K = 2 split differ beyond noise?",
    "map_extrapolation": "Map extrapolation along the path",
    "scan": "K values typed, scanned, and added to look past the recommended K",
    "null": "The calibrated null: simulated one-state data classified like the replicates",
    "heterogeneity_test": "Do the K = 2 class maps differ beyond the null?",
    "distinguishability": "Do the classes of each K differ beyond the null (pairwise; a "
                          "borderline pair is judged by its particles classified again on "
                          "their own, in_k_fit: its figures inside the K-class fit)?",
    "within_class": "Does a class hold more: each class classified again at K = 2",
    "continuity": "Two groups or one spread: each class and its nearest neighbour "
                  "classified again together",
    "suggestions": "Merge and split suggestions",
}
_BULKY = ("distance_matrix",)   # stays in summary.json

FILE_DESCRIPTIONS = {
    "consensus_data.star": "every particle with its consensus class and stability",
    "consensus_class*.mrc": "map of a consensus class (its stable core)",
    "consensus_half*_class*_unfil.mrc": "half-set map of a consensus class",
    "stable_core_class*.star": "the particles of a class's stable core",
    "continuous_particles.star": "particles of the continuous part (for cryoDRGN / 3DVA)",
    "replicate_labels.npz": "every replicate's labels and posteriors",
    "summary.json": "every number of this report (schema: docs/stability.md)",
    "report.html": "this report",
    "leaves_data.star": "every particle with its leaf number",
    "leaves_reassigned_data.star": "every particle with the leaf it was reassigned to "
                                   "(rlnHetclassTreeLeaf: its leaf in the tree)",
    "leaves_reassigned_class*.mrc": "map of a reassigned class, rebuilt from its particles",
    "leaves_reassigned_half*_class*_unfil.mrc": "half-set map of a reassigned class",
    "leaf*_half*_unfil.mrc": "half-set map of a leaf",
    "leaf*.star": "the particles of a leaf",
    "leaf*.mrc": "map of a leaf",
    "tree.json": "the tree with every node's numbers (schema: docs/stability.md)",
    "*.cs": "CryoSPARC particles", "*.csg": "CryoSPARC group file (Import Result Group)",
}


def evidence_section(page: Page, evidence: dict) -> None:
    """One table per piece of evidence, whatever keys it holds."""
    page.heading("Evidence behind the verdict")
    page.paragraph("Each piece of evidence the verdict weighed, with its numbers (the same "
                   "content as the 'evidence' of summary.json, large matrices left out).",
                   "small")
    for key, value in (evidence or {}).items():
        page.heading(EVIDENCE_TITLES.get(key, humanise(key).capitalize()) + f" ({key})", 3)
        if value is None or (isinstance(value, (dict, list)) and not value):
            page.paragraph("not evaluated for this run")
        else:
            page.values(value, skip=_BULKY)


def files_section(page: Page, files: Dict[str, str]) -> None:
    page.heading("Files")
    rows = [[str(path), describe(str(name), FILE_DESCRIPTIONS)] for name, path in files.items()]
    page.table(["file", "what it is"], rows, css_class="kv")


def _warn_failures(what: str, page: Page) -> None:
    if page.failures:
        warnings.warn(failure_line(what, page.failures), HetclassWarning, stacklevel=3)


# ----- pages -------------------------------------------------------------------------------
def write_stability_report(path, summary: dict, result, class_maps: Sequence[np.ndarray],
                           class_fsc: Dict[str, np.ndarray], map_box_px: int,
                           map_pixel_size_A: float) -> None:
    """The stability report: verdict, key tables, every figure, the evidence and the files.

    ``summary`` the content of summary.json; ``result`` the
    :class:`hetclass.stability.analysis.StabilityResult`; ``class_maps`` the consensus
    (stable-core) class maps and ``class_fsc`` their half-map FSC curves (label -> curve)
    at ``map_box_px`` / ``map_pixel_size_A``. A figure that fails is a note on the page and
    one warning line.
    """
    page = Page("hetclass stability report")
    params = summary["parameters"]
    _verdict_section(page, summary)

    page.heading("Stability per K")
    per_k = [summary["per_k"][k] for k in sorted(summary["per_k"], key=int)]
    page.raw(records_table(per_k, PER_K_COLUMNS))
    if len(per_k) > 1:
        page.figure(lambda: fig_stability_vs_k(summary["per_k"]), "stability versus K")

    k = summary["consensus_k"]
    page.heading(f"Classes at K = {k}")
    page.raw(records_table(summary["classes"], CLASS_COLUMNS, colour_column=5))
    scores = result.per_k.get(k)
    run = result.runs.get(k)
    if run is not None and scores is not None:
        used = (scores.extra.get("set_aside") or {}).get("replicates_used")
        labels = [f"r{i}" for i in used] if used else [f"r{i + 1}" for i in range(scores.n_replicates)]
        page.figure(lambda: fig_class_sizes(run.histories, scores.perms, k),
                    "class sizes per iteration")
        page.figure(lambda: fig_matrix(mean_pair_jaccard_matrix(scores.aligned, k),
                                       "class Jaccard between replicates (mean over pairs)"),
                    "Jaccard matrix")
        page.figure(lambda: fig_matrix(scores.ari, "pairwise ARI between replicates",
                                       labels=labels), "ARI matrix")
        page.figure(lambda: fig_matrix(scores.nmi, "pairwise NMI between replicates",
                                       labels=labels), "NMI matrix")
        page.figure(lambda: fig_stability_hist(scores.particle_stability, scores.max_posterior,
                                               k, params.get("core_min_stability"),
                                               scores.n_replicates),
                    "per-particle stability histogram")
    if class_fsc:
        page.figure(lambda: fig_fsc(class_fsc, map_box_px, map_pixel_size_A,
                                    "half-map FSC of the stable-core class maps"), "FSC curves")
    if len(class_maps):
        page.figure(lambda: fig_map_views(class_maps, [f"class {i + 1}"
                                                       for i in range(len(class_maps))]),
                    "slices and projections of the class maps")
    _other_k_section(page, result, k)
    evidence = summary.get("evidence") or {}
    if evidence.get("null"):
        page.heading("Calibrated null")
        page.paragraph("Each test compares a class pair's map difference (log T: squared "
                       "distance of the maps over its noise from the half maps) with K = 2 "
                       "classifications of simulated one-state data of the same particles "
                       "(poses, CTFs, noise); p-values are in summary.json (p_values).", "small")
        page.paragraph(pose_error_text(evidence["null"].get("pose_errors"),
                                       evidence["null"].get("starts_per_classification")),
                       "small")
        page.figure(lambda: fig_null(evidence["null"], null_points(evidence),
                                     "map differences against the null"), "null figure")
    evidence_section(page, evidence)
    files_section(page, summary.get("files", {}))
    page.write(path)
    _warn_failures("report.html", page)


def set_aside_text(per_k: dict) -> List[str]:
    """One sentence per K where a replicate was set aside (:mod:`.set_aside`)."""
    out = []
    for k in sorted(per_k, key=int):
        rec = per_k[k].get("set_aside")
        if not rec:
            continue
        n = len(rec["replicates_used"])
        out.append(f"K = {k}: replicate {rec['replicate']} was set aside; it agrees with the "
                   f"others at mean ARI {rec['mean_ari_to_others']:.2f}, while the other {n} "
                   f"agree at {rec['mean_ari_among_others']:.2f} (each replicate starts once, "
                   "and one start can end in another local optimum). K = "
                   f"{k} is scored on those {n}; with all {n + 1} its weakest class's Jaccard "
                   f"is {_fmt(rec['min_class_jaccard_all_replicates'], '.2f')}.")
    return out


def _verdict_section(page: Page, summary: dict) -> None:
    """The report's head: the verdict, its reasons and suggestions, and the run's facts."""
    params = summary["parameters"]
    page.raw(f"<p class=\"verdict\">Recommended classes: <b>{summary['recommended_classes']}"
             f"</b> &mdash; heterogeneity: <b>{html.escape(summary['heterogeneity'])}</b></p>")
    page.raw("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in summary["reasons"]) + "</ul>")
    for sug in summary.get("suggestions") or []:
        page.paragraph(f"Suggestion ({sug['action']}): {sug['why']}", "note")
    for text in set_aside_text(summary.get("per_k") or {}):
        page.paragraph(text, "note")
    cont = summary.get("continuous_particles")
    if cont:
        page.paragraph(f"Continuous heterogeneity: {cont['n_particles']} particles written to "
                       f"{cont['star']}, ready for cryoDRGN or cryoSPARC 3D variability "
                       "analysis; discrete classes of this part only bin a continuum.", "note")
    facts = {"input": (summary.get("input") or {}).get("particles"),
             "particles": (summary.get("input") or {}).get("n_particles"),
             "K values": ", ".join(str(k) for k in params["k_values"]),
             "replicates per K": params.get("replicates"),
             "subsample": params.get("subsample") or 1.0, "seed": params.get("seed"),
             "stable core: agreement needed": params.get("core_min_stability"),
             "time (s)": sum((summary.get("timings_s") or {}).values()) or None}
    page.values({k: v for k, v in facts.items() if v is not None})


def _other_k_section(page: Page, result, k: int) -> None:
    """Class sizes and Jaccard figures of every K scanned other than ``k``."""
    for kk in sorted(result.runs):
        if kk == k:
            continue
        _k_figures(page, result, kk)


def _k_figures(page: Page, result, kk: int) -> None:
    """Class sizes and Jaccard matrix of the replicates at K = ``kk``."""
    s = result.per_k[kk]
    page.heading(f"K = {kk}", 3)
    page.figure(lambda: fig_class_sizes(result.runs[kk].histories, s.perms, kk),
                f"class sizes K={kk}")
    page.figure(lambda: fig_matrix(mean_pair_jaccard_matrix(s.aligned, kk),
                                   f"K = {kk}: class Jaccard between replicates"),
                f"Jaccard K={kk}")


def _map_test_figure(page: Page, node_id, test: dict) -> None:
    """The FSC between the child maps of one exhaustive node (and of its random splits)."""
    pairs = [p for p in test.get("pairs", []) if "fsc_children" in p]
    if not pairs:
        return
    curves = {}
    for pair in pairs:
        a, b = pair["children"]
        curves[f"child {a} vs {b}"] = np.asarray(pair["fsc_children"])
        if "fsc_null_mean" in pair:
            curves[f"random splits of {a}+{b} (mean)"] = np.asarray(pair["fsc_null_mean"])
    page.figure(lambda: fig_fsc(curves, test["box_px"], test["pixel_size_A"],
                                f"node {node_id}: child maps", threshold=None),
                f"map test {node_id}")


def _node_rows(tree: dict) -> List[dict]:
    """One flat record per node of ``tree`` (depth first) for the node table."""
    out = []

    def walk(node):
        verdict = node.get("verdict") or {}
        test = node.get("map_test") or {}
        pairs = test.get("pairs") or []
        out.append({
            "node": node["id"], "depth": node.get("depth"), "particles": node["n_particles"],
            "J(K=2) weakest": (node.get("stability") or {}).get("min_class_jaccard"),
            "heterogeneity at K=2": verdict.get("heterogeneity_at_k2"),
            "chosen K": verdict.get("chosen_k"),
            "children differ (p)": (None if not pairs else ", ".join(
                _fmt(p.get("p_value"), ".2g") for p in pairs)),
            "decision": node["decision"] if node["decision"] == "split"
            else f"leaf: {node.get('reason')}",
            "resolution": resolution_text(node.get("resolution_A"),
                                          node.get("resolution_status"), html=True),
            "seconds": node.get("seconds")})
        for c in node.get("children") or []:
            walk(c)
    walk(tree)
    return out


def write_exhaustive_report(path, tree_summary: dict, leaf_maps: Sequence[np.ndarray],
                            leaf_names: Sequence[str], map_tests: Dict[str, dict]) -> None:
    """The exhaustive report: the tree picture, the leaf and node tables, map-difference FSC
    curves and slices / projections of the leaf maps."""
    page = Page("hetclass exhaustive splitting report")
    tree = tree_summary["tree"]
    params = tree_summary["parameters"]
    page.raw(f"<p class=\"verdict\">{tree['n_particles']} particles end in "
             f"<b>{len(tree_summary['leaves'])}</b> leaves</p>")
    page.values({"min class size": params.get("min_class_size"),
                 "max depth": params.get("max_depth"),
                 "replicates per node": params.get("replicates"),
                 "K tried at each node": params.get("k_scan"),
                 "null data sets": params.get("null_sets"),
                 "seed": params.get("seed"), "time (s)": params.get("seconds")})
    page.figure(lambda: fig_tree(tree), "splitting tree")
    page.heading("Leaves")
    header = ["leaf", "node", "particles", "reason", "resolution", "star", "map"]
    rows = [[str(i + 1), lf["id"], str(lf["n_particles"]), lf["reason"] or "-",
             resolution_text(lf.get("resolution_A"), lf.get("resolution_status"),
                             html=True), lf.get("star", "-"), lf.get("map", "-")]
            for i, lf in enumerate(tree_summary["leaves"])]
    page.table(header, rows)
    moved = tree_summary.get("reassigned")
    if moved:
        page.paragraph(f"Every particle was classified once more among the leaves (one EM "
                       f"refinement at K = {moved['classes']}, started from the leaves): "
                       f"{moved['particles_moved']} particles "
                       f"({100 * moved['fraction_moved']:.1f} %) changed leaf; sizes "
                       f"{', '.join(str(n) for n in moved['class_sizes'])}, in "
                       f"{moved['star']}, with the maps rebuilt from them "
                       f"({', '.join(moved.get('maps') or []) or 'none'}). Use those for the "
                       "final particle sets and maps; the leaf files and maps above are the "
                       "tree's.", "note")
    page.heading("Nodes")
    page.raw(value_html(_node_rows(tree)))
    null = tree_summary.get("null")
    if null:
        page.paragraph(pose_error_text(null.get("pose_errors"),
                                       null.get("starts_per_classification")), "small")
        points = [(p["particles"], p["log_ratio"], f"node {nid}: {'-'.join(map(str, p['classes']))}")
                  for nid, test in map_tests.items() for p in test.get("pairs", [])
                  if p.get("log_ratio") is not None][:16]
        page.figure(lambda: fig_null(null, points, "node splits against the null"),
                    "null figure")
    for node_id, test in map_tests.items():
        _map_test_figure(page, node_id, test)
    if len(leaf_maps):
        page.figure(lambda: fig_map_views(leaf_maps, leaf_names),
                    "slices and projections of the leaf maps")
    reassigned = moved or {}
    files = {"tree.json": "tree.json", "leaves_data.star": tree_summary.get("leaves_star"),
             "leaves_reassigned_data.star": reassigned.get("star")}
    halves = [h for pair in reassigned.get("half_maps") or [] for h in pair]
    files.update((name, name) for name in list(reassigned.get("maps") or []) + halves)
    for lf in tree_summary["leaves"]:
        for key in ("star", "map"):
            if lf.get(key):
                files[lf[key]] = lf[key]
    files_section(page, {k: v for k, v in files.items() if v})
    page.write(path)
    _warn_failures("report.html", page)
