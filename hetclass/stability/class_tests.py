"""Tests on consensus classes: are two classes distinguishable, does a class hold more?

* :func:`pairwise_tests` -- for every pair of consensus classes of one K, ``log T`` of their
  maps (:mod:`.distinguish`) averaged over the replicates, against the null at the pair's
  number of particles. A pair within the null is *indistinguishable*: merge suggested.
* :func:`within_class_tests` -- each consensus class classified again at K = 2 on its own
  particles (two fits, seeds ``("within", class, fit)``); its ``log T`` against the null at
  the class's size, the split's reproducibility (weakest-class Jaccard of the two fits),
  whether the split runs along the differences to the other classes (*explained*: a mixture
  with them, e.g. misassigned particles) or a new direction, and the shape of the particles'
  positions along it (:func:`.distinguish.shape_test`). Outcome per class:

  - ``"homogeneous"``: no structure beyond the null;
  - ``"mixes with other classes"``: two groups along the differences to other classes;
  - ``"two states"``: two groups in a new direction -- the class is under-split;
  - ``"continuous"``: a spread of positions along a split that reproduces (a continuum
    inside the class; a spread whose split does not reproduce, as in a class of junk of many
    shapes, is "heterogeneous");
  - ``"heterogeneous"``: structure beyond the null whose shape the data cannot tell.
* :func:`continuity_tests` -- each consensus class and its nearest neighbour (noise-corrected
  map distance) classified again together at K = 2 (one fit, seed ``("pair", a, b)``): are
  their particles two groups along the difference, or one spread without a gap between the
  classes (:func:`.distinguish.shape_test`)? Reproducible, distinguishable classes that bin
  a continuum pass every other test; this one tells them from discrete states.

The average of the replicates' statistics varies less than one classification's, so the
p-values against the null of single classifications are conservative.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import seeds
from .distinguish import NullModel, log_ratio_matrix, replicate_log_ratios, shape_test, split_log_ratio, split_positions
from .verdict import _r, map_distances

WITHIN_FITS = 2
MIN_WITHIN_PARTICLES = 200       # smaller classes are not classified again
# A pair of a K >= 3 fit whose p-value is at least this is classified again on its own and
# judged by that fit (:func:`pairs_to_confirm`): the null calibrates K = 2 fits on their own,
# and inside a K-class fit the statistic is inflated (likely because the pair's maps also
# hold other classes' particles by their soft weights): on three_pose (new draw) the rest
# state, cut in two by its pose errors, gave log T
# 0.42 at K = 4 but -0.05 alone on the same partition (96 % agreement), against the null's
# -0.27 +- 0.09. A pair beyond 1e-4 stays beyond alpha after such an inflation at the sizes
# where the null scatters little; where it scatters more, p < 1e-4 is out of reach and every
# distinguishable pair is confirmed.
CONFIRM_P = 1e-4
EXPLAINED_FRACTION = 0.5         # of the split's map difference, along other classes


def _aligned(null_model: Optional[NullModel]) -> bool:
    """Whether statistics tested against ``null_model`` are taken after a rigid motion."""
    return bool(null_model is not None and null_model.aligned)


def pairwise_tests(run, scores, null_model: Optional[NullModel], mask=None,
                   alpha: float = 0.01) -> dict:
    """Distinguishability of every pair of consensus classes at ``run.k``.

    Returns ``{"k", "pairs": [{"classes", "particles", "log_ratio", "p_value",
    "distinguishable"}], "all_distinguishable", "merge": [[a, b], ...]}`` (1-based classes;
    ``distinguishable`` None without a null).
    """
    k = run.k
    lr = replicate_log_ratios(run.maps, run.half_maps, scores.perms, mask, _aligned(null_model))
    pairs = []
    for a in range(k):
        for b in range(a + 1, k):
            sizes = [int(np.sum(np.isin(row, (a, b)))) for row in scores.aligned]
            n_pair = float(np.mean(sizes))
            vals = lr[:, a, b][np.isfinite(lr[:, a, b])]
            value = float(vals.mean()) if vals.size else float("nan")
            p = null_model.p_value(value, n_pair) if null_model is not None else float("nan")
            dist = None if not np.isfinite(p) else bool(p < alpha)
            pairs.append({"classes": [a + 1, b + 1], "particles": int(round(n_pair)),
                          "log_ratio": _r(value), "p_value": _r(p, 6), "distinguishable": dist})
    return _pair_summary(k, alpha, pairs)


def _pair_summary(k: int, alpha: float, pairs: List[dict]) -> dict:
    """One K's distinguishability record from its pairs: whether all known pairs are
    distinguishable (None when none is known) and the pairs to merge."""
    known = [p["distinguishable"] for p in pairs if p["distinguishable"] is not None]
    return {"k": k, "alpha": alpha, "pairs": pairs,
            "all_distinguishable": None if not known else bool(all(known)),
            "merge": [p["classes"] for p in pairs if p["distinguishable"] is False]}


def pairs_to_confirm(tests: dict) -> List[tuple]:
    """0-based class pairs of one K's :func:`pairwise_tests` to classify again on their own:
    distinguishable in the K-class fit at a p-value of at least :data:`CONFIRM_P`, not yet
    confirmed. At K = 2 the one pair is the fit itself (nothing to confirm)."""
    if tests["k"] < 3:
        return []
    return [(p["classes"][0] - 1, p["classes"][1] - 1) for p in tests["pairs"]
            if p["distinguishable"] and "in_k_fit" not in p
            and p["p_value"] is not None and p["p_value"] >= CONFIRM_P]


def apply_confirmations(tests: dict, fits: Dict[tuple, Any], null_model: NullModel,
                        mask=None) -> dict:
    """``tests`` (one K's :func:`pairwise_tests`) with each pair of ``fits`` (0-based pair ->
    its particles classified again at K = 2, :func:`pair_fits`) judged by that fit: the
    pair's ``log_ratio``, ``p_value``, ``particles`` and ``distinguishable`` become the
    refit's, the K-class fit's go to ``in_k_fit``. A refit whose split collapsed (a class
    under :data:`.distinguish.MIN_CLASS_FRACTION`) is indistinguishable: the pair's
    particles do not hold two classes. ``merge`` and ``all_distinguishable`` follow."""
    alpha = tests["alpha"]
    aligned = _aligned(null_model)
    pairs = []
    for pair in tests["pairs"]:
        key = (pair["classes"][0] - 1, pair["classes"][1] - 1)
        if key not in fits:
            pairs.append(pair)
            continue
        res = fits[key]
        n = int(np.asarray(res.labels).size)
        value = split_log_ratio(res, mask, aligned)
        p = null_model.p_value(value, n) if np.isfinite(value) else float("nan")
        pairs.append({**pair, "particles": n, "log_ratio": _r(value), "p_value": _r(p, 6),
                      "distinguishable": bool(np.isfinite(p) and p < alpha),
                      "in_k_fit": {"particles": pair["particles"],
                                   "log_ratio": pair["log_ratio"],
                                   "p_value": pair["p_value"]}})
    return _pair_summary(tests["k"], alpha, pairs)


def within_keys(classes: Sequence[int]) -> List[str]:
    return [f"within_c{c + 1}_f{f}" for c in classes for f in range(WITHIN_FITS)]


def within_class_fits(prepared, options, members: Dict[int, np.ndarray], seed,
                      run: Callable, fit=None) -> Dict[int, list]:
    """Classify the particles of each class (``members``: class -> global rows) at K = 2,
    :data:`WITHIN_FITS` times; ``{class: [compact results]}`` (with positions along the
    split). ``run(keys, one)`` runs the tasks."""
    if fit is None:
        from ..engine import fit
    plan = {key: (c, f) for c in members for key, f in
            zip(within_keys([c])[:WITHIN_FITS], range(WITHIN_FITS))}

    def one(key, check):
        c, f = plan[key]
        return _split_fit(prepared, options, members[c], seeds.stream(seed, "within", c, f),
                          check, fit)

    results = run(list(plan), one)
    return {c: [results[k][0] for k in within_keys([c])] for c in members}


def _split_fit(prepared, options, rows: np.ndarray, seed, check, fit,
               start_labels: Optional[np.ndarray] = None):
    """The particles ``rows`` (sorted) classified at K = 2: the compact result, with each
    particle's position along the split and its effective separation when the fit has a
    state. ``start_labels`` (0/1 per row): EM starts from that partition (its references
    reconstructed from it) instead of exploring random starts."""
    from ..engine import labelled_state
    from .tasks import compact
    from .views import subset_view
    view = subset_view(prepared, rows, device=options.device)
    two = replace(options, classes=2)
    if start_labels is None:
        res = fit(view, two, seed=seed, abort_check=check)
    else:
        res = fit(view, two, seed=seed, abort_check=check,
                  state=labelled_state(view, two, start_labels))
    out = compact(res)
    state = getattr(res, "state", None)
    if state is not None and getattr(state, "refs", None) is not None:
        out.position, out.separation = split_positions(view, state)
    return out


def neighbour_pairs(maps: np.ndarray, half_maps: np.ndarray, sizes: Dict[int, int],
                    mask=None, min_particles: int = MIN_WITHIN_PARTICLES) -> List[tuple]:
    """Each class with at least ``min_particles`` and its nearest such class by the
    noise-corrected map distance: sorted, distinct ``(a, b)`` pairs (0-based)."""
    big = [c for c in range(maps.shape[0]) if sizes.get(c, 0) >= min_particles]
    if len(big) < 2:
        return []
    dist = map_distances(maps, half_maps, mask)[0]
    pairs = set()
    for c in big:
        others = [d for d in big if d != c]
        d = min(others, key=lambda j: (dist[c, j], j))
        pairs.add((min(c, d), max(c, d)))
    return sorted(pairs)


def pair_members(consensus: np.ndarray, base: np.ndarray, pairs):
    """``(members, starts)`` of class ``pairs`` (0-based) of a consensus labelling of
    ``base`` (global rows): each pair's sorted global rows and its own partition (0/1 per
    row), the input of :func:`pair_fits`."""
    order = np.argsort(base)                  # pair fits take sorted rows
    rows, labels = np.asarray(base)[order], np.asarray(consensus)[order]
    inside = {pair: np.isin(labels, pair) for pair in pairs}
    members = {pair: rows[inside[pair]] for pair in pairs}
    starts = {pair: (labels[inside[pair]] == pair[1]).astype(np.int64) for pair in pairs}
    return members, starts


def pair_key(pair: tuple, prefix: str = "pair") -> str:
    return f"{prefix}_c{pair[0] + 1}_c{pair[1] + 1}"


def pair_fits(prepared, options, members: Dict[tuple, np.ndarray], seed, run: Callable,
              fit=None, start_labels: Optional[Dict[tuple, np.ndarray]] = None,
              confirm_k: Optional[int] = None) -> Dict[tuple, Any]:
    """Classify the particles of each class pair (``members``: pair -> sorted global rows)
    at K = 2 once; ``{pair: compact result}`` with positions along the split.
    ``start_labels`` (pair -> 0/1 per row): each fit starts from the pair's own partition
    (the consensus boundary) and EM moves it from there. ``confirm_k``: the fits confirm
    pairs of that K (:func:`pairs_to_confirm`; their own task keys and seed stream)."""
    if fit is None:
        from ..engine import fit
    prefix = "pair" if confirm_k is None else f"confirm_k{confirm_k}"
    plan = {pair_key(pair, prefix): pair for pair in members}
    starts = start_labels or {}

    def one(key, check):
        pair = plan[key]
        stream = (seeds.stream(seed, "pair", *pair) if confirm_k is None
                  else seeds.stream(seed, "confirm", confirm_k, *pair))
        return _split_fit(prepared, options, members[pair], stream, check, fit,
                          starts.get(pair))

    results = run(list(plan), one)
    return {pair: results[key][0] for key, pair in plan.items()}


def confirm_pairs(prepared, options, tests: dict, consensus: np.ndarray, base: np.ndarray,
                  seed, run: Callable, null_model: NullModel, mask=None, fit=None) -> dict:
    """``tests`` (one K's :func:`pairwise_tests` of the consensus labelling ``consensus`` of
    ``base``) with its borderline pairs (:func:`pairs_to_confirm`) classified again on their
    own particles from their consensus boundary (:func:`pair_fits`) and judged by that fit
    (:func:`apply_confirmations`); ``tests`` itself when there is none. ``run`` runs the
    fits' tasks (keys, one) -> {key: result}."""
    todo = pairs_to_confirm(tests)
    if not todo:
        return tests
    members, starts = pair_members(consensus, base, todo)
    fits = pair_fits(prepared, options, members, seed, run=run, fit=fit, start_labels=starts,
                     confirm_k=tests["k"])
    return apply_confirmations(tests, fits, null_model, mask)


