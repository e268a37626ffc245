"""One replicate set aside when every other replicate agrees.

A replicate classification starts once (``analysis.REPLICATE_STARTS``, docs/stability.md:
why one), so now and then a single replicate ends in another local optimum. Measured on
bench_stability's ``four_pose`` (four states 12 deg apart, STAR poses off by ~3 deg): at
K = 4 four replicates agree at pairwise ARI 0.97-0.99 and the fifth at 0.42, which pulls
the weakest class's mean Jaccard over the ten replicate pairs to 0.73 (< 0.75), and K = 4
is rejected although every other replicate reproduces it.

Rule (docs/stability.md, "One replicate set aside"): with at least :data:`MIN_REPLICATES`
replicates, a K whose classes are not all stable is scored again without the replicate that
agrees least with the others (lowest mean ARI to them). When the R - 1 others are all
stable (every class: mean Jaccard >= 0.75 and every pair beyond random overlap), the K is
scored on them: its consensus labels, maps and every later test use the R - 1, and the
summary names the replicate set aside (``per_k[K].set_aside``). At most one replicate is
ever set aside, so a K is accepted only when R - 1 of R independent classifications
agree (4 of 5 at the default R = 5); the calibrated tests that follow (distinguishability
against the null, within-class and continuity tests) are unchanged.

The rescoring draws its PAC pairs from the named stream ``("set_aside", k)``, so a run where
no replicate is set aside gives exactly the scores it gave before this rule.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np

from .matching import match_to_reference, relabel
from .replicates import ReplicateRun
from .scores import KScores

MIN_REPLICATES = 5      # fewer replicates: no replicate is ever set aside

Scorer = Callable[[ReplicateRun], KScores]


def least_agreeing(ari: np.ndarray) -> int:
    """Index of the replicate with the lowest mean ARI to the others (the first on ties)."""
    r = ari.shape[0]
    off = np.where(np.eye(r, dtype=bool), np.nan, ari)
    return int(np.nanargmin(np.nanmean(off, axis=1)))


def without_replicate(run: ReplicateRun, drop: int) -> ReplicateRun:
    """``run`` less replicate ``drop`` (every per-replicate array and list)."""
    keep = [r for r in range(run.n_replicates) if r != drop]
    return replace(run, labels=run.labels[keep], posteriors=run.posteriors[keep],
                   maps=run.maps[keep], half_maps=run.half_maps[keep], fsc=run.fsc[keep],
                   resolution_A=run.resolution_A[keep],
                   histories=[run.histories[r] for r in keep], seconds=run.seconds[keep])


def score_setting_aside(run: ReplicateRun, scores: KScores,
                        rescore: Scorer) -> Tuple[ReplicateRun, KScores]:
    """``(run, scores)`` of one K after the rule of the module docstring.

    ``scores`` are ``run``'s scores over all replicates; ``rescore`` scores a run (called at
    most once, on the R - 1 replicates). Returns the inputs unchanged when the rule does not
    apply; otherwise the run without the least-agreeing replicate and its scores, whose
    ``extra["set_aside"]`` records what was set aside and ``set_aside_labels`` its labels in
    the consensus numbering.
    """
    if scores.all_stable or run.n_replicates < MIN_REPLICATES or run.k < 2:
        return run, scores
    drop = least_agreeing(scores.ari)
    others = without_replicate(run, drop)
    kept = rescore(others)
    if not kept.all_stable:
        return run, scores
    keep = [r for r in range(run.n_replicates) if r != drop]
    to_others = float(np.mean([scores.ari[drop, r] for r in keep]))
    among = kept.off_diagonal(kept.ari)
    kept.extra["set_aside"] = {
        "replicate": drop + 1, "replicates_used": [r + 1 for r in keep],
        "mean_ari_to_others": round(to_others, 4), "mean_ari_among_others": round(among, 4),
        "min_class_jaccard_all_replicates": _round(scores.min_class_jaccard)}
    kept.set_aside_labels = relabel(run.labels[drop],
                                    match_to_reference(kept.consensus, run.labels[drop], run.k))
    return others, kept


def _round(x: float) -> Optional[float]:
    return round(float(x), 4) if np.isfinite(x) else None
