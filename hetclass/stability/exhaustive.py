"""Recursive splitting until every leaf is a reproducible, distinct class ("exhaustive").

At each node (a set of particles) replicate classifications of the node's particles are run
for the K of a small scan (default 2, then 3 only if 2 is not reproducible -- a node holding
three states often splits two ways differently in different replicates); the first K whose
split satisfies all of the following is accepted:

1. every child is stable (mean Jaccard >= 0.75) and passes the random-overlap test;
2. the children differ beyond the null: for every pair, ``log T`` of their maps against the
   null at the pair's size (:mod:`.null`, :mod:`.distinguish`; one null for the whole
   tree, classified at several sizes), p < alpha; at K >= 3 a borderline pair is judged by
   its particles classified again on their own (:meth:`_Tree.confirm`);
3. each child holds at least the minimum class size: ``--min-class-size N``, or by default
   the particles a map needs to resolve the children's difference (:func:`particles_needed`:
   from the one-state map's FSC, the signal per particle at the children's difference
   resolution; at least :data:`MIN_CLASS_FLOOR`).

Otherwise the node is a leaf with a recorded reason: ``"too small"`` (not tried: too few
particles for two children of the parent's minimum; or a child below the minimum),
``"unstable split"`` (no K of the scan reproducible), ``"continuous"`` (no K reproducible,
yet the K = 2 maps differ beyond the null), ``"no significant map difference"``, or
``"max depth"``.

**Futile splits stop early.** The first :data:`FIRST_REPLICATES` replicates of a K run
first; when their split is already worse than chance (weakest-class Jaccard below
``1 / (2K - 1)``, two random partitions) or clearly within the null (both replicates' map
statistics below the null's median), the remaining replicates are not run.

**Work.** The data are prepared once; a node's classifications run on a view of its
particles (:func:`.views.subset_view`: cost in proportion to the node). The tree grows level
by level: the classifications of every open node of a level run at the same time (threads,
or MPI rank groups, :func:`.tasks.run_tasks`), and finished ones are kept for ``--continue``.

Node identifiers are paths: the root is ``"1"``, its children ``"1.1"``, ``"1.2"``, ...
(``.1`` = the largest child). Seeds: node ``"1.2.1"`` uses the named stream
``("node", 2, 1)`` of the run's seed; its replicate r ``("replicate", r)`` of that --
independent of the order nodes are visited and of the rank grouping.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import seeds
from ..errors import InputError
from .class_tests import confirm_pairs, pairwise_tests
from .null import NULL_SETS, run_null
from .replicates import (
    RankGroups,
    assemble_run,
    is_root_rank,
    replicate_seeds,
    split_groups,
    subsample_rows,
    validate_replicate_args,
)
from .scores import score_replicates
from .set_aside import score_setting_aside
from .tasks import compact
from .verdict import Thresholds

REASONS = ("too small", "unstable split", "continuous", "no significant map difference",
           "max depth")
FIRST_REPLICATES = 2          # run first; the others only when the split is not futile
NULL_FUTILE = "within the null"
MIN_CLASS_FLOOR = 100         # the derived minimum class size is never below this
NULL_FRACTIONS = (0.25, 0.0625)   # null classifications at n, n/4 and n/16 particles


@dataclass
class Node:
    """One node of the splitting tree (``rows`` index the prepared particles)."""

    node_id: str
    depth: int
    rows: np.ndarray
    decision: str = "leaf"                 # "split" | "leaf"
    reason: Optional[str] = None           # one of REASONS for a leaf
    note: Optional[str] = None             # why, in words
    stability: Optional[dict] = None       # K = 2 scores (KScores.to_dict())
    verdict: Optional[dict] = None         # the scan, the chosen K, replicates run
    map_test: Optional[dict] = None        # distinguishability of the children
    min_class_size: Optional[dict] = None  # the minimum children must reach, and why
    resolution_A: Optional[float] = None   # the node's own map (all its particles)
    resolution_status: Optional[str] = None  # hetclass.fsc.RESOLUTION_* of resolution_A
    map: Optional[np.ndarray] = None       # (b, b, b) float32
    half_maps: Optional[np.ndarray] = None  # (2, b, b, b)
    fsc: Optional[np.ndarray] = None       # (n_shells,) half-map FSC of the node map
    children: List["Node"] = field(default_factory=list)
    seconds: float = 0.0
    labels: Optional[np.ndarray] = None    # (n,) consensus child of each row when split
    null: object = None                    # the root's NullRun (the null of the whole tree)

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
                "decision": self.decision, "reason": self.reason, "note": self.note,
                "resolution_A": None if self.resolution_A is None else round(self.resolution_A, 2),
                "resolution_status": self.resolution_status,
                "stability": self.stability, "verdict": self.verdict,
                "map_test": self.map_test, "min_class_size": self.min_class_size,
                "seconds": round(self.seconds, 2),
                "children": [c.to_dict() for c in self.children]}


def node_seed(seed, node_id: str) -> np.random.SeedSequence:
    """Seed of a node: the named stream ``("node", *path)`` (path = the id after the
    leading 1)."""
    path = tuple(int(p) for p in node_id.split(".")[1:])
    return seeds.stream(seed, "node", *path)


def particles_needed(model, resolution_A: float, pixel_size_A: float, box_px: int) -> int:
    """Particles a map needs for its half maps to correlate above 0.143 at ``resolution_A``,
    from the signal per particle of the one-state ``model`` (its FSC of ``n_particles``):
    ``SSNR_1(s) = 2 FSC / ((1 - FSC) n)``; ``m`` particles give half maps of SSNR
    ``m SSNR_1 / 2``, FSC 0.143 at SSNR 1/6."""
    if model is None or model.fsc is None or not np.isfinite(resolution_A) or resolution_A <= 0:
        return MIN_CLASS_FLOOR
    fsc = np.asarray(model.fsc, dtype=np.float64)
    shell = int(round(box_px * pixel_size_A / resolution_A))
    shell = int(np.clip(shell, 1, fsc.size - 1))
    f = float(np.clip(fsc[shell], 1e-3, 0.999))
    ssnr1 = 2.0 * f / ((1.0 - f) * max(model.n_particles, 1))
    return int(max(MIN_CLASS_FLOOR, np.ceil((1.0 / 3.0) / ssnr1)))


def difference_resolution_A(results: Sequence) -> float:
    """Median over replicates and classes of the engine's difference resolution (the
    resolution to which the class deviations from the consensus reproduce between half
    sets) at the last iteration; NaN when none is recorded."""
    vals = []
    for res in results:
        stats = getattr(res, "stats", None) or []
        last = stats[-1] if stats else {}
        vals += [v for v in (last.get("difference_resolution_A") or []) if v is not None]
    return float(np.median(vals)) if vals else float("nan")


def _validate_tree_args(min_class_size, max_depth: int, k_scan: Sequence[int]) -> List[int]:
    if min_class_size is not None and (not isinstance(min_class_size, (int, np.integer))
                                       or min_class_size < 1):
        raise InputError("must be an integer >= 1, or auto", field="--min-class-size",
                         value=min_class_size)
    if max_depth < 0:
        raise InputError("must be >= 0", field="--max-depth", value=max_depth)
    k_scan = sorted(set(int(k) for k in k_scan))
    if 2 not in k_scan:
        raise InputError("the K scan at each node must include 2", field="--k-scan", value=k_scan)
    return k_scan


@dataclass
class _Plan:
    """What a node's replicates need: its view, rows and seeds."""

    node: Node
    seed: np.random.SeedSequence
    keep: List[np.ndarray]
    children_seeds: list
    view: object = None