def continuity_tests(fits: Dict[tuple, Any]) -> dict:
    """One record per tested pair: ``{"a-b": {"classes", "particles", "shape", "outcome"}}``
    (1-based). Outcome "continuous" (one spread: the two classes bin a continuum),
    "two groups" (discrete) or "undetermined"."""
    out = {}
    for (a, b), res in sorted(fits.items()):
        position = getattr(res, "position", None)
        shape = (shape_test(position, res.separation) if position is not None
                 else {"shape": "undetermined"})
        outcome = {"spread": "continuous", "two groups": "two groups"}.get(shape["shape"],
                                                                          "undetermined")
        out[f"{a + 1}-{b + 1}"] = {"classes": [a + 1, b + 1],
                                   "particles": int(np.asarray(res.labels).size),
                                   "shape": shape, "outcome": outcome}
    return out


def _explained(sub_maps, sub_halves, consensus_maps, c: int, mask) -> float:
    """Share of the (noise-corrected) squared difference of the two sub-class maps that lies
    along the differences between class ``c`` and the other consensus classes."""
    k = consensus_maps.shape[0]
    if k < 2:
        return float("nan")
    allmaps = np.concatenate([np.asarray(sub_maps, np.float64),
                              np.asarray(consensus_maps, np.float64)])
    _, _, noise2, x = map_distances(allmaps, None, mask)
    _, _, sub_noise2, _ = map_distances(sub_maps, sub_halves, mask)
    d = x[0] - x[1]
    basis = np.stack([x[2 + j] - x[2 + c] for j in range(k) if j != c], axis=1)
    q, _ = np.linalg.qr(basis)
    along = q @ (q.T @ d)
    total = float(d @ d) - float(sub_noise2.sum())
    perp = float((d - along) @ (d - along)) - float(sub_noise2.sum())
    if total <= 0:
        return float("nan")
    return float(np.clip(1.0 - max(perp, 0.0) / total, 0.0, 1.0))


