"""``run_stability``: replicate classifications over a K range, scores and the verdict.

The science entry point of ``hetclass stability`` (front ends only wire arguments and call
:func:`run_stability` then :func:`hetclass.stability.outputs.write_stability_outputs`).

Example::

    prepared = engine.prepare(particles, replace(options, classes=max(k_values)))
    result = run_stability(prepared, options, k_values=[1, 2, 3, 4], n_replicates=5, seed=0)
    result.verdict.recommended_k, result.verdict.heterogeneity
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .replicates import (RankGroups, ReplicateRun, SeedLike, analysis_seed, consensus_maps,
                         run_replicate_scan, run_replicates, split_groups,
                         validate_replicate_args)
from .scores import KScores, score_replicates, single_class_scores
from .verdict import Thresholds, Verdict, heterogeneity_verdict


@dataclass
class StabilityResult:
    """Everything a stability run produced (arrays indexed like ``rows``).

    ``per_k`` scores per K (K = 1, when scanned, is the trivial entry); ``runs`` the
    replicate classifications per K >= 2; ``maps`` (K, b, b, b) consensus class maps per
    K >= 2 (replicate maps averaged after matching), at ``pixel_size_A``, ``half_maps``
    (2, K, b, b, b) likewise; ``chosen_k`` the K
    of the consensus outputs: the recommended K for a scan, the K asked for otherwise.
    """

    k_values: List[int]
    rows: np.ndarray
    per_k: Dict[int, KScores]
    runs: Dict[int, ReplicateRun]
    maps: Dict[int, np.ndarray]
    half_maps: Dict[int, np.ndarray]
    verdict: Verdict
    chosen_k: int
    n_replicates: int
    seed: int
    subsample: Optional[float]
    pixel_size_A: float
    seconds: Dict[str, float] = field(default_factory=dict)


def score_run(run: ReplicateRun, rng: np.random.Generator, core_min_stability: float = 0.8) -> KScores:
    """Stability scores of one replicate run (posteriors give the mean max posterior)."""
    return score_replicates(run.labels, run.k, posteriors=list(run.posteriors), rng=rng,
                            core_min_stability=core_min_stability)


def run_stability(prepared, options, k_values: Sequence[int], n_replicates: int = 5,
                  seed: SeedLike = 0, subsample: Optional[float] = None, rows=None,
                  workers: Optional[int] = None, core_min_stability: float = 0.8,
                  thresholds: Thresholds = Thresholds(), progress: Optional[Callable] = None,
                  abort_check: Optional[Callable] = None, fit: Optional[Callable] = None,
                  groups: Optional[RankGroups] = None) -> StabilityResult:
    """Run ``n_replicates`` classifications for every K in ``k_values`` and score them.

    ``prepared`` from :func:`hetclass.engine.prepare` (once per dataset; prepare with the
    largest K so the engine sizes its batches for it). ``rows`` restricts the run to a
    subset of the prepared particles. ``progress`` receives the engine's events (with
    ``replicate`` and ``k``), ``("replicate", ...)`` per finished replicate and
    ``("k_done", k, seconds, all_stable)`` per K. ``fit`` replaces the engine's ``fit``
    (tests). ``groups`` (:func:`hetclass.stability.replicates.split_groups`, MPI): every
    ``(K, replicate)`` classification of the scan is spread over the rank groups at once;
    every rank gets the same result as a single process.
    """
    validate_replicate_args(n_replicates, subsample)
    k_values = sorted(set(int(k) for k in k_values))
    n_total = prepared.data.n_total
    base = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(analysis_seed(seed))
    per_k: Dict[int, KScores] = {}
    runs: Dict[int, ReplicateRun] = {}
    maps: Dict[int, np.ndarray] = {}
    halves: Dict[int, np.ndarray] = {}
    seconds: Dict[str, float] = {}
    gathered = None
    if groups is not None and groups.is_mpi:   # the whole scan at once over the rank groups
        t0 = time.perf_counter()
        gathered = run_replicate_scan(prepared, options, [k for k in k_values if k >= 2],
                                      n_replicates, seed, subsample, base, workers, progress,
                                      abort_check, fit, groups)
        seconds["replicates"] = time.perf_counter() - t0
    for k in k_values:
        if k == 1:
            per_k[1] = single_class_scores(base.size, n_replicates)
            continue
        t0 = time.perf_counter()
        if gathered is not None:
            run = gathered[k]
        else:
            run = run_replicates(prepared, options, k, n_replicates, seed, subsample, rows=base,
                                 workers=workers, progress=progress, abort_check=abort_check,
                                 fit=fit)
        scores = score_run(run, rng, core_min_stability)
        runs[k], per_k[k] = run, scores
        maps[k], halves[k] = consensus_maps(run, scores.perms)
        seconds[f"k{k}"] = time.perf_counter() - t0
        if progress is not None and (groups is None or groups.world.is_root):
            progress("k_done", k=k, seconds=seconds[f"k{k}"], all_stable=scores.all_stable)
    verdict = heterogeneity_verdict(per_k, maps, halves, prepared.solvent_mask, thresholds)
    chosen = k_values[0] if len(k_values) == 1 else verdict.recommended_k
    if len(k_values) > 1 and chosen not in per_k:
        chosen = 1
        per_k.setdefault(1, single_class_scores(base.size, n_replicates))
    return StabilityResult(
        k_values=k_values, rows=base, per_k=per_k, runs=runs, maps=maps, half_maps=halves,
        verdict=verdict,
        chosen_k=int(chosen), n_replicates=int(n_replicates),
        seed=int(seed.entropy) if isinstance(seed, np.random.SeedSequence) else int(seed),
        subsample=subsample, pixel_size_A=float(prepared.pixel_size_A), seconds=seconds)


def stability_job(particles, options, out_dir: str, k_values: Sequence[int],
                  n_replicates: int = 5, subsample: Optional[float] = None,
                  workers: Optional[int] = None, core_min_stability: float = 0.8,
                  particles_path: Optional[str] = None, progress: Optional[Callable] = None,
                  abort_check: Optional[Callable] = None, comm=None):
    """Everything ``hetclass stability`` does after parsing: prepare once, run, write.

    Returns ``(summary dict, StabilityResult)``. The root seed is ``options.seed``; the
    data are prepared with K = max(k_values). Front ends (CLI, RELION External, Scipion)
    call this. Under MPI (``comm`` from :func:`hetclass.comm.world_comm`, every rank calls
    this) the replicates run on rank groups (:func:`split_groups`), rank 0 writes the
    outputs and returns the summary (the other ranks return None for it); an error on any
    rank is raised on every rank.
    """
    from dataclasses import replace

    from ..errors import InputError
    from .outputs import write_stability_outputs

    k_values = sorted(set(int(k) for k in k_values))
    if max(k_values) < 2:
        raise InputError("stability compares classifications: give K >= 2 or a range such as "
                         "1-4", field="--classes", value=k_values)
    validate_replicate_args(n_replicates, subsample)
    if not (0.0 < core_min_stability <= 1.0):
        raise InputError("must be a fraction in (0, 1]", field="--core-stability",
                         value=core_min_stability)
    options = replace(options, classes=max(k_values))
    groups = None
    if comm is not None and comm.is_mpi:
        groups = split_groups(comm, n_replicates * sum(1 for k in k_values if k >= 2))
    t0 = time.perf_counter()
    prepared = prepare_on_groups(particles, options, groups, progress, abort_check)
    t_prep = time.perf_counter() - t0
    result = run_stability(prepared, options, k_values, n_replicates, seed=options.seed,
                           subsample=subsample, workers=workers,
                           core_min_stability=core_min_stability, progress=progress,
                           abort_check=abort_check, groups=groups)
    result.seconds["prepare"] = t_prep
    t1 = time.perf_counter()
    summary = write_on_root(groups, prepared, lambda rec: write_stability_outputs(
        out_dir, particles, prepared, result, options, particles_path=particles_path,
        reconstruct=rec))
    result.seconds["outputs"] = time.perf_counter() - t1
    result.seconds["total"] = time.perf_counter() - t0
    return summary, result


def prepare_on_groups(particles, options, groups: Optional[RankGroups], progress=None,
                      abort_check=None):
    """``engine.prepare`` once per rank group (its ranks shard the particles; serial without
    MPI); an error on any rank is raised on every rank. Progress from world rank 0 only."""
    from .. import engine
    # replicates of one group run in a thread pool of options.threads workers: the memory
    # plan (--max-memory) budgets for that many fits at once
    fits = max(1, int(options.threads or 1))
    if groups is None or not groups.is_mpi:
        return engine.prepare(particles, options, progress=progress, abort_check=abort_check,
                              concurrent_fits=fits)
    # an error on any rank is raised on every rank, so no group waits for another
    return groups.world.checked(lambda: engine.prepare(
        particles, options, progress=progress if groups.world.is_root else None,
        abort_check=abort_check, comm=groups.group, concurrent_fits=fits))


def write_on_root(groups: Optional[RankGroups], prepared, write: Callable):
    """Run ``write(reconstruct)`` on world rank 0 (everywhere without MPI); returns its value
    there, None on other ranks.

    Writers reconstruct maps (a collective over the rank group holding ``prepared``): on
    world rank 0 the ``reconstruct`` handed to ``write`` first sends each request to the
    other ranks of group 0, which serve requests until rank 0 is done. An error in ``write``
    is raised on every rank.
    """
    from ..engine import reconstruct
    if groups is None or not groups.is_mpi:
        return write(reconstruct)
    group, world = groups.group, groups.world
    value, error = None, None
    if world.is_root:
        def rec(prep, weights, rows=None, **kw):
            if group.is_mpi:
                group.bcast_obj(("reconstruct", weights, rows, kw))
            return reconstruct(prep, weights, rows=rows, **kw)
        try:
            value = write(rec)
        except Exception as exc:
            error = exc
        finally:
            if group.is_mpi:
                group.bcast_obj(None)
    elif groups.index == 0 and group.is_mpi:
        while True:
            request = group.bcast_obj(None)
            if request is None:
                break
            _, weights, rows, kw = request
            reconstruct(prepared, weights, rows=rows, **kw)
    world.check(error)
    return value
