"""Replicate classifications through the engine: one ``prepare()``, many ``fit()``.

Randomness (:mod:`hetclass.seeds`, nothing is ever spawned): replicate r is seeded by the
named stream ``("replicate", r)`` of the run's seed (the same for every K of a scan, so
replicate r of K=2 and of K=3 see the same particle subset) and draws its subset from
``("subsample", r)`` (``subsample``, clusterboot-style: each replicate classifies a random
fraction of the particles, and agreement is scored on the particles present in both
replicates). Results therefore depend neither on the order tasks run in nor on how MPI
ranks are grouped.

Replicates run concurrently in a thread pool: the engine's heavy NumPy/SciPy array work
releases the GIL and the per-dataset :class:`hetclass.engine.PreparedData` (images,
operators) is shared read-only, so threads scale without copying the data.

Under MPI (:mod:`hetclass.comm`) the world's P ranks are split into G = min(P, tasks) rank
groups (:func:`split_groups`); each group prepares the data once (its ranks shard the
particles) and runs the replicates r with r mod G = its group index (``(k, r)`` tasks of a
K scan likewise), then every replicate's result is gathered on every rank. Replicate r
always uses seed child r, so labels equal those of a single process with the same seed.

Example::

    prepared = engine.prepare(particles, options)
    run = run_replicates(prepared, options, k=3, n_replicates=5, seed=0, subsample=0.8)
    run.labels          # (5, n) int, -1 where a particle was left out of a replicate
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import seeds
from ..comm import SerialComm
from ..errors import InputError
from .tasks import TaskResult, compact, run_tasks

SeedLike = seeds.SeedLike


@dataclass
class ReplicateRun:
    """R replicate classifications with the same K.

    ``rows`` (n,) the particle indices (into the prepared data) the run covers; every
    per-particle array below is indexed like ``rows``. ``labels`` (R, n) int 0-based, -1
    where a particle was not in the replicate's subsample; ``posteriors`` (R, n, K) float32,
    0 where absent; ``maps`` (R, K, b, b, b) float32 class maps at the engine's cropped
    box and ``pixel_size_A``; ``half_maps`` (R, 2, K, b, b, b) float32; ``fsc`` (R, K, n_shells);
    ``resolution_A`` (R, K); ``histories`` per replicate the engine's per-iteration statistics (class fractions,
    changed %, ...); ``seconds`` (R,) wall time of each fit.
    """

    k: int
    rows: np.ndarray
    labels: np.ndarray
    posteriors: np.ndarray
    maps: np.ndarray
    half_maps: np.ndarray
    fsc: np.ndarray
    resolution_A: np.ndarray
    histories: List[List[dict]]
    seconds: np.ndarray
    pixel_size_A: float
    subsample: Optional[float]

    @property
    def n_replicates(self) -> int:
        return int(self.labels.shape[0])


def replicate_seeds(seed: SeedLike, n_replicates: int) -> List[np.random.SeedSequence]:
    """The seeds of replicates 0..R-1: the named streams ``("replicate", r)`` of ``seed``."""
    root = seeds.root(seed)
    return [seeds.stream(root, "replicate", r) for r in range(n_replicates)]


def analysis_seed(seed: SeedLike) -> np.random.SeedSequence:
    """Stream for the analysis (PAC pair sampling), apart from every replicate."""
    return seeds.stream(seeds.root(seed), "analysis")


def subsample_rows(seed: SeedLike, replicate: int, n: int,
                   fraction: Optional[float]) -> np.ndarray:
    """Sorted positions (into 0..n-1) kept by ``replicate``: ``round(fraction * n)`` drawn
    without replacement from the stream ``("subsample", replicate)``, or all when
    ``fraction`` is None or 1."""
    if fraction is None or fraction >= 1.0:
        return np.arange(n)
    rng = seeds.rng(seeds.root(seed), "subsample", replicate)
    m = max(2, int(round(fraction * n)))
    return np.sort(rng.choice(n, size=min(m, n), replace=False))


def validate_replicate_args(n_replicates: int, subsample: Optional[float]) -> None:
    if not isinstance(n_replicates, (int, np.integer)) or n_replicates < 2:
        raise InputError("stability needs at least 2 replicates", field="--replicates",
                         value=n_replicates)
    if subsample is not None and not (0.0 < subsample <= 1.0):
        raise InputError("must be a fraction in (0, 1]", field="--subsample", value=subsample)


@dataclass
class RankGroups:
    """The MPI world split into ``count`` rank groups that run replicates concurrently.

    ``world`` the run's communicator; ``group`` this rank's group communicator (a
    :class:`hetclass.comm.SerialComm` for a one-rank group, so its replicates may use the
    thread pool); ``index`` this rank's group (0..count-1; world rank 0 is in group 0).
    """

    world: SerialComm
    group: SerialComm
    index: int
    count: int

    @property
    def is_mpi(self) -> bool:
        return bool(getattr(self.world, "is_mpi", False))


def is_root_rank(groups: Optional[RankGroups]) -> bool:
    """Whether this process reports and writes for the run: always without MPI (``groups``
    None or one process), world rank 0 with it."""
    return groups is None or not groups.is_mpi or bool(groups.world.is_root)


def split_groups(world, n_tasks: int) -> RankGroups:
    """Split ``world`` (collective) into G = min(P, ``n_tasks``) groups of contiguous ranks
    whose sizes differ by at most one."""
    count = int(max(1, min(world.size, n_tasks)))
    index = world.rank * count // world.size
    group = world.split(index) if count > 1 else world
    if group.size == 1 and getattr(group, "is_mpi", False):
        group = SerialComm()
    return RankGroups(world=world, group=group, index=index, count=count)


def replicate_key(k: int, r: int) -> str:
    """Task key of replicate ``r`` at K = ``k`` (:mod:`hetclass.stability.tasks`)."""
    return f"k{int(k)}_r{int(r)}"


def run_replicate_tasks(prepared, options, tasks: Sequence[Tuple[int, int]], rows: np.ndarray,
                        keep: Sequence[np.ndarray], children, workers: Optional[int] = None,
                        progress: Optional[Callable] = None,
                        abort_check: Optional[Callable] = None, fit: Optional[Callable] = None,
                        groups: Optional[RankGroups] = None, cache=None
                        ) -> Dict[Tuple[int, int], TaskResult]:
    """Fit every ``(k, r)`` task on ``rows[keep[r]]`` with seed ``children[r]``.

    Returns ``{(k, r): (result, seconds)}`` for every task, on every rank
    (:func:`hetclass.stability.tasks.run_tasks`: a thread pool of ``workers`` without MPI,
    rank groups with it; finished tasks are taken from ``cache``, a
    :class:`~hetclass.stability.tasks.WorkCache`). Errors of any group are raised on every
    rank.
    """
    if fit is None:
        from ..engine import fit
    tasks = [(int(k), int(r)) for k, r in tasks]
    by_key = {replicate_key(k, r): (k, r) for k, r in tasks}
    lock = threading.Lock()
    finished: List[Tuple[int, int]] = []
    root = is_root_rank(groups)

    def report(event, **info):
        if progress is not None and root:
            progress(event, **info)

    def one(key, check):
        k, r = by_key[key]
        opts = replace(options, classes=k)

        def forward(event, **info):
            with lock:
                report(event, replicate=r, k=k, **info)
        return compact(fit(prepared, opts, seed=children[r], rows=rows[keep[r]],
                           progress=forward if progress is not None else None,
                           abort_check=check))

    def on_done(key, seconds, loaded):
        k, r = by_key[key]
        finished.append((k, r))
        report("replicate", k=k, replicate=r, done=sum(1 for kk, _ in finished if kk == k),
               total=sum(1 for kk, _ in tasks if kk == k), seconds=seconds, loaded=loaded)

    results = run_tasks(list(by_key), one, workers, groups, cache, on_done, abort_check)
    return {by_key[key]: value for key, value in results.items()}


def assemble_run(k: int, rows: np.ndarray, keep: Sequence[np.ndarray],
                 results: Sequence[TaskResult],
                 subsample: Optional[float]) -> ReplicateRun:
    """One :class:`ReplicateRun` from the R replicate results of one K (in replicate order)."""
    n_replicates, n = len(results), rows.size
    labels = np.full((n_replicates, n), -1, dtype=np.int64)
    post = np.zeros((n_replicates, n, k), dtype=np.float32)
    for r, (res, _) in enumerate(results):
        labels[r, keep[r]] = np.asarray(res.labels, dtype=np.int64)
        post[r, keep[r]] = np.asarray(res.posteriors, dtype=np.float32)
    first = results[0][0]
    return ReplicateRun(
        k=int(k), rows=rows, labels=labels, posteriors=post,
        maps=np.stack([np.asarray(res.maps, dtype=np.float32) for res, _ in results]),
        half_maps=np.stack([np.asarray(res.half_maps, dtype=np.float32) for res, _ in results]),
        fsc=np.stack([np.asarray(res.fsc) for res, _ in results]),
        resolution_A=np.stack([np.asarray(res.resolution_A, dtype=np.float64) for res, _ in results]),
        histories=[list(res.stats) for res, _ in results],
        seconds=np.array([s for _, s in results]), pixel_size_A=float(first.pixel_size_A),
        subsample=subsample)


def replicate_plan(prepared, k_values: Sequence[int], n_replicates: int, seed: SeedLike,
                   subsample: Optional[float], rows: Optional[Sequence[int]]):
    """``(rows, children, keep)``: the run's particles, seed children and per-replicate
    subsets; InputError when a K does not fit the particles."""
    validate_replicate_args(n_replicates, subsample)
    n_total = prepared.data.n_total
    base = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64)
    n = base.size
    for k in k_values:
        if k < 1 or k > n:
            raise InputError(f"number of classes must be between 1 and the {n} particles",
                             field="--classes", value=k)
    children = replicate_seeds(seed, n_replicates)
    keep = [subsample_rows(seed, r, n, subsample) for r in range(n_replicates)]
    return base, children, keep


def run_replicates(prepared, options, k: int, n_replicates: int = 5, seed: SeedLike = 0,
                   subsample: Optional[float] = None, rows: Optional[Sequence[int]] = None,
                   workers: Optional[int] = None, progress: Optional[Callable] = None,
                   abort_check: Optional[Callable] = None, fit: Optional[Callable] = None,
                   groups: Optional[RankGroups] = None, cache=None) -> ReplicateRun:
    """Classify ``rows`` (default every particle) ``n_replicates`` times with K = ``k``.

    ``prepared`` comes from :func:`hetclass.engine.prepare` (done once per dataset;
    under MPI with ``groups.group`` as its communicator);
    ``options`` a :class:`hetclass.pipeline.ClassifyOptions` (its ``classes`` is replaced by
    ``k`` and its ``seed`` by the replicate seeds). ``progress`` receives the engine's
    events with ``replicate`` and ``k`` added, plus ``("replicate", k, replicate, done,
    total, seconds)`` when a replicate finishes; calls are serialised by a lock (under MPI
    only world rank 0 reports).
    ``abort_check`` is polled by every replicate; the first :class:`AbortRequested` stops
    the others at their next check and is re-raised. ``fit`` overrides the engine's
    ``fit`` (tests). ``groups`` (:func:`split_groups`) spreads the replicates over MPI rank
    groups; every rank returns the full run.
    """
    return run_replicate_scan(prepared, options, [k], n_replicates, seed, subsample, rows,
                              workers, progress, abort_check, fit, groups, cache)[int(k)]


def run_replicate_scan(prepared, options, k_values: Sequence[int], n_replicates: int = 5,
                       seed: SeedLike = 0, subsample: Optional[float] = None,
                       rows: Optional[Sequence[int]] = None, workers: Optional[int] = None,
                       progress: Optional[Callable] = None,
                       abort_check: Optional[Callable] = None, fit: Optional[Callable] = None,
                       groups: Optional[RankGroups] = None,
                       cache=None) -> Dict[int, ReplicateRun]:
    """:func:`run_replicates` for every K of ``k_values`` at once: ``{k: ReplicateRun}``.

    All ``(k, replicate)`` fits are one task list (spread over the rank groups together
    under MPI); replicate r of every K uses seed child r and the same particle subset. The
    largest K run first: they take longest, so the workers finish together instead of one
    finishing the last large-K fits alone (results do not depend on the order).
    """
    ks = [int(k) for k in k_values]
    base, children, keep = replicate_plan(prepared, ks, n_replicates, seed, subsample, rows)
    tasks = [(k, r) for k in sorted(ks, reverse=True) for r in range(n_replicates)]
    results = run_replicate_tasks(prepared, options, tasks, base, keep, children, workers,
                                  progress, abort_check, fit, groups, cache)
    return {k: assemble_run(k, base, keep, [results[(k, r)] for r in range(n_replicates)],
                            subsample) for k in ks}


def consensus_maps(run: ReplicateRun, perms: np.ndarray):
    """Mean over replicates of the class maps and half maps, in consensus class numbering.

    Returns ``(maps (K, b, b, b), half_maps (2, K, b, b, b))`` float32. ``perms`` (R, K)
    from :func:`hetclass.stability.matching.align_replicates`: class j of replicate r is
    consensus class ``perms[r, j]``.
    """
    maps = np.zeros(run.maps.shape[1:], dtype=np.float64)
    halves = np.zeros(run.half_maps.shape[1:], dtype=np.float64)
    for r in range(run.n_replicates):
        maps[perms[r]] += run.maps[r]
        halves[:, perms[r]] += run.half_maps[r]
    return ((maps / run.n_replicates).astype(np.float32),
            (halves / run.n_replicates).astype(np.float32))