class _Tree:
    """The state of one exhaustive run (see :func:`explore`)."""

    def __init__(self, prepared, options, min_class_size, max_depth, n_replicates, seed,
                 subsample, k_scan, workers, thresholds, progress, abort_check, reconstruct,
                 fit, groups, cache, null):
        self.prepared, self.options = prepared, options
        self.min_class_size, self.max_depth = min_class_size, max_depth
        self.n_replicates, self.seed, self.subsample = n_replicates, seed, subsample
        self.k_scan, self.workers, self.th = k_scan, workers, thresholds
        self.progress, self.abort_check = progress, abort_check
        self.reconstruct, self.fit, self.groups, self.cache = reconstruct, fit, groups, cache
        self.null = null
        self.null_model = None if null is None else null.null_model
        self.root_rank = is_root_rank(groups)
        self.views: Dict[str, object] = {}
        self.lock = threading.Lock()
        self.use_views = fit is None          # a stand-in engine (tests) classifies rows

    def say(self, event, **info):
        if self.progress is not None and self.root_rank:
            self.progress(event, **info)

    # ----- tasks ---------------------------------------------------------------------------
    def view(self, plan: _Plan):
        from .views import subset_view
        if plan.node.rows.size == self.prepared.data.n_total or not self.use_views:
            return self.prepared
        with self.lock:
            if plan.node.node_id not in self.views:
                self.views[plan.node.node_id] = subset_view(self.prepared, plan.node.rows,
                                                            device=self.options.device)
            return self.views[plan.node.node_id]

    def run_replicates(self, plans: Dict[str, _Plan], k: int, replicates: Sequence[int]):
        """Replicates ``replicates`` at K = ``k`` of every planned node, all at once."""
        from .tasks import run_tasks
        keys = {f"n{nid}_k{k}_r{r}": (nid, r) for nid in plans for r in replicates}
        if not keys:
            return {}
        fit = self.fit
        if fit is None:
            from ..engine import fit

        def one(key, check):
            nid, r = keys[key]
            plan = plans[nid]
            view = self.view(plan)
            rows = plan.keep[r]
            if view is self.prepared:            # the whole data, or a stand-in engine
                rows = plan.node.rows[rows]
            elif rows.size == plan.node.rows.size:
                rows = None
            return compact(fit(view, replace(self.options, classes=k), seed=plan.children_seeds[r],
                               rows=rows, abort_check=check))

        def done(key, seconds, loaded):
            nid, r = keys[key]
            self.say("replicate", k=k, replicate=r, done=1, total=1, seconds=seconds,
                     node=nid, loaded=loaded)

        out = run_tasks(list(keys), one, self.workers, self.groups, self.cache, done,
                        self.abort_check)
        return {keys[key]: value for key, value in out.items()}

    # ----- one level ---------------------------------------------------------------------
    def level(self, nodes: List[Node], parent_minimum: Dict[str, int]) -> List[Node]:
        """Decide every node of one level; returns the next level's nodes."""
        t0 = time.perf_counter()
        plans: Dict[str, _Plan] = {}
        for node in nodes:
            need = parent_minimum.get(node.node_id)
            if node.depth >= self.max_depth:
                self.leaf(node, "max depth", "the deepest level asked for")
            elif need is not None and node.n_particles < 2 * need:
                self.leaf(node, "too small", f"not tried: {node.n_particles} particles, two "
                          f"children need at least {need} each")
            else:
                seq = node_seed(self.seed, node.node_id)
                keep = [subsample_rows(seq, r, node.n_particles, self.subsample)
                        for r in range(self.n_replicates)]
                plans[node.node_id] = _Plan(node, seq, keep,
                                            replicate_seeds(seq, self.n_replicates))
                self.say("node_start", id=node.node_id, n_particles=node.n_particles,
                         tasks=self.n_replicates)
        results: Dict[str, Dict[int, dict]] = {nid: {} for nid in plans}
        pending = dict(plans)
        chosen: Dict[str, int] = {}
        for k in self.k_scan:
            pending = {nid: p for nid, p in pending.items() if k < p.node.n_particles}
            if not pending:
                break
            first = range(min(FIRST_REPLICATES, self.n_replicates))
            got = self.run_replicates(pending, k, first)
            futile = {nid: self.futility(k, [got[(nid, r)][0] for r in first])
                      for nid in pending}
            rest = {nid: p for nid, p in pending.items() if futile[nid] is None}
            got.update(self.run_replicates(rest, k, range(len(first), self.n_replicates)))
            for nid, plan in pending.items():
                reps = [got[(nid, r)] for r in range(self.n_replicates) if (nid, r) in got]
                results[nid][k] = self.score(plan, k, reps, futile[nid])
                if results[nid][k]["accepted"]:
                    chosen[nid] = k
            pending = {nid: p for nid, p in pending.items() if nid not in chosen}
        nxt: List[Node] = []
        for nid, plan in plans.items():
            nxt += self.decide(plan, results[nid], chosen.get(nid), parent_minimum)
        self.views.clear()
        for node in nodes:
            node.seconds = time.perf_counter() - t0
        return nxt

    def futility(self, k: int, first: Sequence) -> Optional[str]:
        """Why the first replicates already show the split is futile, or None."""
        from scipy.optimize import linear_sum_assignment

        from .distinguish import split_log_ratio
        from .scores import jaccard_matrix
        if len(first) < 2:
            return None
        jm = jaccard_matrix(first[0].labels, first[1].labels, k, k)
        rr, cc = linear_sum_assignment(np.nan_to_num(jm), maximize=True)
        weakest = float(np.nanmin(jm[rr, cc]))
        if weakest < 1.0 / (2 * k - 1):
            return (f"the first {len(first)} replicates agree less than chance (weakest-class "
                    f"Jaccard {weakest:.2f} < {1.0 / (2 * k - 1):.2f})")
        if k == 2 and self.null_model is not None and self.null_model.usable:
            n = float(np.mean([np.sum(np.asarray(r.labels) >= 0) for r in first]))
            mean, _, _ = self.null_model.predict(n)
            vals = [split_log_ratio(r, self.prepared.solvent_mask, self.null_model.aligned)
                    for r in first]
            if all(np.isfinite(v) and v < mean for v in vals):
                return (f"{NULL_FUTILE}: the first {len(first)} replicates' maps differ less "
                        f"than the null's median at {int(n)} particles")
        return None

    def score(self, plan: _Plan, k: int, reps: list, futile: Optional[str]) -> dict:
        n = plan.node.n_particles
        run = assemble_run(k, np.arange(n), [plan.keep[r] for r in range(len(reps))], reps,
                           self.subsample)
        def scored(some, stream: str):
            return score_replicates(some.labels, k, posteriors=list(some.posteriors),
                                    rng=seeds.rng(plan.seed, stream, k))
        scores = scored(run, "analysis")
        if futile is None:
            run, scores = score_setting_aside(run, scores, lambda others: scored(others, "set_aside"))
        test = pairwise_tests(run, scores, self.null_model, self.prepared.solvent_mask,
                              self.th.alpha)
        stable = scores.all_stable and futile is None
        if stable and test["all_distinguishable"]:
            test = self.confirm(plan, scores.consensus, test)
        distinct = test["all_distinguishable"] is not False
        diff_res = difference_resolution_A([res for res, _ in reps])
        return {"k": k, "scores": scores, "run": run, "test": test, "futile": futile,
                "stable": stable, "distinct": distinct, "accepted": stable and distinct,
                "difference_resolution_A": diff_res, "replicates_run": len(reps)}

    def confirm(self, plan: _Plan, consensus: np.ndarray, test: dict) -> dict:
        """``test`` with a K >= 3 split's borderline pairs judged by their particles
        classified again on their own at K = 2, from the consensus boundary, as the
        stability scan does (:func:`.class_tests.pairs_to_confirm`): inside a K-class fit
        a pair's statistic is inflated against the null's K = 2 fits."""
        from .tasks import run_tasks
        prefix = f"n{plan.node.node_id}_"

        def run(keys, one):
            out = run_tasks([prefix + key for key in keys],
                            lambda key, check: one(key[len(prefix):], check), self.workers,
                            self.groups, self.cache, None, self.abort_check)
            return {key[len(prefix):]: value for key, value in out.items()}

        return confirm_pairs(self.prepared, self.options, test, consensus, plan.node.rows,
                             plan.seed, run, self.null_model, self.prepared.solvent_mask,
                             self.fit)

    # ----- decisions -------------------------------------------------------------------------
    def leaf(self, node: Node, reason: str, note: str, rec=None) -> None:
        node.decision, node.reason, node.note = "leaf", reason, note
        self.node_map(node, rec)
        self.say("node", id=node.node_id, n_particles=node.n_particles, decision="leaf",
                 reason=reason)

    def node_map(self, node: Node, rec=None, column: int = 0) -> None:
        if rec is None:
            rec = self.reconstruct(self.prepared, np.ones((node.rows.size, 1)), rows=node.rows)
        node.map = np.asarray(rec.maps[column], dtype=np.float32)
        node.half_maps = np.asarray(rec.half_maps[:, column], dtype=np.float32)
        node.fsc = np.asarray(rec.fsc[column])
        node.resolution_A = float(rec.resolution_A[column])
        status = getattr(rec, "resolution_status", None)
        node.resolution_status = status[column] if status else None

    def decide(self, plan: _Plan, results: Dict[int, dict], chosen: Optional[int],
               parent_minimum: Dict[str, int]) -> List[Node]:
        node = plan.node
        first = results.get(min(results)) if results else None
        if first is None:
            self.leaf(node, "too small", "fewer particles than classes")
            return []
        node.stability = first["scores"].to_dict()
        node.verdict = {"chosen_k": chosen, "scan": {
            str(k): {"all_stable": r["scores"].all_stable,
                     "min_class_jaccard": round(float(r["scores"].min_class_jaccard), 4),
                     "distinguishable": r["test"]["all_distinguishable"],
                     "replicates_run": r["replicates_run"], "futile": r["futile"],
                     "set_aside": (r["scores"].extra.get("set_aside") or {}).get("replicate")}
            for k, r in results.items()}}
        node.map_test = dict(first["test"]) if chosen is None else dict(results[chosen]["test"])
        if chosen is None:
            return self.unsplit(node, first)
        res = results[chosen]
        consensus = res["scores"].consensus
        sizes = [int(np.sum(consensus == c)) for c in range(chosen)]
        need = self.minimum(res["difference_resolution_A"])
        node.min_class_size = need
        node.map_test["child_sizes"] = sizes
        if min(sizes) < need["particles"]:
            self.leaf(node, "too small", f"a reproducible, distinct split into {sizes} "
                      f"particles, but a class needs {need['particles']} ({need['why']})")
            return []
        node.decision, node.labels = "split", consensus
        node.map_test["significant"] = True
        self.node_map(node)
        self.say("node", id=node.node_id, n_particles=node.n_particles, decision="split",
                 reason=None)
        for c in range(chosen):
            child = Node(f"{node.node_id}.{c + 1}", node.depth + 1, node.rows[consensus == c])
            node.children.append(child)
            parent_minimum[child.node_id] = need["particles"]
        return list(node.children)

    def unsplit(self, node: Node, first: dict) -> List[Node]:
        test = first["test"]
        beyond = bool(test["pairs"]) and test["all_distinguishable"] is True
        if (first["futile"] or "").startswith(NULL_FUTILE):
            self.leaf(node, "no significant map difference", first["futile"])
        elif first["stable"]:
            self.leaf(node, "no significant map difference",
                      "a reproducible split whose maps differ no more than in the null")
        elif beyond:
            self.leaf(node, "continuous", "no reproducible split, yet the K=2 maps differ "
                      "beyond the null: structural variability for a continuous analysis")
        else:
            why = first["futile"] or "no K of the scan gives stable classes"
            self.leaf(node, "unstable split", why)
        return []

    def minimum(self, diff_res_A: float) -> dict:
        if self.min_class_size is not None:
            return {"particles": int(self.min_class_size), "why": "--min-class-size"}
        plan = self.prepared.data.plan
        model = None if self.null is None else self.null.model
        m = particles_needed(model, diff_res_A, plan.crop_pixel_size_A, plan.crop_box_px)
        return {"particles": m, "difference_resolution_A": None if not np.isfinite(diff_res_A)
                else round(diff_res_A, 1),
                "why": f"particles a map needs to resolve {diff_res_A:.1f} A, where the "
                       "children differ" if np.isfinite(diff_res_A) else "floor"}


