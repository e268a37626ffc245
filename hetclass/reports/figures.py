"""Figures shared by the reports (matplotlib object API only; see :mod:`.page`).

Every function takes plain arrays and returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from .page import new_figure

MAX_MAP_ROWS = 16    # map views show at most this many maps (the rest: see the MRC files)


def class_colour(j: int) -> str:
    return f"C{j % 10}"


def fig_iterations(stats: Sequence[dict], title: str = "",
                   convergence_pct: Optional[float] = None) -> Figure:
    """Class fractions (left) and % of particles changing class (right) per EM iteration.

    ``stats`` the engine's per-iteration dicts (``iteration``, ``class_fractions``,
    ``changed_pct``); ``convergence_pct`` draws the stopping threshold.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
    fig = new_figure(9.0, 3.3)
    ax, ax2 = fig.subplots(1, 2)
    it = [s.get("iteration", i + 1) for i, s in enumerate(stats)]
    fr = np.array([s["class_fractions"] for s in stats], dtype=float)
    for j in range(fr.shape[1] if fr.ndim == 2 else 0):
        ax.plot(it, fr[:, j], "o-", ms=3, color=class_colour(j), label=f"class {j + 1}")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("fraction of particles")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "class sizes per iteration", fontsize=10)
    if fr.ndim == 2 and fr.shape[1] <= 12:
        ax.legend(fontsize=7, ncol=min(fr.shape[1], 4))
    changed = np.array([max(float(s.get("changed_pct", np.nan)), 1e-3) for s in stats])
    ax2.semilogy(it, changed, "o-", ms=3, color="k")
    ax2.set_xlabel("EM iteration")
    ax2.set_ylabel("% of particles changing class")
    ax2.set_title("changes per iteration (convergence)", fontsize=10)
    if convergence_pct:
        ax2.axhline(convergence_pct, color="grey", ls="--", lw=0.8)
        ax2.text(it[0] if it else 0, convergence_pct, f"stop below {convergence_pct:g} %",
                 fontsize=7, va="bottom", color="grey")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.yaxis.set_minor_formatter(NullFormatter())
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def fig_posterior_hist(max_posterior: np.ndarray, labels: np.ndarray, k: int) -> Figure:
    """Histogram of each particle's largest class probability, stacked by assigned class.

    ``max_posterior`` (n,) in [0, 1]; ``labels`` (n,) 0-based. Values near 1 are confident
    assignments; values near 1/K mean the particle fits several classes equally.
    """
    fig = new_figure(6.0, 3.3)
    ax = fig.add_subplot()
    lo = 1.0 / max(k, 1)
    bins = np.linspace(min(lo, float(np.min(max_posterior))) if max_posterior.size else 0, 1, 26)
    groups = [max_posterior[labels == j] for j in range(k)]
    ax.hist(groups, bins=bins, stacked=True, color=[class_colour(j) for j in range(k)],
            label=[f"class {j + 1}" for j in range(k)], edgecolor="white", linewidth=0.4)
    ax.axvline(lo, color="grey", ls="--", lw=0.8)
    top = float(np.mean(max_posterior >= bins[-2])) if max_posterior.size else 0.0
    if top > 0.8:        # most particles in the last bin: a log scale shows the rest
        ax.set_yscale("log")
    ax.text(lo, ax.get_ylim()[1] * 0.9, f" 1/K = {lo:.2f}", fontsize=7, va="top")
    ax.set_xlabel("largest class probability of a particle (rlnMaxValueProbDistribution)")
    ax.set_ylabel("particles" + (" (log scale)" if top > 0.8 else ""))
    ax.set_title(f"how confidently each particle is assigned ({top:.0%} above "
                 f"{bins[-2]:.2f})", fontsize=10)
    if k <= 12:
        ax.legend(fontsize=7)
    return fig


