"""Recursive splitting until every leaf is a reproducible, distinct class ("exhaustive").

At each node (a set of particles) :func:`explore` runs replicate classifications with
K = 2 (or a small K scan) on the node's particles and accepts the split only if

1. both children are stable (mean Jaccard >= 0.75) and pass the random-overlap test,
2. each child has at least ``min_class_size`` particles,
3. the children's maps differ beyond chance: the FSC between the two child maps is
   compared with the FSC between maps of random splits of the node with the same sizes
   (``n_null`` splits); the mean FSC deficit over the shells up to the target resolution
   must exceed ``max(z * sd_null, min_deficit)``.

Otherwise the node is a leaf with a recorded reason: ``"too small"`` (fewer than
``2 * min_class_size`` particles, or a child below the minimum), ``"unstable split"``,
``"continuous"`` (the split is not reproducible, yet the class maps differ beyond noise or
lie on a path -- continuous heterogeneity, for cryoDRGN / 3DVA), ``"no significant map
difference"``, or ``"max depth"``.

Node identifiers are paths: the root is ``"1"``, its children ``"1.1"`` and ``"1.2"``
(``.1`` = the larger child). Seeds: node ``"1.2.1"`` uses
``SeedSequence(seed, spawn_key=(2, 1))`` -- independent of the order nodes are visited.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..fsc import fsc as fsc_curve
from .analysis import StabilityResult, run_stability
from .verdict import Thresholds

REASONS = ("too small", "unstable split", "continuous", "no significant map difference",
           "max depth")


@dataclass
class Node:
    """One node of the splitting tree (``rows`` index the prepared particles)."""

    node_id: str
    depth: int
    rows: np.ndarray
    decision: str = "leaf"                 # "split" | "leaf"
    reason: Optional[str] = None           # one of REASONS for a leaf
    stability: Optional[dict] = None       # K = 2 scores (KScores.to_dict())
    verdict: Optional[dict] = None         # heterogeneity verdict of the node's scan
    map_test: Optional[dict] = None
    resolution_A: Optional[float] = None   # the node's own map (all its particles)
    map: Optional[np.ndarray] = None       # (b, b, b) float32
    half_maps: Optional[np.ndarray] = None  # (2, b, b, b)
    fsc: Optional[np.ndarray] = None       # (n_shells,) half-map FSC of the node map
    children: List["Node"] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_particles(self) -> int:
        return int(self.rows.size)

    def leaves(self) -> List["Node"]:
        if not self.children:
            return [self]
        return [leaf for c in self.children for leaf in c.leaves()]

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def to_dict(self) -> dict:
        """JSON-ready node (no arrays); schema in docs/stability.md."""
        return {"id": self.node_id, "depth": self.depth, "n_particles": self.n_particles,
                "decision": self.decision, "reason": self.reason,
                "resolution_A": None if self.resolution_A is None else round(self.resolution_A, 2),
                "stability": self.stability, "verdict": self.verdict,
                "map_test": self.map_test, "seconds": round(self.seconds, 2),
                "children": [c.to_dict() for c in self.children]}


def node_seed(seed: int, node_id: str) -> np.random.SeedSequence:
    """Seed of a node: the root seed with the node's path (after the leading 1) as spawn key."""
    path = tuple(int(p) for p in node_id.split(".")[1:])
    return np.random.SeedSequence(int(seed), spawn_key=path)