def explore(prepared, options, rows: Optional[Sequence[int]] = None,
            min_class_size: Optional[int] = None, max_depth: int = 3, n_replicates: int = 5,
            seed=0, subsample: Optional[float] = None, k_scan: Sequence[int] = (2, 3),
            null_sets: int = NULL_SETS, workers: Optional[int] = None,
            thresholds: Thresholds = Thresholds(), progress: Optional[Callable] = None,
            abort_check: Optional[Callable] = None, reconstruct: Optional[Callable] = None,
            fit: Optional[Callable] = None, groups: Optional[RankGroups] = None,
            cache=None, null_run=None) -> Node:
    """Split ``rows`` (default all prepared particles) recursively; returns the root node.

    ``min_class_size`` None derives it from the data (module docstring). ``k_scan`` the K
    values tried at each node, smallest first (2 must be among them). ``null_sets`` null
    data sets (0: no null; every stable split is then taken as distinct). ``progress``
    receives the replicate events (with ``node``), ``("node_start", id, n_particles,
    tasks)`` and ``("node", id, n_particles, decision, reason)``. ``fit``/``reconstruct``
    replace the engine's functions (tests). ``groups`` (MPI): rank groups; every rank calls
    this and returns the same tree. ``cache`` keeps finished classifications. ``null_run``
    a null computed elsewhere (:class:`.null.NullRun`; tests), used instead of running one.
    """
    if reconstruct is None:
        from ..engine import reconstruct
    k_scan = _validate_tree_args(min_class_size, max_depth, k_scan)
    all_rows: np.ndarray = (np.arange(prepared.data.n_total) if rows is None
                            else np.asarray(rows, dtype=np.int64))
    null = null_run
    if null is None and null_sets > 0:
        from .tasks import run_tasks

        def run(keys, one):
            return run_tasks(keys, one, workers, groups, cache, None, abort_check)
        if progress is not None and is_root_rank(groups):
            progress("message", text=f"null: {null_sets} simulated one-state data sets")
        null = run_null(prepared, options, all_rows, seed, null_sets, subsample, run=run,
                        fit=fit, fractions=NULL_FRACTIONS)
    tree = _Tree(prepared, options, min_class_size, max_depth, n_replicates, seed, subsample,
                 k_scan, workers, thresholds, progress, abort_check, reconstruct, fit, groups,
                 cache, null)
    root = Node("1", 0, all_rows)
    level: List[Node] = [root]
    minimum: Dict[str, int] = {}
    while level:
        level = tree.level(level, minimum)
    root.null = null
    return root


