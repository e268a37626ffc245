"""Public engine API: ``prepare`` once per dataset (:mod:`hetclass.prepare`, re-exported
here), ``fit`` per classification/replicate, ``reconstruct`` for explicit weights (e.g.
stable cores).

>>> prepared = prepare(particles, ClassifyOptions(classes=4))      # doctest: +SKIP
>>> result = fit(prepared, ClassifyOptions(classes=4), seed=0)     # doctest: +SKIP
>>> result.labels, result.resolution_A                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from . import seeds
from .em import EMState, initial_maps, iterate, m_step, run_pass
from .explore import explore, explore_subset
from .mstep import initial_prior
from .options import ClassifyOptions
from .prepare import PreparedData, prepare, validate_options
from .preprocess import FourierData
from .progress import AbortCheck, Progress

__all__ = ["EMResult", "PreparedData", "ReconResult", "fit", "initial_state", "labelled_state", "prepare",
           "reconstruct", "validate_options"]

SeedLike = seeds.SeedLike
Rows = Union[Sequence[int], np.ndarray]   # particle indices (into the prepared data)


@dataclass
class EMResult:
    rows: np.ndarray            # (n_rows,) particle indices the result refers to
    labels: np.ndarray          # (n_rows,) int64, 0-based
    posteriors: np.ndarray      # (n_rows, K) float32
    log_likelihood: np.ndarray  # (n_rows,) log evidence
    maps: np.ndarray            # (K, b, b, b) float32 unmasked class maps
    half_maps: np.ndarray       # (2, K, b, b, b)
    fsc: np.ndarray             # (K, S)
    resolution_A: np.ndarray    # (K,) NaN where nothing was resolved
    class_fractions: np.ndarray
    pixel_size_A: float
    stats: List[dict]
    state: EMState
    resolution_status: Optional[List[str]] = None  # (K,) hetclass.fsc.RESOLUTION_*


@dataclass
class ReconResult:
    maps: np.ndarray
    half_maps: np.ndarray
    fsc: np.ndarray
    resolution_A: np.ndarray
    pixel_size_A: float
    resolution_status: Optional[List[str]] = None


def _active(data: FourierData, rows: Optional[Rows]) -> np.ndarray:
    """(n_local,) bool: which of this rank's particles are among the global ``rows``."""
    if rows is None:
        return np.ones(len(data), bool)
    active = np.zeros(data.n_total, bool)
    active[np.asarray(rows, dtype=np.int64)] = True
    return active[data.rows]


def scale_references(prepared: PreparedData, refs: np.ndarray, active: np.ndarray,
                     sigma2: np.ndarray) -> np.ndarray:
    """User references scaled to the particles: the mean of the maps' least-squares scales
    against the images themselves (projected at every active particle's pose, times its CTF, weighted by
    ``sigma2`` (G, S) per optics group and shell, every coefficient of the data).

    Fitting onto a reconstruction instead (as before) inherited the reconstruction's Wiener
    shrinkage: true maps came out ~12 % too weak at low resolution.
    """
    from .projector import project
    from .reconstruct import volume_grids
    ws = prepared.workspace
    masked = np.asarray(refs, np.float32) * prepared.solvent_mask
    grids = volume_grids(masked, ws.pad)
    coeffs = prepared.data.coeffs
    shell = np.minimum(coeffs.shell, sigma2.shape[1] - 1)
    k = masked.shape[0]
    num, den = np.zeros(k), np.zeros(k)
    for bi, (rows, _) in enumerate(ws.batches):
        use = active[rows]
        if not use.any():
            continue
        x, c, g = ws.batch_arrays(bi)
        model = project(ws.operator(bi), grids, rows.size, coeffs.size) * c[:, :, None]
        w = (use[:, None] / sigma2[g][:, shell]).astype(np.float32)[:, :, None]
        num += np.sum((x.conj()[:, :, None] * model).real * w, axis=(0, 1))
        den += np.sum((model.real ** 2 + model.imag ** 2) * w, axis=(0, 1))
    num = ws.comm.allreduce(num)
    den = ws.comm.allreduce(den)
    ok = (den > 0) & (num > 0)
    # one scale for all: each map's own fit is pulled down by the particles of the other
    # states (by 6 % between four close states), which would weigh the classes unequally
    scale = float(np.mean(num[ok] / den[ok])) if ok.any() else 1.0
    return np.asarray(refs, np.float32) * np.float32(scale)