def map_difference_test(prepared, rows: np.ndarray, child_of_row: np.ndarray,
                        rng: np.random.Generator, n_null: int = 4, z: float = 3.0,
                        min_deficit: float = 0.02, reconstruct: Optional[Callable] = None):
    """Do the two children's maps differ more than maps of random splits of the node?

    ``rows`` (n,) the node's particles; ``child_of_row`` (n,) 0/1. One reconstruction pass
    makes the node map (column 0), the two child maps and ``n_null`` random splits of the
    same sizes. FSCs are computed inside the solvent mask; the statistic is the mean over
    shells 1..target shell of ``mean_null_fsc - fsc(children)``.

    Returns ``(test dict, node ReconResult column 0 values)`` where the dict holds the
    curves, the deficit, the null spread, the threshold and ``significant``.
    """
    if reconstruct is None:
        from ..engine import reconstruct
    n = rows.size
    n1 = int(np.sum(child_of_row == 0))
    cols = [np.ones(n), (child_of_row == 0).astype(float), (child_of_row == 1).astype(float)]
    for _ in range(n_null):
        perm = rng.permutation(n)
        w = np.zeros(n)
        w[perm[:n1]] = 1.0
        cols += [w, 1.0 - w]
    rec = reconstruct(prepared, np.stack(cols, axis=1), rows=rows)
    mask = prepared.solvent_mask
    last = int(prepared.data.plan.target_shell)

    def pair(i, j):
        return fsc_curve(rec.maps[i] * mask, rec.maps[j] * mask)

    children = pair(1, 2)
    nulls = np.array([pair(3 + 2 * t, 4 + 2 * t) for t in range(n_null)])
    shells = slice(1, last + 1)
    null_mean = nulls.mean(axis=0)
    deficit = float(np.mean(null_mean[shells] - children[shells]))
    null_stats = np.mean(nulls[:, shells], axis=1)
    spread = float(np.std(null_stats, ddof=1)) if n_null > 1 else 0.0
    threshold = max(z * spread, min_deficit)
    test = {"fsc_children": np.round(children, 4).tolist(),
            "fsc_null_mean": np.round(null_mean, 4).tolist(),
            "shells_used": [1, last], "mean_fsc_deficit": round(deficit, 4),
            "null_sd": round(spread, 4), "threshold": round(threshold, 4),
            "n_null": n_null, "significant": bool(deficit > threshold),
            "pixel_size_A": float(prepared.pixel_size_A),
            "box_px": int(prepared.data.plan.crop_box_px)}
    return test, rec


def _node_map(node: Node, rec, column: int = 0) -> None:
    node.map = np.asarray(rec.maps[column], dtype=np.float32)
    node.half_maps = np.asarray(rec.half_maps[:, column], dtype=np.float32)
    node.fsc = np.asarray(rec.fsc[column])
    node.resolution_A = float(rec.resolution_A[column])