def exhaustive_job(particles, options, out_dir: str, min_class_size: Optional[int] = None,
                   max_depth: int = 3, n_replicates: int = 5, subsample: Optional[float] = None,
                   k_scan: Sequence[int] = (2, 3), null_sets: int = NULL_SETS,
                   workers: Optional[int] = None, particles_path: Optional[str] = None,
                   progress: Optional[Callable] = None, abort_check: Optional[Callable] = None,
                   comm=None, resume: bool = False):
    """Everything ``hetclass exhaustive`` does after parsing: prepare once, explore, write.

    Returns ``(tree summary dict, root Node)``; the root seed is ``options.seed``. Holds the
    lock of ``out_dir``; finished classifications are kept in ``out_dir/work`` until the
    outputs are written (``resume``: ``--continue``). Under MPI (``comm``; every rank calls
    this) the classifications of a level's nodes run on rank groups and rank 0 writes (the
    other ranks return None for the summary).
    """
    from ..io.lock import lock_output
    from .analysis import REPLICATE_STARTS, prepare_on_groups, validate_null_sets, work_identity, write_on_root
    from .outputs import write_exhaustive_outputs
    from .tasks import WorkCache

    validate_replicate_args(n_replicates, subsample)
    k_scan = _validate_tree_args(min_class_size, max_depth, k_scan)   # before any heavy work
    validate_null_sets(null_sets)
    options = replace(options, classes=max(k_scan), n_init=REPLICATE_STARTS)
    groups = split_groups(comm, max(n_replicates, 2 * null_sets)) \
        if comm is not None and comm.is_mpi else None
    with lock_output(out_dir, comm, "hetclass exhaustive"):
        cache = WorkCache(out_dir, work_identity("exhaustive", particles, options, subsample),
                          resume, writer=comm is None or comm.is_root)
        t0 = time.perf_counter()
        prepared = prepare_on_groups(particles, options, groups, progress, abort_check)
        root = explore(prepared, options, None, min_class_size, max_depth, n_replicates,
                       options.seed, subsample, k_scan, null_sets, workers, progress=progress,
                       abort_check=abort_check, groups=groups, cache=cache)
        reassigned = _reassign(prepared, options, root, workers, groups, cache, progress,
                               abort_check)
        params = {"min_class_size": "auto" if min_class_size is None else int(min_class_size),
                  "max_depth": int(max_depth), "replicates": int(n_replicates),
                  "subsample": subsample, "k_scan": k_scan, "null_sets": int(null_sets),
                  "seed": int(options.seed), "seconds": round(time.perf_counter() - t0, 2)}
        summary = write_on_root(groups, prepared, lambda rec: write_exhaustive_outputs(
            out_dir, particles, prepared, root, options, params, particles_path=particles_path,
            reassigned=reassigned))
        cache.remove()
    return summary, root


def _reassign(prepared, options, root: Node, workers, groups, cache, progress, abort_check):
    """:func:`.reassign.reassign_leaves` on the finished tree (None with one leaf)."""
    from .reassign import reassign_leaves
    from .tasks import run_tasks
    leaves = root.leaves()
    if len(leaves) < 2:
        return None
    if progress is not None and is_root_rank(groups):
        progress("message", text=f"every particle classified once more among the "
                                 f"{len(leaves)} leaves (K = {len(leaves)}, from the leaves)")
    return reassign_leaves(prepared, options, [leaf.rows for leaf in leaves], options.seed,
                           run=lambda keys, one: run_tasks(keys, one, workers, groups, cache,
                                                           None, abort_check))
