"""``run_stability``: replicate classifications over a K range, scores and the verdict.

The science entry point of ``hetclass stability`` (front ends only wire arguments and call
:func:`run_stability`, :func:`stable_cores` (the stable-core maps) then
:func:`hetclass.stability.outputs.write_stability_outputs`).

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

from .. import seeds
from ..errors import InputError
from .class_tests import (
    MIN_WITHIN_PARTICLES,
    confirm_pairs,
    continuity_tests,
    neighbour_pairs,
    pair_fits,
    pair_members,
    pairs_to_confirm,
    pairwise_tests,
    within_class_fits,
    within_class_tests,
)
from .null import NULL_SETS, run_null
from .replicates import (
    RankGroups,
    ReplicateRun,
    SeedLike,
    analysis_seed,
    consensus_maps,
    is_root_rank,
    run_replicate_scan,
    split_groups,
    validate_replicate_args,
)
from .scores import KScores, score_replicates, single_class_scores
from .set_aside import score_setting_aside
from .tasks import run_tasks
from .verdict import Thresholds, Verdict, heterogeneity_verdict


@dataclass
class StabilityResult:
    """Everything a stability run produced (arrays indexed like ``rows``).

    ``per_k`` scores per K (K = 1, when scanned, is the trivial entry); ``runs`` the
    replicate classifications per K >= 2; ``maps`` (K, b, b, b) consensus class maps per
    K >= 2 (replicate maps averaged after matching), at ``pixel_size_A``, ``half_maps``
    (2, K, b, b, b) likewise; ``chosen_k`` the K of the consensus outputs: the recommended K
    for a scan, the K asked for otherwise; ``tests`` the null-calibrated tests
    (:func:`calibrated_tests`; empty without a null); ``null`` the
    :class:`hetclass.stability.null.NullRun` (None without a null).
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
    tests: dict = field(default_factory=dict)
    null: object = None


def score_run(run: ReplicateRun, rng: np.random.Generator, core_min_stability: float = 0.8) -> KScores:
    """Stability scores of one replicate run (posteriors give the mean max posterior)."""
    return score_replicates(run.labels, run.k, posteriors=list(run.posteriors), rng=rng,
                            core_min_stability=core_min_stability)


MAX_AUTO_K = 12                  # the scan never extends itself past this K
MIN_PARTICLES_PER_CLASS = 100    # ... nor past n / this


def accepted_k(per_k: Dict[int, KScores], pairwise: Dict[int, dict]) -> int:
    """Largest K whose classes are all stable, pass the random-overlap test and are pairwise
    distinguishable beyond the null (when a null was run); 1 when none."""
    good = [k for k, s in per_k.items() if k >= 2 and s.all_stable
            and (pairwise.get(k) or {}).get("all_distinguishable") is not False]
    return max(good) if good else 1