def explore(prepared, options, rows: Optional[Sequence[int]] = None, min_class_size: int = 1000,
            max_depth: int = 3, n_replicates: int = 5, seed: int = 0,
            subsample: Optional[float] = None, k_scan: Sequence[int] = (2,),
            n_null: int = 4, workers: Optional[int] = None,
            thresholds: Thresholds = Thresholds(), progress: Optional[Callable] = None,
            abort_check: Optional[Callable] = None, node_id: str = "1", depth: int = 0,
            reconstruct: Optional[Callable] = None, fit: Optional[Callable] = None) -> Node:
    """Split ``rows`` (default all prepared particles) recursively; returns the root node.

    ``k_scan`` the K values tried at each node (2 must be among them; a scan such as
    (2, 3) also lets a stable 2-way split of a continuum be called "continuous").
    ``progress`` receives the replicate events plus ``("node", id, n_particles,
    decision, reason)`` when a node is decided. ``fit``/``reconstruct`` replace the
    engine's functions (tests).
    """
    if reconstruct is None:
        from ..engine import reconstruct
    if min_class_size < 1:
        raise InputError("must be >= 1", field="--min-class-size", value=min_class_size)
    if max_depth < 0:
        raise InputError("must be >= 0", field="--max-depth", value=max_depth)
    k_scan = sorted(set(int(k) for k in k_scan))
    if 2 not in k_scan:
        raise InputError("the K scan at each node must include 2", field="--k-scan", value=k_scan)
    rows = np.arange(len(prepared.data)) if rows is None else np.asarray(rows, dtype=np.int64)
    t0 = time.perf_counter()
    node = Node(node_id=node_id, depth=depth, rows=rows)
    seq = node_seed(seed, node_id)
    rng = np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=seq.spawn_key + (2 ** 30,)))

    def finish(decision, reason=None, rec=None):
        node.decision, node.reason = decision, reason
        if rec is None:
            rec = reconstruct(prepared, np.ones((rows.size, 1)), rows=rows)
        _node_map(node, rec)
        node.seconds = time.perf_counter() - t0
        if progress is not None:
            progress("node", id=node_id, n_particles=node.n_particles, decision=decision,
                     reason=reason)
        return node

    if rows.size < 2 * min_class_size:
        return finish("leaf", "too small")
    if depth >= max_depth:
        return finish("leaf", "max depth")

    result: StabilityResult = run_stability(
        prepared, options, [k for k in k_scan if k <= rows.size], n_replicates=n_replicates,
        seed=seq, subsample=subsample, rows=rows, workers=workers, thresholds=thresholds,
        progress=progress, abort_check=abort_check, fit=fit)
    s2 = result.per_k[2]
    node.stability = s2.to_dict()
    v = result.verdict
    node.verdict = {"recommended_k": v.recommended_k, "heterogeneity": v.heterogeneity,
                    "reasons": v.reasons}
    if not s2.all_stable:
        return finish("leaf", "continuous" if v.heterogeneity == "continuous" else "unstable split")
    if v.heterogeneity == "continuous":
        return finish("leaf", "continuous")
    consensus = s2.consensus                   # class 0 = larger child
    sizes = [int(np.sum(consensus == c)) for c in range(2)]
    if min(sizes) < min_class_size:
        return finish("leaf", "too small")
    test, rec = map_difference_test(prepared, rows, consensus, rng, n_null=n_null,
                                    reconstruct=reconstruct)
    test["child_sizes"] = sizes
    node.map_test = test
    if not test["significant"]:
        return finish("leaf", "no significant map difference", rec)
    finish("split", None, rec)
    for c in range(2):
        child_rows = rows[consensus == c]
        node.children.append(explore(
            prepared, options, child_rows, min_class_size, max_depth, n_replicates, seed,
            subsample, k_scan, n_null, workers, thresholds, progress, abort_check,
            node_id=f"{node_id}.{c + 1}", depth=depth + 1, reconstruct=reconstruct, fit=fit))
    node.seconds = time.perf_counter() - t0
    return node


def exhaustive_job(particles, options, out_dir: str, min_class_size: int = 1000,
                   max_depth: int = 3, n_replicates: int = 5, subsample: Optional[float] = None,
                   k_scan: Sequence[int] = (2,), n_null: int = 4, workers: Optional[int] = None,
                   particles_path: Optional[str] = None, progress: Optional[Callable] = None,
                   abort_check: Optional[Callable] = None):
    """Everything ``hetclass exhaustive`` does after parsing: prepare once, explore, write.

    Returns ``(tree summary dict, root Node)``; the root seed is ``options.seed``.
    """
    from dataclasses import replace

    from .. import engine
    from .outputs import write_exhaustive_outputs
    from .replicates import validate_replicate_args

    validate_replicate_args(n_replicates, subsample)
    options = replace(options, classes=max(max(k_scan), 2))
    t0 = time.perf_counter()
    prepared = engine.prepare(particles, options, progress=progress, abort_check=abort_check)
    root = explore(prepared, options, None, min_class_size, max_depth, n_replicates,
                   options.seed, subsample, k_scan, n_null, workers, progress=progress,
                   abort_check=abort_check)
    params = {"min_class_size": int(min_class_size), "max_depth": int(max_depth),
              "replicates": int(n_replicates), "subsample": subsample,
              "k_scan": sorted(set(int(k) for k in k_scan)), "n_null": int(n_null),
              "seed": int(options.seed), "seconds": round(time.perf_counter() - t0, 2)}
    summary = write_exhaustive_outputs(out_dir, particles, prepared, root, options, params,
                                       particles_path=particles_path)
    return summary, root
