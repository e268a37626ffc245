"""Key plots of a hetclass run, drawn headless (``matplotlib.figure.Figure``, no pyplot).

:func:`plot_data` gathers what a protocol produced (class sizes, resolutions, per-class
Jaccard, per-particle stability, the exhaustive-splitting tree) from its Scipion outputs and
``extra/`` files; :func:`summary_figure` draws it; :func:`save_summary` writes a PNG.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np


def plot_data(prot) -> Dict[str, object]:
    """Arrays to plot from a finished hetclass protocol (missing items are None).

    ``class_ids`` (K,), ``class_sizes`` (K,), ``resolution_A`` (K,), ``jaccard`` (K,) or None,
    ``stability`` (n,) per-particle stability or None, ``tree`` list of
    ``{"id": "1.2", "size": int, "leaf": bool, "reason": str}`` or None.
    """
    classes = getattr(prot, "outputClasses", None)
    ids, sizes, res, jac, stab = [], [], [], [], []
    if classes is not None:
        for cls in classes.iterItems(orderBy="id"):
            ids.append(int(cls.getObjId()))
            sizes.append(int(cls.getSize()))
            r = getattr(cls, "_hetclassResolution", None)
            res.append(float(r.get()) if r is not None and r.get() is not None else np.nan)
            j = getattr(cls, "_hetclassJaccard", None)
            jac.append(float(j.get()) if j is not None and j.get() is not None else np.nan)
        for cls in classes.iterItems(orderBy="id"):
            for p in cls.iterItems():
                s = getattr(p, "_hetclassStability", None)
                if s is None:
                    break
                stab.append(float(s.get()))
    tree = getattr(prot, "treeNodes", None)
    tree = tree() if callable(tree) else None
    return {
        "class_ids": np.asarray(ids, dtype=np.int64),
        "class_sizes": np.asarray(sizes, dtype=np.int64),
        "resolution_A": np.asarray(res, dtype=np.float64),
        "jaccard": np.asarray(jac) if jac and np.isfinite(jac).any() else None,
        "stability": np.asarray(stab) if stab else None,
        "tree": tree or None,
    }


def _tree_layout(nodes: List[dict]):
    """x, y positions of tree nodes (ids like "1", "1.1", "1.2.1"): leaves spread on x."""
    ids = sorted((n["id"] for n in nodes), key=lambda s: [int(t) for t in s.split(".")])
    children: Dict[str, List[str]] = {i: [] for i in ids}
    for i in ids:
        parent = i.rpartition(".")[0]
        if parent in children:
            children[parent].append(i)
    pos: Dict[str, tuple] = {}
    next_x = [0.0]

    def place(node: str, depth: int) -> float:
        kids = children[node]
        if not kids:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            x = float(np.mean([place(k, depth + 1) for k in kids]))
        pos[node] = (x, -depth)
        return x

    for root in (i for i in ids if i.rpartition(".")[0] not in children):
        place(root, 0)
    return pos, children


def summary_figure(class_ids, class_sizes, resolution_A=None, jaccard=None,
                   stability=None, tree: Optional[List[dict]] = None, title: str = ""):
    """A Figure with up to four panels: class sizes (+ resolution), per-class Jaccard,
    per-particle stability histogram, exhaustive-splitting tree."""
    from matplotlib.figure import Figure

    panels = ["sizes"] + (["jaccard"] if jaccard is not None else []) \
        + (["stability"] if stability is not None else []) + (["tree"] if tree else [])
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    labels = [str(i) for i in class_ids]
    x = np.arange(len(labels))
    for ax, panel in zip(axes, panels):
        if panel == "sizes":
            bars = ax.bar(x, class_sizes, color="tab:blue")
            ax.set_xticks(x, labels)
            ax.set_xlabel("class")
            ax.set_ylabel("particles")
            ax.set_title("class sizes")
            if resolution_A is not None:
                for bar, res in zip(bars, resolution_A):
                    if np.isfinite(res):
                        ax.annotate(f"{res:.1f} A", (bar.get_x() + bar.get_width() / 2,
                                                     bar.get_height()),
                                    ha="center", va="bottom", fontsize=8)
        elif panel == "jaccard":
            ax.bar(x, jaccard, color="tab:green")
            ax.set_xticks(x, labels)
            ax.axhline(0.75, color="k", ls="--", lw=0.8)
            ax.set_ylim(0, 1)
            ax.set_xlabel("class")
            ax.set_ylabel("mean Jaccard over replicate pairs")
            ax.set_title("class reproducibility")
        elif panel == "stability":
            ax.hist(np.asarray(stability)[np.isfinite(stability)], bins=20, range=(0, 1),
                    color="tab:orange")
            ax.set_xlabel("particle stability")
            ax.set_ylabel("particles")
            ax.set_title("per-particle stability")
        else:
            pos, children = _tree_layout(tree)
            size = {n["id"]: n.get("size", 0) for n in tree}
            for node, kids in children.items():
                for kid in kids:
                    ax.plot([pos[node][0], pos[kid][0]], [pos[node][1], pos[kid][1]], "k-",
                            lw=0.8)
            for node, (x, y) in pos.items():
                ax.plot(x, y, "o", color="tab:purple")
                ax.annotate(f"{node}\n{size.get(node, '')}", (x, y), fontsize=7,
                            ha="center", va="top", xytext=(0, -4), textcoords="offset points")
            ax.set_axis_off()
            ax.set_title("exhaustive splitting")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_summary(prot, path: str) -> str:
    """Draw :func:`summary_figure` for ``prot`` into the PNG ``path`` (atomically)."""
    data = plot_data(prot)
    fig = summary_figure(data["class_ids"], data["class_sizes"], data["resolution_A"],
                         data["jaccard"], data["stability"], data["tree"],
                         title=prot.getObjLabel() if hasattr(prot, "getObjLabel") else "")
    tmp = os.path.join(os.path.dirname(path) or ".", f".tmp{os.getpid()}-{os.path.basename(path)}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