def initial_tau2(prepared: PreparedData) -> np.ndarray:
    """The prior spectra every fit starts from: the data's mean power over the CTF power."""
    return initial_prior(prepared.data_power.mean(0) / prepared.ctf_power)


def initial_state(prepared: PreparedData, options: ClassifyOptions, seed: SeedLike,
                  rows: Optional[Rows] = None, progress: Optional[Progress] = None,
                  abort_check: Optional[AbortCheck] = None) -> EMState:
    k = options.classes
    ws = prepared.workspace
    n = len(prepared.data)
    active = _active(prepared.data, rows)
    rng = np.random.default_rng(seeds.root(seed))
    sigma2 = prepared.data_power.copy()
    tau2 = initial_tau2(prepared)
    refs = prepared.references
    if refs is not None:
        refs = scale_references(prepared, refs, active, sigma2)
    half_refs = initial_maps(ws, rng, k, active, sigma2, tau2, options.tau2_fudge,
                             options.init_lowpass_A, prepared.solvent_mask, references=refs,
                             abort_check=abort_check, progress=progress)
    return EMState(iteration=0, maps=half_refs.mean(0), refs=half_refs, sigma2=sigma2, tau2=tau2,
                   class_fractions=np.full(k, 1.0 / k), labels=np.full(n, -1, np.int64))


def labelled_state(prepared: PreparedData, options: ClassifyOptions, labels: np.ndarray,
                   rows: Optional[Rows] = None) -> EMState:
    """A start for :func:`fit` (``state=``) whose ``options.classes`` references are
    reconstructed from a given hard partition instead of random subsets.

    ``labels`` (len(rows), int in [0, K)): the class of each particle of ``rows`` (default
    all), in ascending particle order. Noise and prior are the data's, as in
    :func:`initial_state`.
    """
    from .split_merge import state_from_labels
    data = prepared.data
    idx = (np.arange(data.n_total) if rows is None
           else np.unique(np.asarray(rows, dtype=np.int64)))
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != idx.shape or labels.min(initial=0) < 0 or labels.max(initial=0) >= options.classes:
        raise ValueError(f"labels: {labels.shape[0]} values in [0, {options.classes}) expected "
                         f"for {idx.size} particles")
    full = np.full(data.n_total, -1, np.int64)
    full[idx] = labels
    local = full[data.rows]
    active = _active(data, rows)
    tau2 = initial_tau2(prepared)
    k = int(options.classes)
    empty = np.zeros((2, k, 0, 0, 0), np.float32)      # replaced by state_from_labels
    base = EMState(iteration=0, maps=empty[0], refs=empty, sigma2=prepared.data_power.copy(),
                   tau2=tau2, class_fractions=np.full(k, 1.0 / k),
                   labels=local)
    return state_from_labels(prepared.workspace, options, base, local, active,
                             prepared.solvent_mask, prepared.focus_mask)