def fig_fsc(curves: Dict[str, np.ndarray], box_px: int, pixel_size_A: float,
            title: str = "FSC", threshold: Optional[float] = 0.143,
            limit_A: Optional[float] = None) -> Figure:
    """FSC curves against spatial frequency, with a resolution (A) axis on top.

    ``curves`` label -> (n_shells,) with shell i at frequency i / (box_px * pixel_size_A);
    ``limit_A`` draws the data's resolution limit (the crop limit) as a vertical line.
    """
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    size_A = box_px * pixel_size_A
    for i, (label, c) in enumerate(curves.items()):
        c = np.asarray(c, dtype=float)
        ax.plot(np.arange(c.size) / size_A, c, color=class_colour(i), label=label)
    if threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
        ax.text(0, threshold, f" {threshold}", fontsize=7, va="bottom", color="grey")
    if limit_A:
        ax.axvline(1.0 / limit_A, color="#b35806", lw=1.0, ls=":")
        ax.text(1.0 / limit_A, 0.98, f" crop limit\n {limit_A:.1f} Å", fontsize=7, va="top",
                color="#b35806")
    ax.set_ylim(-0.1, 1.02)
    f_max = (max(len(c) for c in curves.values()) - 1) / size_A if curves else 0.5 / pixel_size_A
    ax.set_xlim(0, max(f_max, 1e-6))
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    _resolution_axis(ax, f_max)
    ax.set_title(title, fontsize=10)
    if len(curves) <= 12:
        ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def _resolution_axis(ax, f_max: float) -> None:
    """Resolution (Å) labels on top of a frequency axis running from 0 to ``f_max`` (1/A)."""
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    nice_A = [100, 50, 30, 20, 15, 12, 10, 8, 7, 6, 5, 4, 3.5, 3, 2.5, 2, 1.5]
    ticks = [r for r in nice_A if 1.0 / r <= f_max * 1.001]
    while len(ticks) > 8:                     # keep the labels apart
        ticks = ticks[::2]
    top.set_xticks([1.0 / r for r in ticks], [f"{r:g}" for r in ticks], fontsize=7)
    top.set_xlabel("resolution (Å)", fontsize=8)


def fig_map_views(maps: Sequence[np.ndarray], names: Sequence[str],
                  projections: bool = True) -> Figure:
    """Per map (row): central z, y and x slices, and (``projections``) the sums along z, y
    and x. ``maps`` (b, b, b) arrays indexed [z, y, x]; each panel is scaled on its own."""
    maps = list(maps)[:MAX_MAP_ROWS]
    n = max(len(maps), 1)
    ncol = 6 if projections else 3
    fig = new_figure(1.7 * ncol, 1.75 * n + 0.4)
    titles = ["slice z", "slice y", "slice x", "projection z", "projection y", "projection x"]
    for i, (m, name) in enumerate(zip(maps, names)):
        m = np.asarray(m, dtype=float)
        c = m.shape[0] // 2
        panels = [m[c], m[:, c], m[:, :, c]]
        if projections:
            panels += [m.sum(0), m.sum(1), m.sum(2)]
        for j, img in enumerate(panels):
            ax = fig.add_subplot(n, ncol, ncol * i + j + 1)
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return fig


def fig_confusion(counts: np.ndarray, row_names: Sequence[str], col_names: Sequence[str],
                  title: str) -> Figure:
    """Heat map of a count table, coloured by the fraction of each row, counts written in."""
    counts = np.asarray(counts, dtype=float)
    frac = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n0, n1 = counts.shape
    fig = new_figure(1.0 + 0.9 * n1, 0.8 + 0.55 * n0)
    ax = fig.add_subplot()
    im = ax.imshow(frac, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for i in range(n0):
        for j in range(n1):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=9,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(n1), list(col_names), fontsize=8)
    ax.set_yticks(range(n0), list(row_names), fontsize=8)
    ax.set_xlabel("hetclass class")
    ax.set_ylabel("true state")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true state")
    return fig
