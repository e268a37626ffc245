"""Bayesian EM over K class volumes with fixed poses (RELION Class3D with --skip_align).

Model: ``X_i = CTF_i * slice(V_k, A_i) + n_i`` with complex Gaussian noise of variance
``sigma2[group, shell]``; prior ``V_k(q) ~ CN(0, T * tau2_k[shell])``. The E-step gives
posteriors ``p(k | X_i)``; the M-step re-estimates class weights, noise spectra and the
class volumes (Wiener-regularised, CTF-corrected, per half set for the FSC).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional

import numpy as np

from . import seeds
from .em_step import (
    Accumulators,
    class_major_to_grid,
    empty_accumulators,
    process_batch,
    shell_onehot,
    use_by_class,
)
from .errors import EmptyClassWarning
from .fourier import lowpass_volume
from .mstep import m_step
from .options import ClassifyOptions
from .parallel import thread_map
from .projector import stack_rows
from .reconstruct import volume_grids
from .variability import local_weight, weighted_references
from .workspace import Workspace

# The E-step uses data up to the current resolution plus this many shells (as RELION does),
# so that early iterations are not drowned in high-frequency noise.
RES_STEP_SHELLS = 4


@dataclass
class EMState:
    """Everything needed to continue EM exactly from the end of ``iteration``."""

    iteration: int
    maps: np.ndarray             # (K, b, b, b) float32 class maps (masked)
    refs: np.ndarray             # (2, K, b, b, b) float32 references scoring half set h:
                                 # built from the *other* half set (gold standard), masked
    sigma2: np.ndarray           # (G, S) float64
    tau2: np.ndarray             # (2, S) float64 prior spectra [consensus, class deviations]
                                 # (hetclass.mstep: classes are centred on the consensus)
    class_fractions: np.ndarray  # (K,)
    labels: np.ndarray           # (n,) int64, -1 before the first E-step / inactive
    posteriors: Optional[np.ndarray] = None  # (n, K) float32
    history: List[dict] = field(default_factory=list)
    converged: bool = False
    half_maps: Optional[np.ndarray] = None   # (2, K, b, b, b) float32
    fsc: Optional[np.ndarray] = None         # (K, S)
    resolution_A: Optional[np.ndarray] = None   # (K,) NaN where nothing was resolved
    resolution_status: Optional[List[str]] = None  # (K,) hetclass.fsc.RESOLUTION_*
    loglik: Optional[np.ndarray] = None      # (n,) log evidence per particle
    unmasked_maps: Optional[np.ndarray] = None  # (K, b, b, b) class maps before masking
    like_shells: int = 0                     # shells used by the next E-step (0 = from the maps)
    polishing: bool = False                  # gold-standard phase converged: full-map scoring
    start: int = 0                           # the exploration start this state came from
    starts: List[dict] = field(default_factory=list)  # every exploration start's record


def finest_resolution_A(resolution_A: np.ndarray, fallback_A: float) -> float:
    """The finest (smallest) class resolution, ignoring classes that resolved nothing."""
    res = np.asarray(resolution_A, dtype=np.float64)
    res = res[np.isfinite(res)]
    return float(res.min()) if res.size else float(fallback_A)


def run_pass(ws: Workspace, refs: Optional[np.ndarray], sigma2, log_prior, active, hard,
             fixed_weights=None, abort_check=None, progress=None, stage="em",
             like_shells: Optional[int] = None, estep_only: bool = False):
    """One pass over all batches; returns (Accumulators, posteriors (n,K), loglik (n,)).

    ``estep_only``: posteriors and log-evidence only, no back-projection (the accumulators'
    grid stays zero).
    """
    if ws.device_pass is not None:  # GPU: data and grids stay on the device
        acc, post, loglik = ws.device_pass.run_pass(
            refs, sigma2, log_prior, active, hard, fixed_weights=fixed_weights,
            abort_check=abort_check, progress=progress, stage=stage,
            like_shells=like_shells or ws.like_shells)
        return reduce_accumulators(ws.comm, acc), post, loglik
    k = log_prior.size
    n = len(ws.data)
    # one-hot weights: each particle back-projects into its own class only (same numbers),
    # summed in the class-major layout of backproject_by_class and converted at the end
    by_class = not estep_only and use_by_class(k, ws.n_voxels, hard, fixed_weights)
    acc = empty_accumulators(0 if by_class else ws.n_voxels, k, ws.data.n_groups, ws.n_shells)
    class_grid = ([np.zeros((ws.n_voxels * k, 3), np.float32) for _ in range(2)]
                  if by_class else None)
    post = np.zeros((n, k), np.float32)
    loglik = np.zeros(n)
    grids: list = [None, None]
    if refs is not None:
        grids = [volume_grids(refs[h], ws.pad, ws.threads) for h in range(2)]
    like = like_shells or ws.like_shells
    coeffs = ws.data.coeffs
    # the E-step and its back-projection use the coefficients of the shells in the
    # likelihood only (a prefix: coefficients are ordered by shell); fixed-weight
    # reconstructions use them all
    m_use = coeffs.size if fixed_weights is not None else coeffs.count_below(like)
    shell = coeffs.shell[:m_use]
    onehot = shell_onehot(shell, ws.n_shells)

    def one(group):
        if abort_check is not None:
            abort_check()
        batch = group_arrays(ws, group, active, fixed_weights, m_use)
        if batch is None:
            return None
        half = ws.batches[group[0]][1]
        return process_batch(batch.rows, half, batch.operator, grids[half], batch.x, batch.c,
                             batch.g, sigma2, log_prior, onehot, shell, like, hard,
                             with_estep=fixed_weights is None, fixed_weights=batch.weights,
                             active=batch.use,
                             backproject_data=not estep_only, by_class=by_class)

    # results are added in group order whatever the thread count: identical sums
    groups = batch_groups(ws, active)
    for gi, res in enumerate(thread_map(one, groups, ws.threads)):
        if res is not None:
            acc.add(res.acc)
            if res.grid is not None:
                (acc.grid if class_grid is None else class_grid)[res.half] += res.grid
            post[res.rows] = res.posteriors
            loglik[res.rows] = res.loglik
        if progress is not None:
            progress("batch", stage=stage, done=gi + 1, total=len(groups))
    if class_grid is not None:   # one half at a time: at most 1.5 grids at once
        acc.grid = np.empty((2, ws.n_voxels, 3 * k), np.float32)
        for h in range(2):
            class_major_to_grid(class_grid[h], k, out=acc.grid[h])
            class_grid[h] = None     # type: ignore[call-overload]
    return reduce_accumulators(ws.comm, acc), post, loglik


class BatchArrays(NamedTuple):
    """What :func:`hetclass.em_step.process_batch` takes for one batch (or group)."""

    rows: np.ndarray                  # (n,) particle indices
    x: np.ndarray                     # (n, M) data
    c: np.ndarray                     # (n, M) CTF
    g: np.ndarray                     # (n,) optics groups
    operator: object                  # (n M, N**3) slice operator
    weights: Optional[np.ndarray]     # (n, K) fixed weights, or None (an E-step)
    use: np.ndarray                   # (n,) bool: active


def _batch_part(ws: Workspace, bi: int, active, fixed_weights, m_use: int):
    """Batch ``bi``'s active particles as :class:`BatchArrays` (their first ``m_use``
    coefficients), or None when none is active. Only the active particles are read and
    projected (exploration subsets, split fits on one class, subsampled replicates);
    inactive ones keep zero posteriors."""
    rows, _ = ws.batches[bi]
    use = active[rows]
    if not use.any():
        return None
    weights = None if fixed_weights is None else fixed_weights[rows] * use[:, None]
    keep = None if use.all() else np.flatnonzero(use)
    x, c, g = ws.batch_arrays(bi, keep)
    if m_use < x.shape[1]:
        x, c = x[:, :m_use], c[:, :m_use]
    if keep is None:
        return BatchArrays(rows, x, c, g, ws.operator(bi, m_use), weights, use)
    return BatchArrays(rows[keep], x, c, g, ws.operator(bi, m_use, keep),
                       None if weights is None else weights[keep], use[keep])


def group_arrays(ws: Workspace, group: List[int], active, fixed_weights, m_use: int):
    """The active particles of the batches ``group`` (:func:`batch_groups`) as one
    :class:`BatchArrays`, in batch order, or None."""
    parts = [p for p in (_batch_part(ws, bi, active, fixed_weights, m_use) for bi in group)
             if p is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    def joined(field: str) -> np.ndarray:
        return np.concatenate([getattr(p, field) for p in parts])
    return BatchArrays(joined("rows"), joined("x"), joined("c"), joined("g"),
                       stack_rows([p.operator for p in parts]),
                       None if fixed_weights is None else joined("weights"), joined("use"))


def batch_groups(ws: Workspace, active: np.ndarray) -> List[List[int]]:
    """The batches a pass processes together: consecutive batches of one half set whose
    active particles add up to at most one batch (``ws.batch_size``).

    With every particle active each batch is its own group. A pass over a subset (an
    exploration subset, one class's particles) would otherwise project, back-project and
    sum a whole grid per batch for a few particles each: on 120000 particles, 60 batches
    of 2000 for an exploration subset of 10000, about as long as the products themselves.
    The groups depend on the batches and ``active`` only, so the sums are the same whatever
    the thread count.
    """
    groups: List[List[int]] = []
    filled, half = 0, -1
    for bi, (rows, h) in enumerate(ws.batches):
        n = int(np.count_nonzero(active[rows]))
        if n == 0:
            continue
        if not groups or h != half or filled + n > ws.batch_size:
            groups.append([])
            filled, half = 0, h
        groups[-1].append(bi)
        filled += n
    return groups


def reduce_accumulators(comm, acc: Accumulators) -> Accumulators:
    """Sum the accumulators of every rank (identity in a single process)."""
    if comm.size == 1:
        return acc
    acc.grid = comm.allreduce(acc.grid)
    acc.noise = comm.allreduce(acc.noise)
    acc.noise_count = comm.allreduce(acc.noise_count)
    acc.class_weight = comm.allreduce(acc.class_weight)
    acc.log_likelihood = comm.allreduce_scalar(acc.log_likelihood)
    return acc


def initial_maps(ws: Workspace, rng: np.random.Generator, k: int, active: np.ndarray,
                 sigma2, prior, tau2_fudge, lowpass_A: float, solvent_mask,
                 references: Optional[np.ndarray] = None, abort_check=None, progress=None):
    """Initial references: random-subset reconstructions (low-passed), optionally mixed
    with user references: K maps are used as given, one map gets K perturbed copies."""
    n = len(ws.data)
    # drawn over the whole set, so the start does not depend on the sharding across ranks
    labels = rng.integers(0, k, size=ws.data.n_total)[ws.data.rows]
    weights = np.zeros((n, k))
    weights[np.arange(n), labels] = 1.0
    acc, _, _ = run_pass(ws, None, sigma2, np.zeros(k), active, False, fixed_weights=weights,
                         abort_check=abort_check, progress=progress, stage="init")
    ms = m_step(ws, acc, prior, tau2_fudge, solvent_mask, None)
    psize = ws.data.plan.crop_pixel_size_A
    # Both half sets start from the same maps so that class k means the same in both;
    # afterwards half set h is scored against maps made from the other half (gold standard).
    one = lowpass_volume(ms.maps, psize, lowpass_A)
    random_refs = np.stack([one, one])
    if references is None:
        refs = random_refs
    elif references.shape[0] == k:
        one = lowpass_volume(references, psize, lowpass_A)
        refs = np.stack([one, one])
    else:
        ref = lowpass_volume(references[0], psize, lowpass_A)
        refs = np.stack([[ref + (m - random_refs[h].mean(0)) for m in random_refs[h]]
                         for h in range(2)])
    return (refs * solvent_mask).astype(np.float32)


def link_halves(half_maps: np.ndarray, mask: np.ndarray, pixel_size_A: float,
                resolution_A: float):
    """Keep class k meaning the same in both half sets.

    Scoring each half against the other half's maps can let the halves' class numbers drift
    apart (then classes swap every iteration). The half maps, low-passed to ``resolution_A``
    and masked, are matched by correlation (Hungarian). Returns ``perm`` with half-2 class j
    best matching half-1 class ``perm[j]``, or None when they are already linked.
    """
    from scipy.optimize import linear_sum_assignment

    from .gpu.xp import array_module, to_host
    xp = array_module(half_maps)   # on the device when the M-step ran there
    k = half_maps.shape[1]
    if k < 2:
        return None
    mask = xp.asarray(mask)
    a = lowpass_volume(half_maps[0], pixel_size_A, resolution_A) * mask
    b = lowpass_volume(half_maps[1], pixel_size_A, resolution_A) * mask
    a = a.reshape(k, -1) - a.reshape(k, -1).mean(1, keepdims=True)
    b = b.reshape(k, -1) - b.reshape(k, -1).mean(1, keepdims=True)
    # correlate the class maps' deviations from their half's mean map: the common part of
    # similar states would otherwise swamp the differences that define the classes
    a = a - a.mean(0, keepdims=True)
    b = b - b.mean(0, keepdims=True)
    na = xp.linalg.norm(a, axis=1)
    nb = xp.linalg.norm(b, axis=1)
    corr = to_host((b @ a.T) / xp.maximum(nb[:, None] * na[None, :], 1e-30))
    rows, cols = linear_sum_assignment(-corr)
    perm = cols[np.argsort(rows)]
    if np.all(perm == np.arange(k)) or corr[np.arange(k), perm].sum() <= np.trace(corr) + 1e-6:
        return None
    return perm


def reseed_empty(refs, fractions, min_fraction: float, rng: np.random.Generator,
                 lowpass_A: float, pixel_size_A: float, solvent_mask):
    """Give (nearly) empty classes a new start by splitting the largest class, in place.

    The new class and the largest one start from the largest class's references pushed in
    opposite directions along a smooth random field (the same field in both half sets, so
    class numbers keep one meaning; a field made from the half maps' own noise would pull
    each half's particles towards opposite classes). They share the largest class's weight.
    Returns the 1-based numbers of the re-seeded classes.
    """
    reseeded = []
    for j in np.flatnonzero(fractions < min_fraction):
        big = int(np.argmax(fractions))
        if fractions[big] < 2 * min_fraction:
            break
        field = rng.standard_normal(refs.shape[2:]).astype(np.float32)
        field = lowpass_volume(field, pixel_size_A, lowpass_A) * solvent_mask
        scale = np.sqrt(np.mean(refs[:, big] ** 2) / max(float(np.mean(field ** 2)), 1e-30))
        for h in range(2):
            base = refs[h, big].copy()
            refs[h, j] = base + 0.2 * scale * field
            refs[h, big] = base - 0.2 * scale * field
        fractions[j] = fractions[big] = fractions[big] / 2.0
        reseeded.append(int(j) + 1)
    return reseeded


# the local weight of class deviations (hetclass.variability) is floored at 1 (not used) in
# the first iterations, while classes form out of random starts, then at 0
LOCAL_WEIGHT_AFTER_ITER = 2
LOCAL_WEIGHT_SMOOTH_PX = 2.0


def scoring_references(ms, fractions, iteration: int, polishing: bool, focus_mask=None):
    """(2, K, b, b, b) references the two half sets are scored against (before masking).

    Gold standard: half set h against the other half's maps; after convergence
    (``polishing``) both against the full-data maps. Either way the class deviations from
    the consensus are weighted by where the classes really differ
    (:func:`hetclass.variability.local_weight`).
    """
    floor = 1.0 if iteration <= LOCAL_WEIGHT_AFTER_ITER else 0.0
    w = local_weight(ms.maps, ms.half_maps, ms.consensus, ms.half_consensus, fractions,
                     LOCAL_WEIGHT_SMOOTH_PX, floor, focus_mask)
    if polishing:
        full = weighted_references(ms.maps, ms.consensus, w)
        return np.stack([full, full])
    return np.stack([weighted_references(ms.half_maps[1], ms.half_consensus[1], w),
                     weighted_references(ms.half_maps[0], ms.half_consensus[0], w)])


def iterate(ws: Workspace, state: EMState, options: ClassifyOptions, active: np.ndarray,
            solvent_mask: np.ndarray, focus_mask: Optional[np.ndarray],
            checkpoint: Optional[Callable[[EMState], None]] = None,
            abort_check=None, progress=None, reseed=None, warn_empty: bool = True,
            polish: bool = True) -> EMState:
    """Run EM iterations from ``state`` until convergence or ``options.max_iter``.

    ``warn_empty``: an :class:`EmptyClassWarning` when classes end empty (exploration starts,
    whose empty classes are re-seeded and only ranked, pass False).

    ``reseed`` ``(seed, start)``: empty classes are re-seeded from the named stream
    ``("reseed", start, iteration)`` of ``seed`` (default ``(options.seed, state.start)``).

    ``polish`` False: stop when the gold-standard phase converges, without the full-map
    polishing (exploration: its states are compared by a held-out score, which needs
    gold-standard references).
    """
    reseed = reseed if reseed is not None else (options.seed, state.start)
    k = state.refs.shape[1]
    comm = ws.comm
    n_active = max(int(comm.allreduce_scalar(float(active.sum()))), 1)
    while not state.converged and state.iteration < options.max_iter:
        state = _iteration(ws, state, options, active, solvent_mask, focus_mask, n_active,
                           reseed, abort_check, progress, polish)
        if checkpoint is not None:
            checkpoint(state)
    empty = int(np.sum(state.class_fractions < 0.5 / n_active))
    if warn_empty and empty and comm.is_root:
        warnings.warn(f"{empty} of {k} classes ended empty after iteration {state.iteration} "
                      "(the data support fewer classes here; consider fewer)",
                      EmptyClassWarning, stacklevel=2)
    return state


def _iteration(ws: Workspace, state: EMState, options, active: np.ndarray,
               solvent_mask: np.ndarray, focus_mask: Optional[np.ndarray], n_active: int,
               reseed: tuple, abort_check, progress, polish: bool = True) -> EMState:
    """One EM iteration from ``state`` (E-step pass, M-step, half-set linking, re-seeding of
    empty classes); the new state, its statistics appended to ``history``. Reports the
    ``iteration`` event to ``progress``."""
    k = state.refs.shape[1]
    comm = ws.comm
    size_A = ws.data.plan.crop_box_px * ws.data.plan.crop_pixel_size_A
    log_prior = np.log(np.maximum(state.class_fractions, 1e-12))
    # from the first iteration the likelihood uses every shell up to the target: classes
    # forming at low resolution first collapsed onto wrong partitions (4 close states:
    # hard-assignment starts from 30 A drained a class; from the target they did not)
    top = ws.like_shells
    like = min(state.like_shells or top, top)
    acc, post, loglik = run_pass(ws, state.refs, state.sigma2, log_prior, active,
                                 options.hard, abort_check=abort_check, progress=progress,
                                 like_shells=like)
    ms = m_step(ws, acc, state.tau2, options.tau2_fudge, solvent_mask, focus_mask,
                full_maps=state.polishing)
    fractions = acc.class_weight / max(acc.class_weight.sum(), 1e-12)
    best_res = finest_resolution_A(ms.resolution_A, size_A)
    fractions = _link_half_sets(ws, ms, post, fractions, active, solvent_mask, options.hard,
                                max(2.0 * best_res, options.init_lowpass_A / 2), k)
    labels = np.where(active, post.argmax(1), -1)
    changed, first = changed_percent(comm, state.labels[active], labels[active], n_active)
    sigma2 = np.where(acc.noise_count > 0, acc.noise / np.maximum(acc.noise_count, 1),
                      state.sigma2)
    sigma2 = np.maximum(sigma2, 1e-12 * max(float(sigma2.max()), 1e-30))
    d_frac = float(np.abs(fractions - state.class_fractions).max())
    it = state.iteration + 1
    stats = {"iteration": it, "changed_pct": changed, "class_fractions": fractions.tolist(),
             "log_likelihood": acc.log_likelihood / n_active,
             "resolution_A": [None if np.isnan(r) else float(r) for r in ms.resolution_A],
             "resolution_status": list(ms.resolution_status),
             "mean_max_posterior": comm.allreduce_scalar(
                 float(post[active].max(1).sum()) if active.any() else 0.0) / n_active}
    if first:
        stats["first_assigned"] = first
    # the likelihood uses the shells where the classes' *differences* are resolved (the
    # consensus detail beyond them is common to all classes and only adds noise), plus
    # a few, growing as the differences are resolved further (as RELION grows its limit)
    assert ms.deviation_resolution_A is not None    # m_step always sets it
    diff_res = finest_resolution_A(ms.deviation_resolution_A, size_A)
    next_like = min(top, max(like, int(size_A / diff_res) + RES_STEP_SHELLS + 1))
    stats["difference_resolution_A"] = [None if np.isnan(r) else float(r)
                                        for r in ms.deviation_resolution_A]
    stats["likelihood_shells"] = like
    converged = (it >= 3 and changed < options.convergence_pct and d_frac < 0.01
                 and next_like == like)
    polishing = state.polishing
    if converged and not polishing and polish:
        # the partition is settled without self-bias; refine it against full-data maps,
        # which are less noisy than half maps
        polishing, converged = True, False
    refs = scoring_references(ms, fractions, it, polishing, focus_mask) * solvent_mask
    # the prior follows the maps (consensus power, class-deviation power), as in RELION
    tau2 = np.maximum(ms.tau2, 0.0)
    if it <= options.max_iter // 2:
        rng = seeds.rng(reseed[0], "reseed", reseed[1], it)
        reseeded = reseed_empty(refs, fractions, max(5.0 / n_active, 0.002), rng,
                                max(best_res, options.init_lowpass_A / 2),
                                ws.data.plan.crop_pixel_size_A, solvent_mask)
        if reseeded:
            stats["reseeded_classes"] = reseeded
            converged = False
    if progress is not None:
        progress("iteration", it=it, max_iter=options.max_iter, changed_pct=changed,
                 first_assigned=first,
                 class_fractions=fractions.tolist(), resolution_A=ms.resolution_A.tolist())
    return EMState(iteration=it, maps=(ms.maps * solvent_mask).astype(np.float32),
                   refs=refs.astype(np.float32),
                   sigma2=sigma2, tau2=tau2, class_fractions=fractions,
                   labels=labels, posteriors=post, history=state.history + [stats],
                   converged=converged, half_maps=ms.half_maps, fsc=ms.fsc,
                   resolution_A=ms.resolution_A,
                   resolution_status=list(ms.resolution_status), loglik=loglik, unmasked_maps=ms.maps,
                   like_shells=next_like, start=state.start, starts=state.starts,
                   polishing=polishing)


def changed_percent(comm, before: np.ndarray, after: np.ndarray, n_active: int):
    """``(changed %, first assigned)``: the % of the particles that had a class before
    (label >= 0) whose class changed, and how many had none (refinement on all particles
    after exploration on a subset: these are first assignments, not changes). With no
    particle assigned before (a fresh start) every particle counts as changed: 100 %."""
    had = before >= 0
    n_before = int(comm.allreduce_scalar(float(had.sum())))
    if n_before == 0:
        return 100.0, 0
    n_changed = comm.allreduce_scalar(float(np.sum(after[had] != before[had])))
    return n_changed / n_before * 100.0, n_active - n_before


def _link_half_sets(ws: Workspace, ms, post: np.ndarray, fractions: np.ndarray,
                    active: np.ndarray, solvent_mask: np.ndarray, hard: bool, link_res_A: float,
                    k: int) -> np.ndarray:
    """Give half set 2's classes the numbers of the matching half-set-1 classes (compared at
    ``link_res_A``): reorders ``ms.half_maps[1]`` and half set 2's columns of ``post`` (n, K)
    in place. Returns the class fractions (K,), recomputed from ``post`` when reordered."""
    perm = link_halves(ms.half_maps if ms.half_maps_xp is None else ms.half_maps_xp,
                       solvent_mask, ws.data.plan.crop_pixel_size_A, link_res_A)
    if perm is None:
        return fractions
    # class j of half set 2 is class perm[j] of half set 1
    inverse = np.argsort(perm)
    ms.half_maps[1] = ms.half_maps[1][inverse]
    second = ws.data.subset == 2
    post[second] = post[second][:, inverse]
    weights = post[active]
    if hard:
        weights = np.eye(k)[weights.argmax(1)]
    totals = ws.comm.allreduce(weights.sum(0).astype(np.float64))
    return totals / max(totals.sum(), 1e-12)
