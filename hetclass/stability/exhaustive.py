"""Recursive splitting until every leaf is a reproducible, distinct class ("exhaustive").

At each node (a set of particles) :func:`explore` runs replicate classifications on the
node's particles for the K of a small scan (default 2, then 3 only if 2 is not
reproducible -- a node holding three states often splits 2 ways differently in different
replicates) and accepts the first K whose split satisfies

1. every child is stable (mean Jaccard >= 0.75) and passes the random-overlap test,
2. each child has at least ``min_class_size`` particles,
3. the children's maps differ beyond chance: for every pair of children, the FSC between
   their maps is compared with the FSC between maps of random splits of the same particles
   with the same sizes (``n_null`` splits); the mean FSC deficit over the shells up to the
   target resolution must exceed ``max(z * sd_null, min_deficit)``.

Otherwise the node is a leaf with a recorded reason: ``"too small"`` (fewer than
``2 * min_class_size`` particles, or a child below the minimum), ``"unstable split"`` (no
K of the scan reproducible), ``"continuous"`` (no K reproducible, yet the K = 2 class maps
differ beyond noise with a better-than-chance split -- structural variability for
cryoDRGN / 3DVA), ``"no significant map difference"``, or ``"max depth"``.

Under MPI the replicates of every node's stability test run concurrently on rank groups
(:func:`hetclass.stability.replicates.split_groups`); the decisions that steer the recursion
(which K is stable, the consensus split, the map test) are broadcast from world rank 0, so
every rank walks the same tree.

Node identifiers are paths: the root is ``"1"``, its children ``"1.1"``, ``"1.2"``, ...
(``.1`` = the largest child). Seeds: node ``"1.2.1"`` uses
``SeedSequence(seed, spawn_key=(2, 1))`` -- independent of the order nodes are visited.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..fsc import fsc as fsc_curve
from .analysis import StabilityResult, prepare_on_groups, run_stability, write_on_root
from .replicates import RankGroups, split_groups
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
    verdict: Optional[dict] = None         # K = 2 verdict, the scan and the chosen K
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


def map_difference_test(prepared, rows: np.ndarray, child_of_row: np.ndarray, k: int,
                        rng: np.random.Generator, n_null: int = 4, z: float = 3.0,
                        min_deficit: float = 0.02, reconstruct: Optional[Callable] = None):
    """Do the children's maps differ more than maps of random splits of the same particles?

    ``rows`` (n,) the node's particles; ``child_of_row`` (n,) child index 0..k-1 (-1 =
    none). For every pair of children (a, b): the FSC between their maps is compared with
    the FSC between the maps of ``n_null`` random splits of a + b into parts of the same
    sizes. FSCs are computed inside the solvent mask; the statistic is the mean over shells
    1..target shell of ``mean_null_fsc - fsc(a, b)``, significant above
    ``max(z * sd_null, min_deficit)``. One reconstruction pass makes every map (column 0 is
    the node's own map from all its particles).

    Returns ``(test dict, ReconResult)``; ``test["significant"]`` requires every pair.
    """
    if reconstruct is None:
        from ..engine import reconstruct
    n = rows.size
    cols = [np.ones(n)]
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    layout = []
    for a, b in pairs:
        start = len(cols)
        cols += [(child_of_row == a).astype(float), (child_of_row == b).astype(float)]
        members = np.flatnonzero((child_of_row == a) | (child_of_row == b))
        n_a = int(np.sum(child_of_row == a))
        for _ in range(n_null):
            perm = rng.permutation(members)
            w = np.zeros(n)
            w[perm[:n_a]] = 1.0
            other = np.zeros(n)
            other[perm[n_a:]] = 1.0
            cols += [w, other]
        layout.append(start)
    rec = reconstruct(prepared, np.stack(cols, axis=1), rows=rows)
    mask = prepared.solvent_mask
    last = int(prepared.data.plan.target_shell)
    shells = slice(1, last + 1)

    def pair_fsc(i, j):
        return fsc_curve(rec.maps[i] * mask, rec.maps[j] * mask)

    results = []
    for (a, b), start in zip(pairs, layout):
        children = pair_fsc(start, start + 1)
        nulls = np.array([pair_fsc(start + 2 + 2 * t, start + 3 + 2 * t) for t in range(n_null)])
        null_mean = nulls.mean(axis=0)
        deficit = float(np.mean(null_mean[shells] - children[shells]))
        null_stats = np.mean(nulls[:, shells], axis=1)
        spread = float(np.std(null_stats, ddof=1)) if n_null > 1 else 0.0
        threshold = max(z * spread, min_deficit)
        results.append({"children": [a + 1, b + 1],
                        "fsc_children": np.round(children, 4).tolist(),
                        "fsc_null_mean": np.round(null_mean, 4).tolist(),
                        "mean_fsc_deficit": round(deficit, 4), "null_sd": round(spread, 4),
                        "threshold": round(threshold, 4), "significant": bool(deficit > threshold)})
    test = {"k": int(k), "pairs": results, "shells_used": [1, last], "n_null": int(n_null),
            "significant": all(r["significant"] for r in results),
            "pixel_size_A": float(prepared.pixel_size_A),
            "box_px": int(prepared.data.plan.crop_box_px)}
    return test, rec


def _node_map(node: Node, rec, column: int = 0) -> None:
    node.map = np.asarray(rec.maps[column], dtype=np.float32)
    node.half_maps = np.asarray(rec.half_maps[:, column], dtype=np.float32)
    node.fsc = np.asarray(rec.fsc[column])
    node.resolution_A = float(rec.resolution_A[column])


def _validate_tree_args(min_class_size: int, max_depth: int, k_scan: Sequence[int]) -> List[int]:
    if min_class_size < 1:
        raise InputError("must be >= 1", field="--min-class-size", value=min_class_size)
    if max_depth < 0:
        raise InputError("must be >= 0", field="--max-depth", value=max_depth)
    k_scan = sorted(set(int(k) for k in k_scan))
    if 2 not in k_scan:
        raise InputError("the K scan at each node must include 2", field="--k-scan", value=k_scan)
    return k_scan


def explore(prepared, options, rows: Optional[Sequence[int]] = None, min_class_size: int = 1000,
            max_depth: int = 3, n_replicates: int = 5, seed: int = 0,
            subsample: Optional[float] = None, k_scan: Sequence[int] = (2, 3),
            n_null: int = 4, workers: Optional[int] = None,
            thresholds: Thresholds = Thresholds(), progress: Optional[Callable] = None,
            abort_check: Optional[Callable] = None, node_id: str = "1", depth: int = 0,
            reconstruct: Optional[Callable] = None, fit: Optional[Callable] = None,
            groups: Optional[RankGroups] = None) -> Node:
    """Split ``rows`` (default all prepared particles) recursively; returns the root node.

    ``k_scan`` the K values tried at each node, smallest first; the first reproducible one
    is used (2 must be among them).
    ``progress`` receives the replicate events, ``("node_start", id, n_particles, tasks)``
    before a node's replicates and ``("node", id, n_particles, decision, reason)`` when a
    node is decided. ``fit``/``reconstruct`` replace the
    engine's functions (tests). ``groups`` (MPI): rank groups for the replicates; every
    rank calls this and returns the same tree.
    """
    if reconstruct is None:
        from ..engine import reconstruct
    k_scan = _validate_tree_args(min_class_size, max_depth, k_scan)
    mpi = groups is not None and groups.is_mpi
    agree = groups.world.bcast_obj if mpi else (lambda value: value)   # rank 0 decides
    if mpi and not groups.world.is_root:
        progress = None
    rows = np.arange(prepared.data.n_total) if rows is None else np.asarray(rows, dtype=np.int64)
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
    if progress is not None:   # the replicates that follow belong to this node
        progress("node_start", id=node_id, n_particles=node.n_particles, tasks=n_replicates)

    scan = {}
    chosen = None
    first_verdict = None
    for k in k_scan:
        if k > rows.size:
            break
        result: StabilityResult = run_stability(
            prepared, options, [k], n_replicates=n_replicates, seed=seq, subsample=subsample,
            rows=rows, workers=workers, thresholds=thresholds, progress=progress,
            abort_check=abort_check, fit=fit, groups=groups)
        sk = agree(result.per_k[k])
        scan[k] = sk
        if first_verdict is None:
            first_verdict = result.verdict
            node.stability = sk.to_dict()
        if sk.all_stable:
            chosen = k
            break
    v = first_verdict
    node.verdict = {"heterogeneity_at_k2": v.heterogeneity, "reasons": v.reasons,
                    "chosen_k": chosen,
                    "scan": {str(k): {"all_stable": sk.all_stable,
                                      "min_class_jaccard": round(sk.min_class_jaccard, 4)}
                             for k, sk in scan.items()}}
    if chosen is None:
        return finish("leaf", "continuous" if v.heterogeneity == "continuous" else "unstable split")
    consensus = scan[chosen].consensus         # class 0 = largest child
    sizes = [int(np.sum(consensus == c)) for c in range(chosen)]
    if min(sizes) < min_class_size:
        return finish("leaf", "too small")
    test, rec = map_difference_test(prepared, rows, consensus, chosen, rng, n_null=n_null,
                                    reconstruct=reconstruct)
    test = agree(test)            # groups reconstruct with different shardings
    test["child_sizes"] = sizes
    node.map_test = test
    if not test["significant"]:
        return finish("leaf", "no significant map difference", rec)
    finish("split", None, rec)
    for c in range(chosen):
        child_rows = rows[consensus == c]
        node.children.append(explore(
            prepared, options, child_rows, min_class_size, max_depth, n_replicates, seed,
            subsample, k_scan, n_null, workers, thresholds, progress, abort_check,
            node_id=f"{node_id}.{c + 1}", depth=depth + 1, reconstruct=reconstruct, fit=fit,
            groups=groups))
    node.seconds = time.perf_counter() - t0
    return node


def exhaustive_job(particles, options, out_dir: str, min_class_size: int = 1000,
                   max_depth: int = 3, n_replicates: int = 5, subsample: Optional[float] = None,
                   k_scan: Sequence[int] = (2, 3), n_null: int = 4, workers: Optional[int] = None,
                   particles_path: Optional[str] = None, progress: Optional[Callable] = None,
                   abort_check: Optional[Callable] = None, comm=None):
    """Everything ``hetclass exhaustive`` does after parsing: prepare once, explore, write.

    Returns ``(tree summary dict, root Node)``; the root seed is ``options.seed``. Under MPI
    (``comm``; every rank calls this) the replicates run on rank groups and rank 0 writes
    (the other ranks return None for the summary).
    """
    from dataclasses import replace

    from .outputs import write_exhaustive_outputs
    from .replicates import validate_replicate_args

    validate_replicate_args(n_replicates, subsample)
    k_scan = _validate_tree_args(min_class_size, max_depth, k_scan)   # before any heavy work
    options = replace(options, classes=max(k_scan))
    groups = split_groups(comm, n_replicates) if comm is not None and comm.is_mpi else None
    t0 = time.perf_counter()
    prepared = prepare_on_groups(particles, options, groups, progress, abort_check)
    root = explore(prepared, options, None, min_class_size, max_depth, n_replicates,
                   options.seed, subsample, k_scan, n_null, workers, progress=progress,
                   abort_check=abort_check, groups=groups)
    params = {"min_class_size": int(min_class_size), "max_depth": int(max_depth),
              "replicates": int(n_replicates), "subsample": subsample,
              "k_scan": k_scan, "n_null": int(n_null),
              "seed": int(options.seed), "seconds": round(time.perf_counter() - t0, 2)}
    summary = write_on_root(groups, prepared, lambda rec: write_exhaustive_outputs(
        out_dir, particles, prepared, root, options, params, particles_path=particles_path))
    return summary, root