def within_class_tests(fits: Dict[int, list], consensus_maps: np.ndarray, sizes: Dict[int, int],
                       null_model: Optional[NullModel], mask=None, alpha: float = 0.01,
                       stable_jaccard: float = 0.75) -> dict:
    """One record per tested class (1-based ``class``); see the module docstring."""
    from scipy.optimize import linear_sum_assignment

    from .scores import jaccard_matrix
    out = {}
    for c, results in sorted(fits.items()):
        values = [split_log_ratio(res, mask, _aligned(null_model)) for res in results]
        finite = [v for v in values if np.isfinite(v)]
        stat = float(np.mean(finite)) if finite else float("nan")
        p = null_model.p_value(stat, sizes[c]) if null_model is not None else float("nan")
        a, b = results[0].labels, results[1].labels
        jm = jaccard_matrix(a, b, 2, 2)
        rr, cc = linear_sum_assignment(np.nan_to_num(jm), maximize=True)
        jac = float(np.nanmin(jm[rr, cc]))
        first = results[0]
        shape = (shape_test(first.position, first.separation)
                 if getattr(first, "position", None) is not None else {"shape": "undetermined"})
        explained = _explained(first.maps, first.half_maps, consensus_maps, c, mask)
        outcome = _outcome(p, alpha, shape["shape"], explained, jac, stable_jaccard)
        out[str(c + 1)] = {
            "class": c + 1, "particles": int(sizes[c]),
            "log_ratio": [_r(v) for v in values], "p_value": _r(p, 6),
            "beyond_null": None if not np.isfinite(p) else bool(p < alpha), "alpha": _r(alpha, 6),
            "split_jaccard": _r(jac), "split_fractions": [
                _r(np.mean(np.asarray(res.labels) == j), 3) for res in results[:1] for j in (0, 1)],
            "along_other_classes": _r(explained), "shape": shape, "outcome": outcome}
    return out


def _outcome(p: float, alpha: float, shape: str, explained: float, jaccard: float,
             stable_jaccard: float) -> str:
    if not np.isfinite(p) or p >= alpha:
        return "homogeneous"
    if shape == "spread":
        # a continuum inside a class bins the same way in both fits; a class of mixed
        # shapes (junk) also spreads, but its split does not reproduce
        reproducible = np.isfinite(jaccard) and jaccard >= stable_jaccard
        return "continuous" if reproducible else "heterogeneous"
    along = np.isfinite(explained) and explained >= EXPLAINED_FRACTION
    if shape == "two groups":
        return "mixes with other classes" if along else "two states"
    if not along and np.isfinite(jaccard) and jaccard >= stable_jaccard:
        return "two states"
    return "heterogeneous"


__all__ = ["pairwise_tests", "within_class_fits", "within_class_tests", "within_keys",
           "log_ratio_matrix", "neighbour_pairs", "pair_fits", "continuity_tests", "pair_key",
           "confirm_pairs"]