def fit(prepared: PreparedData, options: ClassifyOptions, seed: Optional[SeedLike] = None,
        rows: Optional[Rows] = None, progress: Optional[Progress] = None,
        abort_check: Optional[AbortCheck] = None,
        checkpoint: Optional[Callable[[EMState], None]] = None, state: Optional[EMState] = None
        ) -> EMResult:
    """Classify the particles ``rows`` (default all) into ``options.classes`` classes.

    ``seed`` (an int or a ``SeedSequence``, default ``options.seed``) is the root of every
    random draw (:mod:`hetclass.seeds`; it is never advanced, so a caller may reuse it).
    Exploration (:mod:`hetclass.explore`): ``options.n_init`` short hard-assignment starts,
    the best by held-out score kept; refinement: soft EM (gold standard, then full-map
    polishing) until convergence or ``options.max_iter``. ``state`` resumes from a
    checkpointed :class:`EMState` (saved after exploration and after every refinement
    iteration; a run killed during exploration explores again, to the same result).
    """
    data = prepared.data
    validate_options(options, data.n_total if rows is None else len(rows))
    active = _active(data, rows)
    root = seeds.root(options.seed if seed is None else seed)
    if state is None:
        state = _explore(prepared, options, root, rows, progress, abort_check)
        if checkpoint is not None:
            checkpoint(state)
    state = iterate(prepared.workspace, state, options, active, prepared.solvent_mask,
                    prepared.focus_mask, checkpoint=checkpoint, abort_check=abort_check,
                    progress=progress, reseed=(root, state.start))
    # results are global: every rank gets every particle's posteriors
    assert state.posteriors is not None and state.loglik is not None     # set by iterate
    assert state.half_maps is not None and state.fsc is not None and state.resolution_A is not None
    comm = prepared.workspace.comm
    idx = (np.arange(data.n_total) if rows is None
           else np.unique(np.asarray(rows, dtype=np.int64)))
    post = comm.gather_rows(state.posteriors, data.rows, data.n_total)[idx]
    loglik = comm.gather_rows(state.loglik, data.rows, data.n_total)[idx]
    maps = state.unmasked_maps if state.unmasked_maps is not None else state.maps
    return EMResult(rows=idx, labels=post.argmax(1).astype(np.int64), posteriors=post,
                    log_likelihood=loglik, maps=maps, half_maps=state.half_maps,
                    fsc=state.fsc, resolution_A=state.resolution_A,
                    class_fractions=state.class_fractions, pixel_size_A=prepared.pixel_size_A,
                    stats=state.history, state=state,
                    resolution_status=state.resolution_status)


def _explore(prepared: PreparedData, options: ClassifyOptions, root: np.random.SeedSequence,
             rows: Optional[Rows], progress: Optional[Progress],
             abort_check: Optional[AbortCheck]) -> EMState:
    """The state refinement starts from: the best exploration start (:func:`explore`)."""
    data = prepared.data
    everyone = (np.arange(data.n_total) if rows is None
                else np.unique(np.asarray(rows, dtype=np.int64)))
    subset = explore_subset(everyone, data.n_total, root, options.classes)
    keep = subset[data.rows]
    subset_rows = np.flatnonzero(subset)
    # K maps given: every start would be the same
    n_init = 1 if (prepared.references is not None
                   and len(prepared.references) == options.classes) else options.n_init

    def make_start(j: int) -> EMState:
        # the starts' random-subset maps are made from the particles exploration uses
        return initial_state(prepared, options, seeds.stream(root, "init", j), subset_rows,
                             progress, abort_check)

    state, records = explore(prepared.workspace, options, root, keep, make_start,
                             prepared.solvent_mask, prepared.focus_mask, n_init,
                             progress=progress, abort_check=abort_check)
    state.starts = [dataclasses.asdict(r) for r in records]
    return state


def reconstruct(prepared: PreparedData, weights: np.ndarray, rows: Optional[Rows] = None,
                tau2_fudge: float = 4.0, sigma2: Optional[np.ndarray] = None) -> ReconResult:
    """Maps, half maps and FSC resolution from explicit per-particle class weights (n, K)."""
    data = prepared.data
    n = data.n_total
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[:, None]
    if weights.shape[0] != n:
        full = np.zeros((n, weights.shape[1]))
        full[np.asarray(rows)] = weights
        weights = full
    weights = weights[data.rows]   # this rank's particles
    k = weights.shape[1]
    active = _active(data, rows)
    sig = prepared.data_power if sigma2 is None else sigma2
    tau2 = initial_tau2(prepared)
    ws = prepared.workspace
    acc, _, _ = run_pass(ws, None, sig, np.zeros(k), active, False, fixed_weights=weights)
    first = m_step(ws, acc, tau2, tau2_fudge, prepared.solvent_mask, None)
    ms = m_step(ws, acc, np.maximum(first.tau2, 0.0), tau2_fudge, prepared.solvent_mask, None)
    return ReconResult(ms.maps, ms.half_maps, ms.fsc, ms.resolution_A, prepared.pixel_size_A,
                       list(ms.resolution_status))
