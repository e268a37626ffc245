"""Escaping a wrong optimum: merge the two closest classes, split a large one, keep if better.

The wrong optimum seen on close states (six states, four close states) has a recognisable
shape: one large state is cut in two classes while two smaller neighbouring states share
one class. Class sizes look plausible and replicates can agree on it. EM cannot leave it:
moving one class at a time only makes the fit worse on the way.

:func:`split_merge` tries moves that leave it in one step (as in split-and-merge EM,
Ueda et al. 2000), each from the two classes whose maps are closest:

* **merge and split**: the pair becomes one class, and the largest other class is split in
  two by a short two-class hard-assignment fit on its particles alone;
* **re-split**: the pair's particles are shared out anew by such a fit (a boundary between
  two classes in the wrong place, e.g. one state spread over both and another sharing one).

Each moved partition is refined by the same hard-assignment iterations as an exploration
start (gold-standard phase only) and kept only if its held-out score
(:func:`hetclass.explore.heldout_score`: one noise spectrum for all, gold-standard
references) is higher. After a large gain (a change of basin) the moves are tried again from
there, up to :data:`MAX_ROUNDS` rounds. On the six-state stability case
(``benchmarks/bench_stability.py``) the score ranks the partition that splits a large state
and merges two small ones 0.39 nats per particle below the right one.

Randomness: the split's initial halves come from the named stream ``("split_merge", move)``
(``move`` = 16 x round + candidate) of the run's seed, drawn over all particles (the same
whatever the MPI sharding).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from . import seeds
from .em import EMState, initial_maps, iterate, run_pass, scoring_references
from .mstep import m_step

MIN_CLASSES = 3        # with two classes a merge plus a split is only another start
MOVES = 1              # merge moves: the closest pair x the largest other class(es)
MAX_ROUNDS = 3         # rounds of moves at most (each from the move accepted before)
NEXT_ROUND_GAIN = 0.1  # nats per particle: a gain this large was a change of basin; look again


def n_moves(k: int) -> int:
    """How many moves one round of a K-class exploration tries (merge moves, one re-split)."""
    return MOVES + 1 if k >= MIN_CLASSES else 0


@dataclasses.dataclass
class MoveRecord:
    """One tried move (reported in run.json as ``starts[i].moves`` of the kept start)."""

    merged: Tuple[int, int]
    split: Optional[int]    # None: the merged pair itself was split anew
    score: float            # held-out log-evidence gain per particle over the state before
    accepted: bool = False
    round: int = 0


def _closest_pair(state: EMState, mask: np.ndarray) -> Tuple[int, int]:
    """The two classes with the smallest masked squared map difference."""
    maps = np.asarray(state.maps, np.float64) * mask
    k = maps.shape[0]
    flat = maps.reshape(k, -1)
    best, pair = np.inf, (0, 1)
    for a in range(k):
        for b in range(a + 1, k):
            d = float(np.sum((flat[a] - flat[b]) ** 2))
            if d < best:
                best, pair = d, (a, b)
    return pair


def _split_candidates(state: EMState, pair: Tuple[int, int]) -> List[int]:
    """The classes outside ``pair``, largest first (at most :data:`MOVES`)."""
    order = np.argsort(-np.asarray(state.class_fractions), kind="stable")
    return [int(c) for c in order if c not in pair][:MOVES]


def _split(ws, options, state: EMState, members: np.ndarray, solvent_mask, focus_mask, seed,
           move: int, abort_check, progress) -> np.ndarray:
    """(n_local,) labels 0/1 of the ``members`` from a short two-class hard fit (-1
    elsewhere)."""
    rng = seeds.rng(seed, "split_merge", move)
    refs = initial_maps(ws, rng, 2, members, state.sigma2, state.tau2, options.tau2_fudge,
                        options.init_lowpass_A, solvent_mask, abort_check=abort_check)
    start = EMState(iteration=0, maps=refs.mean(0), refs=refs, sigma2=state.sigma2,
                    tau2=state.tau2, class_fractions=np.full(2, 0.5),
                    labels=np.full(members.size, -1, np.int64))
    sub = iterate(ws, start, options, members, solvent_mask, focus_mask, abort_check=abort_check,
                  progress=progress, reseed=(seed, 1000 + move), warn_empty=False, polish=False)
    return np.where(members, sub.labels, -1)


def state_from_labels(ws, options, state: EMState, labels: np.ndarray, active: np.ndarray,
                       solvent_mask, focus_mask) -> EMState:
    """A fresh K-class state whose references are reconstructed from hard ``labels``
    (this rank's particles; -1 or inactive: no class)."""
    k = state.refs.shape[1]
    n = labels.size
    weights = np.zeros((n, k))
    ok = active & (labels >= 0)
    weights[np.flatnonzero(ok), labels[ok]] = 1.0
    acc, _, _ = run_pass(ws, None, state.sigma2, np.zeros(k), active, False,
                         fixed_weights=weights)
    ms = m_step(ws, acc, state.tau2, options.tau2_fudge, solvent_mask, focus_mask)
    fractions = acc.class_weight / max(float(acc.class_weight.sum()), 1e-12)
    refs = scoring_references(ms, fractions, 1, False, focus_mask) * solvent_mask
    return dataclasses.replace(state, iteration=0, maps=(ms.maps * solvent_mask).astype(np.float32),
                               refs=refs.astype(np.float32), class_fractions=fractions,
                               labels=np.where(active, labels, -1), converged=False,
                               history=[])


def _moved_labels(labels: np.ndarray, pair: Tuple[int, int], c: Optional[int],
                  split: np.ndarray) -> np.ndarray:
    """Move ``(pair, c)``: ``pair[1]`` joins ``pair[0]`` and class ``c``'s second half takes
    ``pair[1]``'s number; ``c`` None: the pair's particles are shared out anew (first half
    ``pair[0]``, second half ``pair[1]``)."""
    out = labels.copy()
    if c is None:
        out[split == 0] = pair[0]
    else:
        out[labels == pair[1]] = pair[0]
    out[split == 1] = pair[1]
    return out


def _candidates(state: EMState, mask: np.ndarray) -> List[Tuple[Tuple[int, int], Optional[int]]]:
    """The moves tried: the closest pair merged with the largest other class split, and
    the closest pair's particles split anew (a boundary in the wrong place)."""
    pair = _closest_pair(state, mask)
    return [(pair, c) for c in _split_candidates(state, pair)] + [(pair, None)]


def _one_round(ws, options, seed, state: EMState, active: np.ndarray, solvent_mask,
               focus_mask, score, round_index: int, abort_check, progress):
    """Every candidate move of ``state`` tried once: ``(best state, records)``."""
    tried = []
    for j, (pair, c) in enumerate(_candidates(state, solvent_mask)):
        move = round_index * 16 + j          # the move's named random stream
        members = active & (np.isin(state.labels, pair) if c is None else state.labels == c)
        if ws.comm.allreduce_scalar(float(members.sum())) < 4:
            continue
        split = _split(ws, options, state, members, solvent_mask, focus_mask, seed, move,
                       abort_check, progress)
        start = state_from_labels(ws, options, state, _moved_labels(state.labels, pair, c, split),
                                   active, solvent_mask, focus_mask)
        moved = iterate(ws, start, options, active, solvent_mask, focus_mask,
                        abort_check=abort_check, progress=progress, reseed=(seed, 2000 + move),
                        warn_empty=False, polish=False)
        tried.append((MoveRecord(pair, c, float("nan"), round=round_index), moved))
    if not tried:
        return state, []
    sigma2 = np.mean([state.sigma2] + [m.sigma2 for _, m in tried], axis=0)
    base = score(state, sigma2)
    for rec, moved in tried:
        rec.score = score(moved, sigma2) - base
    best = int(np.argmax([r.score for r, _ in tried]))
    records = [r for r, _ in tried]
    if records[best].score > 0:
        records[best].accepted = True
        return tried[best][1], records
    return state, records


def split_merge(ws, options, seed, state: EMState, active: np.ndarray, solvent_mask,
                focus_mask, score, abort_check=None, progress=None
                ) -> Tuple[EMState, List[MoveRecord]]:
    """The best of ``state`` and its merge-and-split moves by ``score(state, sigma2)``.

    ``options`` are the hard-assignment exploration options; ``state`` a hard-assignment
    state (labels set on ``active``). Rounds of moves continue from the accepted one while
    it gained at least :data:`NEXT_ROUND_GAIN` (at most :data:`MAX_ROUNDS`). Returns
    ``(state, records)``; the state is ``state`` itself when no move scores higher.
    ``progress`` receives the moves' EM iterations.
    """
    if state.refs.shape[1] < MIN_CLASSES:
        return state, []
    records: List[MoveRecord] = []
    for r in range(MAX_ROUNDS):
        state, tried = _one_round(ws, options, seed, state, active, solvent_mask, focus_mask,
                                  score, r, abort_check, progress)
        records += tried
        gains = [t.score for t in tried if t.accepted]
        if not gains or gains[0] < NEXT_ROUND_GAIN:
            break
    return state, records
