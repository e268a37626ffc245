"""Finding the right basin: several short hard-assignment starts, ranked by a held-out score.

EM from random-subset references converges to the optimum nearest to where the noise of
the first iterations pushed it. Two things were measured to matter on close states
(``benchmarks/bench_accuracy.py``):

* **Hard assignments while classes form.** Soft posteriors early on blend every class map
  with every other; EM then settles in a fixed point where each class stays contaminated by
  its neighbours (4 close states: ARI 0.63 from every random start; the same EM started from
  the true maps stays at 0.78). Classification EM (each particle counts for its most probable
  class only) keeps the maps apart while they form and reaches the good fixed point (0.77,
  then 0.785 once soft EM takes over).
* **A score that ranks solutions.** The EM's own log-likelihood cannot rank runs: each run
  re-estimates its noise spectrum from its own residuals, so ``|residual|^2 / sigma^2`` is
  about the number of coefficients whatever the fit (the runs of the 4-state case differed
  by 0.2 in it, in the wrong direction). :func:`heldout_score` scores every start with the
  *same* noise spectrum (the mean of the starts') and gold-standard references (each half set
  against maps made from the other half only, so over-fitted noise is never rewarded): the
  mean log-evidence per particle. On the 4-state case the good solution scores 10 nats per
  particle above the contaminated one.

:func:`explore` runs ``n_init`` starts (random-subset references from the named seed stream
``("init", start)``), each for at most ``EXPLORE_ITER`` hard-assignment iterations at the
resolution the class differences support, scores them, tries the best start's merge-and-split
moves (:mod:`hetclass.split_merge`, K >= 3) and returns the best state.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List

import numpy as np

from . import seeds
from .em import EMState, iterate, run_pass
from .split_merge import split_merge

EXPLORE_ITER = 12           # hard-assignment iterations of one start at most
EXPLORE_CHANGED_PCT = 1.0   # a start has found its basin when fewer labels change
# exploration runs on a random subset of at most max(EXPLORE_MIN_PARTICLES,
# EXPLORE_PARTICLES_PER_CLASS * K) particles (the same for every start); the chosen start then
# refines on all of them. Exploration finds the basin; the refinement on every particle
# finishes it (on 120000 particles of two states: 4 iterations). 5000 per class is more than
# the hardest accuracy cases hold in all (four close states: 8000 particles, 800 in the
# smallest class); at 40000 particles the same ARI as exploring on 20000 (rare, K = 3:
# 0.8470 / 0.8472; ligand, K = 2: 0.7393 / 0.7393).
EXPLORE_MIN_PARTICLES = 10000
EXPLORE_PARTICLES_PER_CLASS = 5000


def explore_size(k: int) -> int:
    """How many particles exploration uses at most for ``k`` classes."""
    return max(EXPLORE_MIN_PARTICLES, EXPLORE_PARTICLES_PER_CLASS * int(k))


@dataclasses.dataclass
class StartRecord:
    """What one exploration start did (reported in run.json)."""

    start: int
    iterations: int
    score: float            # mean held-out log-evidence per particle (nats); NaN if not scored
    class_fractions: List[float]
    selected: bool = False
    moves: List[dict] = dataclasses.field(default_factory=list)   # split-merge moves tried


def explore_subset(active_rows: np.ndarray, n_total: int, seed, k: int) -> np.ndarray:
    """(n_total,) bool over all particles: those exploration uses -- every active one, or a
    random :func:`explore_size` ``(k)`` of them (drawn over the global indices
    ``active_rows``, so every MPI rank makes the same choice)."""
    keep = np.zeros(n_total, bool)
    active_rows = np.asarray(active_rows, dtype=np.int64)
    size = explore_size(k)
    if active_rows.size > size:
        pick = seeds.rng(seed, "explore_subset").permutation(active_rows.size)
        active_rows = active_rows[np.sort(pick[:size])]
    keep[active_rows] = True
    return keep


def heldout_score(ws, state: EMState, sigma2: np.ndarray, active: np.ndarray) -> float:
    """Mean log-evidence per active particle of ``state``'s gold-standard references under
    the noise spectrum ``sigma2`` (an E-step only; see the module docstring)."""
    log_prior = np.log(np.maximum(state.class_fractions, 1e-12))
    acc, _, _ = run_pass(ws, state.refs, sigma2, log_prior, active, False, estep_only=True,
                         like_shells=state.like_shells or None)
    n = max(ws.comm.allreduce_scalar(float(active.sum())), 1.0)
    return float(acc.log_likelihood / n)


def exploration_options(options):
    """``options`` as an exploration start runs them: hard assignment, at most
    :data:`EXPLORE_ITER` iterations, basin found below :data:`EXPLORE_CHANGED_PCT`."""
    return dataclasses.replace(options, hard=True, max_iter=EXPLORE_ITER,
                               convergence_pct=EXPLORE_CHANGED_PCT)


def explore(ws, options, seed, active: np.ndarray, make_start: Callable[[int], EMState],
            solvent_mask, focus_mask, n_init: int, progress=None, abort_check=None):
    """The best of ``n_init`` hard-assignment starts: ``(state, [StartRecord])``.

    ``make_start(j)`` builds start ``j``'s initial state. The returned state is ready for
    soft refinement (iteration counter reset, not converged).
    """
    hard = exploration_options(options)
    states, records = [], []
    for j in range(n_init):
        if progress is not None:
            progress("explore_start", start=j, n_starts=n_init)
        st = make_start(j)
        st = iterate(ws, st, hard, active, solvent_mask, focus_mask, abort_check=abort_check,
                     progress=_tagged(progress, j, n_init), reseed=(seed, j), warn_empty=False,
                     polish=False)
        states.append(st)
        records.append(StartRecord(j, st.iteration, float("nan"),
                                   [float(f) for f in st.class_fractions]))
    best = 0
    if n_init > 1:
        sigma2 = np.mean([s.sigma2 for s in states], axis=0)
        for rec, st in zip(records, states):
            rec.score = heldout_score(ws, st, sigma2, active)
        best = int(np.argmax([r.score for r in records]))
        if progress is not None:
            progress("explore_done", selected=best, scores=[r.score for r in records])
    records[best].selected = True
    moved, moves = split_merge(ws, hard, seed, states[best], active, solvent_mask, focus_mask,
                               lambda st, s2: heldout_score(ws, st, s2, active),
                               abort_check=abort_check, progress=_tagged(progress, best, n_init))
    records[best].moves = [dataclasses.asdict(m) for m in moves]
    chosen = dataclasses.replace(moved, converged=False, polishing=False,
                                 history=[], iteration=0, start=best)
    return chosen, records


def _tagged(progress, start: int, n_init: int):
    """Progress callback that marks exploration iterations (front ends show them apart)."""
    if progress is None:
        return None

    def report(event, **info):
        if event == "iteration":
            info = dict(info, phase="explore", start=start, n_starts=n_init)
        progress(event, **info)
    return report