def extension_needed(k_rec: int, scanned: Sequence[int], n: int) -> List[int]:
    """K values to add so that the scan reaches ``k_rec + 2`` (within the limits)."""
    limit = min(MAX_AUTO_K, max(2, n // MIN_PARTICLES_PER_CLASS))
    want = min(k_rec + 2, limit)
    return [k for k in range(2, want + 1) if k not in scanned]


class _Stage:
    """Runs the tasks of one stage through :func:`run_tasks` with the run's settings."""

    def __init__(self, workers, groups, cache, progress, abort_check):
        self.workers, self.groups, self.cache = workers, groups, cache
        self.progress, self.abort_check = progress, abort_check
        self.root = is_root_rank(groups)

    def __call__(self, keys, one, label: str = ""):
        def on_done(key, seconds, loaded):
            if self.progress is not None and label:
                how = "kept from the interrupted run" if loaded else f"{seconds:.1f} s"
                self.progress("message", text=f"  {label} {key}: done ({how})")
        return run_tasks(keys, one, self.workers, self.groups, self.cache, on_done,
                         self.abort_check)


def run_stability(prepared, options, k_values: Sequence[int], n_replicates: int = 5,
                  seed: SeedLike = 0, subsample: Optional[float] = None, rows=None,
                  workers: Optional[int] = None, core_min_stability: float = 0.8,
                  thresholds: Thresholds = Thresholds(), progress: Optional[Callable] = None,
                  abort_check: Optional[Callable] = None, fit: Optional[Callable] = None,
                  groups: Optional[RankGroups] = None, cache=None,
                  null_sets: int = NULL_SETS, extend: bool = True,
                  within: bool = True) -> StabilityResult:
    """Run ``n_replicates`` classifications for every K in ``k_values`` and score them.

    Stages (each a set of independent classifications run side by side, kept in ``cache``
    for ``--continue``): the K scan (K = 2 always included: the heterogeneity test uses
    it); the null (:mod:`.null`, ``null_sets`` null data sets, none when 0); the scan
    extended to the recommended K + 2 when it stops short (``extend``); the recommended K's
    borderline class pairs classified again on their own (``confirm``, with a null); each
    recommended class classified again at K = 2 (``within``). Then the verdict.

    ``prepared`` from :func:`hetclass.engine.prepare` (once per dataset; prepare with the
    largest K so the engine sizes its batches for it). ``rows`` restricts the run to a
    subset of the prepared particles. ``progress`` receives the engine's events (with
    ``replicate`` and ``k``), ``("replicate", ...)`` per finished replicate,
    ``("k_done", k, seconds, all_stable)`` per K and ``("message", text)`` lines. ``fit``
    replaces the engine's ``fit`` (tests). ``groups`` (MPI rank groups): every stage's
    classifications are spread over them; every rank gets the same result as one process.
    """
    validate_replicate_args(n_replicates, subsample)
    typed = sorted(set(int(k) for k in k_values))
    base = (np.arange(prepared.data.n_total) if rows is None
            else np.asarray(rows, dtype=np.int64))
    rng = np.random.default_rng(analysis_seed(seed))
    stage = _Stage(workers, groups, cache, progress, abort_check)
    root = stage.root
    res = _Scan(prepared, options, n_replicates, seed, subsample, base, workers, progress,
                abort_check, fit, groups, cache, rng, core_min_stability, root)
    scan_ks = sorted({k for k in typed if k >= 2} | ({2} if max(typed) >= 2 else set()))
    res.add(scan_ks)
    null = None
    if null_sets > 0 and max(typed) >= 2:
        null = _run_null_stage(prepared, options, base, seed, null_sets, subsample, stage, fit, res)
    null_model = None if null is None else null.null_model
    mask = prepared.solvent_mask
    pairwise = {k: pairwise_tests(res.runs[k], res.per_k[k], null_model, mask, thresholds.alpha)
                for k in res.runs}
    k_rec = accepted_k(res.per_k, pairwise)
    added: List[int] = []
    if extend and max(typed) >= 2:
        k_rec, added = _extend_scan(res, pairwise, k_rec, base.size, null_model, mask,
                                    thresholds.alpha, progress if root else None)
    if null_model is not None:
        k_rec = _confirm_stage(prepared, options, res, pairwise, k_rec, base, seed, stage, fit,
                               null_model, mask)
    within_tests = {}
    if within and k_rec >= 2 and null_model is not None:
        within_tests = _within_class_stage(prepared, options, res, k_rec, base, seed, stage, fit,
                                           null_model, mask, thresholds)
    continuity = {}
    if within and k_rec >= 2:
        t0 = time.perf_counter()
        continuity = _continuity(prepared, options, res, k_rec, base, seed, stage, fit, mask)
        res.seconds["continuity"] = time.perf_counter() - t0
    tests = {}
    if null is not None:
        tests = _tests_dict(null, pairwise, within_tests, continuity, typed, res, added, k_rec)
    per_k = dict(res.per_k)
    if 1 in typed or tests:
        per_k.setdefault(1, single_class_scores(base.size, n_replicates))
    verdict = heterogeneity_verdict(per_k, res.maps, res.half_maps, mask, thresholds,
                                    tests=tests or None)
    chosen = typed[0] if len(typed) == 1 else verdict.recommended_k
    if chosen not in per_k:
        chosen = 1
        per_k.setdefault(1, single_class_scores(base.size, n_replicates))
    return StabilityResult(
        k_values=sorted(per_k), rows=base, per_k=per_k, runs=res.runs, maps=res.maps,
        half_maps=res.half_maps, verdict=verdict, chosen_k=int(chosen),
        n_replicates=int(n_replicates),
        seed=int(seed.entropy if isinstance(seed, np.random.SeedSequence) else seed),  # type: ignore[arg-type]
        subsample=subsample, pixel_size_A=float(prepared.pixel_size_A), seconds=res.seconds,
        tests=tests, null=null)


def _continuity(prepared, options, res, k_rec: int, base: np.ndarray, seed, stage, fit,
                mask) -> dict:
    """:func:`.class_tests.continuity_tests` on the neighbouring classes of K = ``k_rec``."""
    consensus = res.per_k[k_rec].consensus
    sizes = {c: int(np.sum(consensus == c)) for c in range(k_rec)}
    pairs = neighbour_pairs(res.maps[k_rec], res.half_maps[k_rec], sizes, mask)
    members, starts = pair_members(consensus, base, pairs)
    fits = pair_fits(prepared, options, members, seed,
                     run=lambda keys, one: stage(keys, one, "continuity"), fit=fit,
                     start_labels=starts)
    return continuity_tests(fits)


def _confirm_stage(prepared, options, res: "_Scan", pairwise: Dict[int, dict], k_rec: int,
                   base: np.ndarray, seed, stage: "_Stage", fit, null_model, mask) -> int:
    """The recommended K's borderline pairs classified again on their own particles, from
    their consensus boundary, and judged by that fit (:func:`.class_tests.pairs_to_confirm`,
    :func:`.class_tests.apply_confirmations`; ``pairwise`` is updated). A K that loses a
    pair is no longer accepted; the next accepted K is confirmed alike. Returns the
    recommended K; time in ``res.seconds["confirm"]``."""
    t0 = time.perf_counter()
    while k_rec >= 3:
        todo = pairs_to_confirm(pairwise[k_rec])
        if not todo:
            break
        if stage.progress is not None and stage.root:
            stage.progress("message", text=f"K={k_rec}: {len(todo)} class pair(s) near the "
                                           "null classified again on their own")
        pairwise[k_rec] = confirm_pairs(prepared, options, pairwise[k_rec],
                                        res.per_k[k_rec].consensus, base, seed,
                                        lambda keys, one: stage(keys, one, "confirm"),
                                        null_model, mask, fit)
        k_rec = accepted_k(res.per_k, pairwise)
    res.seconds["confirm"] = time.perf_counter() - t0
    return k_rec


def _run_null_stage(prepared, options, base: np.ndarray, seed, null_sets: int,
                    subsample: Optional[float], stage: "_Stage", fit, res: "_Scan"):
    """The null stage: ``null_sets`` simulated one-state data sets classified like the
    replicates (:func:`run_null`); its time in ``res.seconds["null"]``."""
    t0 = time.perf_counter()
    if stage.progress is not None and stage.root:
        stage.progress("message", text=f"null: {null_sets} simulated one-state data sets, "
                                       "classified like the replicates")
    null = run_null(prepared, options, base, seed,
                    null_sets, subsample, run=lambda keys, one: stage(keys, one, "null"),
                    fit=fit)
    res.seconds["null"] = time.perf_counter() - t0
    return null


def _extend_scan(res: "_Scan", pairwise: Dict[int, dict], k_rec: int, n_particles: int,
                 null_model, mask: np.ndarray, alpha: float, progress: Optional[Callable]):
    """Extend the scan past the recommended K while :func:`extension_needed` asks for it
    (adds runs to ``res`` and tests to ``pairwise``); ``(recommended K, the K added)``."""
    added: List[int] = []
    while True:
        more = extension_needed(k_rec, sorted(res.runs), n_particles)
        if not more:
            break
        if progress is not None:
            progress("message", text=f"K={k_rec} recommended so far: the scan continues to "
                                     f"K={max(more)} to look past it")
        added += more
        res.add(more)
        for k in more:
            pairwise[k] = pairwise_tests(res.runs[k], res.per_k[k], null_model, mask, alpha)
        k_rec = accepted_k(res.per_k, pairwise)
    return k_rec, added


def _within_class_stage(prepared, options, res: "_Scan", k_rec: int, base: np.ndarray, seed,
                        stage: "_Stage", fit, null_model, mask: np.ndarray,
                        thresholds: Thresholds) -> dict:
    """Each recommended class with enough particles classified again at K = 2 and tested
    against the null (:func:`within_class_tests`) at alpha divided by the number of classes
    tested (Bonferroni: one family of tests, "is any class under-split?"); its time in
    ``res.seconds["within_class"]``."""
    t0 = time.perf_counter()
    consensus = res.per_k[k_rec].consensus
    members = {c: base[consensus == c] for c in range(k_rec)
               if np.sum(consensus == c) >= MIN_WITHIN_PARTICLES}
    fits = within_class_fits(prepared, options, members, seed,
                             run=lambda keys, one: stage(keys, one, "within-class"), fit=fit)
    within_tests = within_class_tests(fits, res.maps[k_rec],
                                      {c: int(m.size) for c, m in members.items()},
                                      null_model, mask,
                                      thresholds.alpha / max(1, len(members)),
                                      thresholds.stable_jaccard)
    res.seconds["within_class"] = time.perf_counter() - t0
    return within_tests


def _tests_dict(null, pairwise: Dict[int, dict], within_tests: dict, continuity: dict,
                typed: List[int], res: "_Scan", added: List[int], k_rec: int) -> dict:
    """``StabilityResult.tests``: the null-calibrated tests and how the scan went."""
    return {"recommended_k": k_rec, "null": null.to_dict(),
            "heterogeneity_test": heterogeneity_test(pairwise.get(2)),
            "distinguishability": {str(k): v for k, v in sorted(pairwise.items())},
            "within_class": within_tests, "continuity": continuity,
            "scan": {"typed": typed, "scanned": [1] + sorted(res.runs)
                     if 1 in typed else sorted(res.runs),
                     "added": sorted(added)
                     + ([2] if 2 not in typed and max(typed) >= 2 else []),
                     "extended_to": max(res.runs) if added else None,
                     "recommended_k": k_rec}}


def heterogeneity_test(pairs_k2: Optional[dict]) -> Optional[dict]:
    """The data set's heterogeneity test: the K = 2 classes' map statistic against the null
    (the one pair of the K = 2 distinguishability test)."""
    if not pairs_k2 or not pairs_k2["pairs"]:
        return None
    pair = pairs_k2["pairs"][0]
    return {"k": 2, "particles": pair["particles"], "log_ratio": pair["log_ratio"],
            "p_value": pair["p_value"], "alpha": pairs_k2["alpha"],
            "beyond_null": None if pair["distinguishable"] is None else pair["distinguishable"]}


class _Scan:
    """Replicate runs, scores and consensus maps of the K values scanned so far."""

    def __init__(self, prepared, options, n_replicates, seed, subsample, base, workers,
                 progress, abort_check, fit, groups, cache, rng, core_min_stability, root):
        self.args = (prepared, options, n_replicates, seed, subsample, base, workers, progress,
                     abort_check, fit, groups, cache)
        self.rng, self.core, self.root, self.progress = rng, core_min_stability, root, progress
        self.runs: Dict[int, ReplicateRun] = {}
        self.per_k: Dict[int, KScores] = {}
        self.maps: Dict[int, np.ndarray] = {}
        self.half_maps: Dict[int, np.ndarray] = {}
        self.seconds: Dict[str, float] = {}

    def score(self, run: ReplicateRun, seed) -> "tuple[ReplicateRun, KScores]":
        """Scores of one K's replicates, one replicate set aside where :mod:`.set_aside`
        says so (its rescoring draws from the stream ``("set_aside", K)``)."""
        def rescore(others: ReplicateRun) -> KScores:
            return score_run(others, seeds.rng(seed, "set_aside", run.k), self.core)
        return score_setting_aside(run, score_run(run, self.rng, self.core), rescore)

    def add(self, ks: Sequence[int]) -> None:
        (prepared, options, n_replicates, seed, subsample, base, workers, progress,
         abort_check, fit, groups, cache) = self.args
        ks = [int(k) for k in ks if int(k) not in self.runs]
        if not ks:
            return
        t0 = time.perf_counter()
        runs = run_replicate_scan(prepared, options, ks, n_replicates, seed, subsample, base,
                                  workers, progress, abort_check, fit, groups, cache)
        each = (time.perf_counter() - t0) / len(ks)
        for k in ks:
            run, scores = self.score(runs[k], seed)
            self.runs[k], self.per_k[k] = run, scores
            self.maps[k], self.half_maps[k] = consensus_maps(run, scores.perms)
            self.seconds[f"k{k}"] = float(np.sum(runs[k].seconds)) if len(ks) > 1 else each
            if progress is not None and self.root:
                progress("k_done", k=k, seconds=self.seconds[f"k{k}"],
                         all_stable=scores.all_stable)


REPLICATE_STARTS = 1     # exploration starts per replicate (docs/stability.md: why one)


def work_identity(command: str, particles, options, subsample, extra: Optional[dict] = None
                  ) -> dict:
    """What the kept work of a run depends on (:class:`.tasks.WorkCache`): the particle set,
    the options that change a classification, the seed and the subsample fraction."""
    from dataclasses import asdict

    from ..checkpoint import particle_identity
    keep = ("target_res_A", "max_iter", "n_init", "convergence_pct", "tau2_fudge", "hard",
            "seed", "init", "init_lowpass_A", "references", "particle_diameter_A",
            "solvent_mask", "focus_mask")
    opts = asdict(options)
    return {"command": command, "particles": particle_identity(particles),
            "options": {k: opts.get(k) for k in keep}, "subsample": subsample, **(extra or {})}


def stability_job(particles, options, out_dir: str, k_values: Sequence[int],
                  n_replicates: int = 5, subsample: Optional[float] = None,
                  workers: Optional[int] = None, core_min_stability: float = 0.8,
                  particles_path: Optional[str] = None, progress: Optional[Callable] = None,
                  abort_check: Optional[Callable] = None, comm=None, resume: bool = False,
                  null_sets: int = NULL_SETS):
    """Everything ``hetclass stability`` does after parsing: prepare once, run, write.

    Returns ``(summary dict, StabilityResult)``. The root seed is ``options.seed``; each
    replicate explores :data:`REPLICATE_STARTS` start(s). Holds the lock of ``out_dir``;
    finished classifications are kept in ``out_dir/work`` until the outputs are written, and
    ``resume`` (``--continue``) reuses them. Front ends (CLI, RELION External, Scipion) call
    this. Under MPI (``comm`` from :func:`hetclass.comm.world_comm`, every rank calls this)
    the classifications run on rank groups (:func:`split_groups`), rank 0 writes the outputs
    and returns the summary (the other ranks return None for it); an error on any rank is
    raised on every rank.
    """
    from dataclasses import replace

    from ..errors import InputError
    from ..io.lock import lock_output
    from .outputs import write_stability_outputs
    from .tasks import WorkCache

    k_values = sorted(set(int(k) for k in k_values))
    if max(k_values) < 2:
        raise InputError("stability compares classifications: give K >= 2 or a range such as "
                         "1-4", field="--classes", value=k_values)
    validate_replicate_args(n_replicates, subsample)
    if not (0.0 < core_min_stability <= 1.0):
        raise InputError("must be a fraction in (0, 1]", field="--core-stability",
                         value=core_min_stability)
    validate_null_sets(null_sets)
    options = replace(options, classes=max(k_values) + 2, n_init=REPLICATE_STARTS)
    groups = None
    if comm is not None and comm.is_mpi:
        groups = split_groups(comm, n_replicates * sum(1 for k in k_values if k >= 2))
    with lock_output(out_dir, comm, "hetclass stability"):
        root = comm is None or comm.is_root
        cache = WorkCache(out_dir, work_identity("stability", particles, options, subsample),
                          resume, writer=root)
        t0 = time.perf_counter()
        prepared = prepare_on_groups(particles, options, groups, progress, abort_check)
        t_prep = time.perf_counter() - t0
        result = run_stability(prepared, options, k_values, n_replicates, seed=options.seed,
                               subsample=subsample, workers=workers,
                               core_min_stability=core_min_stability, progress=progress,
                               abort_check=abort_check, groups=groups, cache=cache,
                               null_sets=null_sets)
        result.seconds["prepare"] = t_prep
        t1 = time.perf_counter()
        summary = write_on_root(groups, prepared, lambda rec: write_stability_outputs(
            out_dir, particles, prepared, result, options, stable_cores(prepared, result, rec),
            particles_path=particles_path))
        result.seconds["outputs"] = time.perf_counter() - t1
        result.seconds["total"] = time.perf_counter() - t0
        cache.remove()
    return summary, result


def validate_null_sets(null_sets) -> None:
    if not isinstance(null_sets, (int, np.integer)) or null_sets < 0:
        raise InputError("must be an integer >= 0 (0: no null, thresholds only)",
                         field="--null-sets", value=null_sets)


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


@dataclass
class StableCores:
    """The stable core of each consensus class of ``result.chosen_k`` and its maps.

    ``core`` (K, n_rows) bool: particle ``rows[i]`` is in the stable core of class c (its
    consensus class, with stability >= the core threshold); ``have`` the classes with a
    non-empty core, in order; ``recon`` their reconstruction (column j is class ``have[j]``;
    :class:`hetclass.engine.ReconResult` at the cropped box), None when no core has members.
    """

    core: np.ndarray
    have: List[int]
    recon: Optional[object]


def stable_cores(prepared, result: StabilityResult, reconstruct: Optional[Callable] = None) -> StableCores:
    """The stable cores of ``result`` and their maps, reconstructed from ``prepared`` with
    ``reconstruct`` (default :func:`hetclass.engine.reconstruct`; under MPI the one
    :func:`write_on_root` hands over)."""
    if reconstruct is None:
        from ..engine import reconstruct as engine_reconstruct
        reconstruct = engine_reconstruct
    k = result.chosen_k
    scores = result.per_k[k]
    core = scores.consensus[None, :] == np.arange(k)[:, None]
    core &= (scores.particle_stability >= scores.core_min_stability)[None, :]
    weights = core.T.astype(np.float64)                          # (n_rows, K)
    have = [c for c in range(k) if core[c].any()]
    recon = reconstruct(prepared, weights[:, have], rows=result.rows) if have else None
    return StableCores(core, have, recon)


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
