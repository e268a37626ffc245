"""Choosing K and diagnosing discrete versus continuous heterogeneity.

:func:`recommended_k` -- the largest K whose classes are all stable (mean Jaccard >= 0.75)
and pass the random-overlap test for every replicate pair; 1 when no split is reproducible.

:func:`heterogeneity_verdict` -- "homogeneous" | "discrete" | "continuous" | "mixed" from
six pieces of evidence, each returned with its numbers:

(a) ``stability_vs_k``: the weakest class's mean Jaccard per K. A plateau of stable K
    followed by a drop (or a plateau up to the largest K tried) is discrete-like; a
    gradual decline without a step of at least ``drop_min`` is continuous-like.
(b) ``neighbour_disagreement``: replicate disagreement (off-diagonal confusion summed over
    replicate pairs) after ordering the classes along the first principal component of
    their maps; "concentrated" when most of it sits between neighbouring classes.
(c) ``map_path``: class maps on a one-dimensional path: noise-corrected map distance
    grows with the distance in the PC1 order (Spearman), the two ends are much further
    apart than neighbours, and the steps along the order are even (no dominant gap, which
    is what an over-split discrete state gives: two near-identical maps and one big jump).
(d) ``posterior_spread``: mean max posterior and per-particle stability at the largest K.
(e) ``split_map_signal``: for the smallest K >= 2, do the class maps differ beyond their
    half-map noise, and is the split better than chance?
(f) ``map_extrapolation``: do the classes of the largest K reach beyond the maps of the
    recommended K (finer bins of a continuum are more extreme than coarse ones; finer
    splits of discrete states only re-mix them)?

Decision (thresholds in :class:`Thresholds`):

* K_rec = 1: "continuous" if (e) finds structure, or the maps lie on a path (c), or the
  stability decays smoothly with disagreement between neighbours (a, b): structural
  variability that no K separates reproducibly. Otherwise "homogeneous".
* K_rec >= 2: "continuous" if the largest-K classes extrapolate beyond the K_rec maps
  (f), or if the largest-K maps lie on one path (c) with no sharp stability drop after
  K_rec (a) and that K either exceeds K_rec or is not highly stable (>= 0.85; discrete
  states that happen to lie on a line stay "discrete" -- scan a larger K to tell). A path
  after a sharp drop is not taken as a continuum: over-split discrete states give mixture
  maps on the line between the states. "mixed" if the children (>= 3) of one K_rec class
  at a larger K lie on a path. Otherwise "discrete".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy.stats import spearmanr

from .matching import contingency, parent_of_classes
from .scores import KScores


@dataclass(frozen=True)
class Thresholds:
    stable_jaccard: float = 0.75
    highly_stable_jaccard: float = 0.85
    unstable_jaccard: float = 0.6
    drop_min: float = 0.2             # a stability step this large ends a plateau
    path_spearman: float = 0.7
    path_far_near: float = 1.5
    path_gap_ratio: float = 3.0       # max / min step along the order
    path_end_snr: float = 3.0         # ends: signal^2 / noise^2
    split_map_snr: float = 1.0        # (e): class maps differ beyond noise ...
    split_jaccard_above_chance: float = 0.1   # ... with a split better than chance
    split_map_snr_strong: float = 2.0  # (e) on its own
    extrapolation_min: float = 0.03   # (f)
    extrapolation_z: float = 3.0
    band_excess: float = 0.2          # band fraction must exceed the uniform 2/K by this
    band_min: float = 0.7
    spread_max_posterior: float = 0.8
    alpha: float = 0.01               # significance level of every test against the null
    #                                   (the K_rec within-class tests share it: alpha / tests)


def recommended_k(per_k: Mapping[int, KScores]) -> int:
    """Largest K whose classes all hold particles, are stable and pass every random-overlap
    test."""
    good = [k for k, s in per_k.items() if k >= 2 and s.all_stable]
    return max(good) if good else 1


def _r(x, digits=4):
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if np.isfinite(x) else None


def stability_curve(per_k: Mapping[int, KScores], th: Thresholds = Thresholds()) -> dict:
    """Evidence (a): weakest-class Jaccard per K and the shape of the curve.

    ``shape``: "plateau_then_drop", "plateau" (stable up to the largest K tried),
    "smooth_decay", "no_stable_split" (the smallest K >= 2 tried is unstable), or
    "single_k" (one K >= 2 tried and stable: shape unknown).
    """
    ks = sorted(k for k in per_k if k >= 2)
    curve = {k: per_k[k].min_class_jaccard for k in ks}
    mean_curve = {k: per_k[k].mean_class_jaccard for k in ks}
    plateau_k = None
    for k in ks:
        if per_k[k].all_stable:
            plateau_k = k
        else:
            break
    drops = {f"{a}->{b}": _r(curve[a] - curve[b]) for a, b in zip(ks, ks[1:])}
    if not ks:
        shape = "single_k"
    elif curve[ks[0]] < th.unstable_jaccard or not np.isfinite(curve[ks[0]]):
        shape = "no_stable_split"
    elif len(ks) == 1:
        shape = "single_k"
    elif plateau_k is not None and plateau_k == ks[-1]:
        shape = "plateau"
    else:
        steps = np.array([curve[a] - curve[b] for a, b in zip(ks, ks[1:])])
        after = ks.index(plateau_k) if plateau_k is not None else None
        if after is not None and steps[after] >= th.drop_min:
            shape = "plateau_then_drop"
        else:
            shape = "smooth_decay"
    return {"min_class_jaccard_by_k": {str(k): _r(v) for k, v in curve.items()},
            "mean_class_jaccard_by_k": {str(k): _r(v) for k, v in mean_curve.items()},
            "plateau_up_to_k": plateau_k, "drops": drops, "drop_min": th.drop_min,
            "shape": shape}


def _sphere_mask(box: int) -> np.ndarray:
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return (x * x + y * y + z * z) <= (0.45 * box) ** 2


def map_distances(maps: np.ndarray, half_maps: Optional[np.ndarray] = None,
                  mask: Optional[np.ndarray] = None):
    """Noise-corrected distances between class maps.

    ``maps`` (K, b, b, b); ``half_maps`` (2, K, b, b, b) or None; ``mask`` (b, b, b) weights
    (default a sphere of radius 0.45 b). Each map is made zero-mean inside the mask and
    divided by its norm; ``raw2[i, j]`` is the squared distance of the normalised maps
    (= 2 (1 - Pearson correlation)). The noise of map i, ``noise2[i] = |h1 - h2|^2 / 4``
    in the same normalisation, is subtracted: ``signal2 = max(raw2 - noise2_i - noise2_j, 0)``
    is the squared distance of the noise-free maps (independent particles, independent
    noise). Without half maps ``noise2`` is 0.

    Returns ``(signal (K, K) = sqrt(signal2), raw2, noise2 (K,), x (K, V) normalised maps)``.
    """
    maps = np.asarray(maps, dtype=np.float64)
    k, b = maps.shape[0], maps.shape[-1]
    w = _sphere_mask(b).astype(np.float64) if mask is None else np.asarray(mask, np.float64)
    sel = w > 0
    x = maps[:, sel] * w[sel]
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    x = x / norm
    raw2 = np.maximum(2.0 - 2.0 * np.clip(x @ x.T, -1.0, 1.0), 0.0)
    noise2 = np.zeros(k)
    if half_maps is not None:
        h = np.asarray(half_maps, dtype=np.float64)
        diff = (h[0][:, sel] - h[1][:, sel]) * w[sel]
        noise2 = (np.linalg.norm(diff, axis=1) ** 2 / 4.0) / norm[:, 0] ** 2
    signal2 = np.maximum(raw2 - noise2[:, None] - noise2[None, :], 0.0)
    np.fill_diagonal(signal2, 0.0)
    return np.sqrt(signal2), raw2, noise2, x


def map_path(maps: np.ndarray, half_maps: Optional[np.ndarray] = None,
             mask: Optional[np.ndarray] = None, th: Thresholds = Thresholds()) -> dict:
    """Evidence (c) from class maps (K, b, b, b): do they lie on a one-dimensional path?

    Distances are the noise-corrected ones of :func:`map_distances` (half maps give the
    noise). Classes are ordered by their first principal component score. A path needs:
    distance increasing with separation along the order (Spearman >= ``path_spearman``),
    the two ends at least ``path_far_near`` times further apart than the mean step,
    even steps (max/min <= ``path_gap_ratio``; a near-zero step -- two classes whose maps
    differ by noise only, i.e. an over-split state -- fails this), and the ends differing
    beyond noise (signal^2 / noise^2 >= ``path_end_snr``). Returns the numbers, ``order``
    (class indices along the path) and ``is_path``.
    """
    dist, raw2, noise2, x = map_distances(maps, half_maps, mask)
    k = dist.shape[0]
    centred = x - x.mean(axis=0, keepdims=True)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vt[0]
    order = np.argsort(scores, kind="stable")
    var = sv ** 2
    out = {"k": k, "order": order.tolist(),
           "pc1_variance_fraction": _r(var[0] / var.sum()) if var.sum() > 0 else None,
           "distance_matrix": np.round(dist, 5).tolist(),
           "noise_squared": [_r(v, 5) for v in noise2], "is_path": False,
           "informative": k >= 3}
    if k < 3:
        return out
    d = dist[np.ix_(order, order)]
    iu = np.triu_indices(k, 1)
    sep = (iu[1] - iu[0]).astype(float)
    rho = spearmanr(sep, d[iu]).correlation if np.ptp(d[iu]) > 0 else np.nan
    steps = np.diag(d, 1)
    near = steps.mean()
    a, z = order[0], order[-1]
    far = d[0, k - 1]
    end_noise = noise2[a] + noise2[z]
    end_snr = far ** 2 / end_noise if end_noise > 0 else np.inf
    far_near = far / near if near > 0 else np.inf
    gap_ratio = steps.max() / steps.min() if steps.min() > 0 else np.inf
    is_path = bool(np.isfinite(rho) and rho >= th.path_spearman
                   and np.isfinite(far_near) and far_near >= th.path_far_near
                   and gap_ratio <= th.path_gap_ratio and end_snr >= th.path_end_snr)
    out.update({"spearman_distance_vs_separation": _r(rho), "far_near_ratio": _r(far_near),
                "step_distances": [_r(s, 5) for s in steps], "step_gap_ratio": _r(gap_ratio),
                "end_signal_to_noise": _r(end_snr), "is_path": is_path})
    return out


def map_signal(maps: np.ndarray, half_maps: np.ndarray, mask: Optional[np.ndarray] = None,
               min_class_jaccard: Optional[float] = None, th: Thresholds = Thresholds()) -> dict:
    """Evidence (e): is there real structure behind a split that does not reproduce?

    ``signal^2 / noise^2`` per class pair from :func:`map_distances` (squared distance of
    the noise-free maps over the summed half-map noise): classes of homogeneous data differ
    by noise only (ratio below 1). ``min_class_jaccard`` of the split is compared with the
    chance level ``1 / (2K - 1)`` (two random partitions into K equal classes). Structure:
    ratio >= ``split_map_snr_strong``, or ratio >= ``split_map_snr`` together with a
    Jaccard of at least ``split_jaccard_above_chance`` above chance.
    """
    dist, _, noise2, _ = map_distances(maps, half_maps, mask)
    k = dist.shape[0]
    iu = np.triu_indices(k, 1)
    denom = (noise2[:, None] + noise2[None, :])[iu]
    ratio = np.where(denom > 0, dist[iu] ** 2 / np.where(denom > 0, denom, 1), np.inf)
    best = float(ratio.max()) if ratio.size else float("nan")
    chance = 1.0 / (2 * k - 1)
    above = bool(min_class_jaccard is not None and np.isfinite(min_class_jaccard)
                 and min_class_jaccard >= chance + th.split_jaccard_above_chance)
    strong = bool(np.isfinite(best) and best >= th.split_map_snr_strong)
    weak = bool(np.isfinite(best) and best >= th.split_map_snr)
    return {"k": k, "pair_signal_to_noise": [_r(v, 3) for v in ratio],
            "max_signal_to_noise": _r(best, 3), "min_class_jaccard": _r(min_class_jaccard),
            "chance_jaccard": _r(chance), "jaccard_above_chance": above,
            "thresholds": {"signal_to_noise": th.split_map_snr,
                           "signal_to_noise_strong": th.split_map_snr_strong,
                           "jaccard_above_chance": th.split_jaccard_above_chance},
            "beyond_noise": strong or (weak and above)}


def map_extrapolation(coarse_maps: np.ndarray, fine_maps: np.ndarray, fine_half_maps: np.ndarray,
                      mask: Optional[np.ndarray] = None, th: Thresholds = Thresholds(),
                      empty_fine: Sequence[int] = ()) -> dict:
    """Evidence (f): do classes of a finer K reach beyond the classes of the coarser K?

    Each fine map is fitted (least squares, with a constant) by the coarse maps; a negative
    coefficient means the fine class lies beyond the coarse ones. Splitting a discrete state
    more finely only re-mixes the states (coefficients within [0, 1] up to noise); binning a
    continuum more finely gives end classes more extreme than the coarse bins, whose maps
    average over a wider range. The coefficient's noise is half the difference of the fits
    of the two half maps. Significant when the largest extrapolation exceeds both
    ``extrapolation_min`` and ``extrapolation_z`` times its noise. Fine classes in
    ``empty_fine`` (1-based; no particle holds them in the consensus) have no map of
    their own to compare and are listed as ``"empty"``.
    """
    coarse = np.asarray(coarse_maps, dtype=np.float64)
    fine = np.asarray(fine_maps, dtype=np.float64)
    halves = np.asarray(fine_half_maps, dtype=np.float64)
    b = coarse.shape[-1]
    w = _sphere_mask(b).astype(np.float64) if mask is None else np.asarray(mask, np.float64)
    sel = w > 0

    def vec(m):
        v = m[sel] * w[sel]
        return v - v.mean()

    a = np.stack([vec(m) for m in coarse] + [np.ones(int(sel.sum()))], axis=1)
    rows: List[dict] = []
    empty = {int(c) for c in empty_fine}
    for c in range(fine.shape[0]):
        if c + 1 in empty:
            rows.append({"class": c + 1, "empty": True, "extrapolation": None,
                         "significant": False})
            continue
        coef = np.linalg.lstsq(a, vec(fine[c]), rcond=None)[0][:-1]
        ch = [np.linalg.lstsq(a, vec(halves[h, c]), rcond=None)[0][:-1] for h in range(2)]
        noise = np.abs(ch[0] - ch[1]) / 2.0
        j = int(np.argmin(coef))
        rows.append({"class": c + 1, "coefficients": [_r(v) for v in coef],
                     "extrapolation": _r(-coef[j]), "noise": _r(noise[j]),
                     "beyond_coarse_class": j + 1, "mostly_coarse_class": int(np.argmax(coef)) + 1,
                     "significant": _beyond(-coef[j], noise[j], th)})
    best = max(rows, key=lambda r: r["extrapolation"] or -np.inf) if rows else None
    significant = bool(best is not None and best["extrapolation"] is not None
                       and _beyond(best["extrapolation"], best["noise"] or 0.0, th))
    return {"coarse_k": coarse.shape[0], "fine_k": fine.shape[0], "classes": rows,
            "max_extrapolation": None if best is None else best["extrapolation"],
            "thresholds": {"min": th.extrapolation_min, "z": th.extrapolation_z},
            "significant": significant}


def _beyond(extrapolation: float, noise: float, th: Thresholds) -> bool:
    """An extrapolation that counts: at least ``extrapolation_min`` and ``extrapolation_z``
    times its noise."""
    return bool(extrapolation >= th.extrapolation_min
                and extrapolation >= th.extrapolation_z * noise)


def neighbour_disagreement(aligned: np.ndarray, k: int, order, th: Thresholds = Thresholds()) -> dict:
    """Evidence (b): share of replicate disagreement between neighbouring classes.

    ``aligned`` (R, n) replicate labels in consensus numbering; ``order`` the class order
    (e.g. along the map path). The confusion of every replicate pair is summed and
    symmetrised; ``band_fraction`` is the off-diagonal mass on the first off-diagonals
    after reordering, to compare with ``uniform_expectation`` = 2 / K.
    """
    aligned = np.asarray(aligned)
    r = aligned.shape[0]
    conf = np.zeros((k, k))
    for i in range(r):
        for j in range(i + 1, r):
            t = contingency(aligned[i], aligned[j], k, k)
            conf += t + t.T
    order = np.asarray(order)
    conf = conf[np.ix_(order, order)]
    off = conf.sum() - np.trace(conf)
    band = np.trace(conf, 1) + np.trace(conf, -1)
    expected = 2.0 / k if k >= 2 else 1.0
    frac = band / off if off > 0 else np.nan
    concentrated = bool(k >= 3 and np.isfinite(frac)
                        and frac >= max(th.band_min, expected + th.band_excess))
    total = conf.sum()
    return {"k": k, "order": order.tolist(), "disagreement_fraction": _r(off / total if total else np.nan),
            "band_fraction": _r(frac), "uniform_expectation": _r(expected),
            "concentrated": concentrated, "informative": k >= 3}


def posterior_spread(scores: KScores, th: Thresholds = Thresholds()) -> dict:
    """Evidence (d): per-particle posterior spread and stability for one K."""
    mp = scores.max_posterior[np.isfinite(scores.max_posterior)]
    ps = scores.particle_stability[np.isfinite(scores.particle_stability)]
    mean_mp = mp.mean() if mp.size else np.nan
    return {"k": scores.k, "mean_max_posterior": _r(mean_mp),
            "fraction_max_posterior_below_0.9": _r((mp < 0.9).mean() if mp.size else np.nan),
            "mean_particle_stability": _r(ps.mean() if ps.size else np.nan),
            "fraction_particle_stability_below_0.8": _r((ps < 0.8).mean() if ps.size else np.nan),
            "high": bool(np.isfinite(mean_mp) and mean_mp < th.spread_max_posterior)}


@dataclass
class Verdict:
    recommended_k: int
    heterogeneity: str                  # "homogeneous" | "discrete" | "continuous" | "mixed"
    evidence: dict
    reasons: list
    affected: np.ndarray                # (n,) bool: particles of the continuous part


def heterogeneity_verdict(per_k: Mapping[int, KScores], maps_by_k: Mapping[int, np.ndarray],
                          half_maps_by_k: Optional[Mapping[int, np.ndarray]] = None,
                          mask: Optional[np.ndarray] = None,
                          th: Thresholds = Thresholds(), tests: Optional[dict] = None) -> Verdict:
    """Recommended K and the heterogeneity verdict with its evidence (module docstring).

    ``tests``: the null-calibrated tests of :func:`hetclass.stability.analysis.run_stability`
    (recommended K, heterogeneity test, distinguishability, within-class and continuity
    tests, scan); with them the verdict is :func:`calibrated_decision`'s, the other evidence
    is reported beside.

    ``per_k`` scores per K (K = 1 may be included); ``maps_by_k[k]`` (k, b, b, b)
    consensus class maps, in consensus class numbering, for the K >= 3 used by (b)/(c);
    ``half_maps_by_k[k]`` (2, k, b, b, b) their half maps (noise estimate); ``mask`` the
    (b, b, b) region compared (default a sphere).
    """
    k_rec = recommended_k(per_k) if tests is None else int(tests["recommended_k"])
    ev = _map_evidence(per_k, maps_by_k, half_maps_by_k, mask, th, k_rec)
    if tests is not None:
        for key in ("scan", "null", "heterogeneity_test", "distinguishability", "within_class",
                    "continuity"):
            ev.evidence[key] = tests.get(key)
        verdict, reasons, affected, suggestions = calibrated_decision(
            k_rec, per_k, tests, ev.extrapolates, ev.extra, th)
        ev.evidence["suggestions"] = suggestions
    else:
        verdict, reasons, affected = _uncalibrated_decision(k_rec, per_k, ev, th)
    return Verdict(recommended_k=k_rec, heterogeneity=verdict, evidence=ev.evidence,
                   reasons=reasons, affected=affected)


@dataclass
class _MapEvidence:
    """Evidence (a)-(f) of one stability run (module docstring) and its flags."""

    evidence: Dict[str, object]
    k_max: int
    curve: dict
    split: Optional[dict]
    extra: Optional[dict]
    mixed_parents: List[int]
    is_path: bool
    is_band: bool
    differs: bool
    drop: bool
    extrapolates: bool


def _map_evidence(per_k, maps_by_k, half_maps_by_k, mask, th: Thresholds,
                  k_rec: int) -> _MapEvidence:
    """Evidence (a)-(f) from the scores and consensus maps."""
    curve = stability_curve(per_k, th)
    evidence: Dict[str, object] = {"stability_vs_k": curve}
    k_max = max(per_k)
    path: Optional[dict] = None
    band: Optional[dict] = None
    if k_max >= 3 and k_max in maps_by_k:
        halves = None if half_maps_by_k is None else half_maps_by_k.get(k_max)
        path = map_path(maps_by_k[k_max], halves, mask, th)
        band = neighbour_disagreement(per_k[k_max].aligned, k_max, path["order"], th)
    evidence["map_path"] = path
    evidence["neighbour_disagreement"] = band
    evidence["posterior_spread"] = posterior_spread(per_k[k_max], th)
    mixed_parents: List[int] = []
    if k_rec >= 2 and k_max > k_rec and k_max in maps_by_k:
        evidence["within_class_paths"], mixed_parents = _within_class_paths(
            per_k, maps_by_k, half_maps_by_k, mask, th, k_rec, k_max)
    split = None
    ks_maps = sorted(k for k in maps_by_k if k >= 2)
    if ks_maps and half_maps_by_k is not None and ks_maps[0] in half_maps_by_k:
        k0 = ks_maps[0]
        split = map_signal(maps_by_k[k0], half_maps_by_k[k0], mask,
                           per_k[k0].min_class_jaccard if k0 in per_k else None, th)
    evidence["split_map_signal"] = split
    extra = None
    if (k_rec >= 2 and k_rec in maps_by_k and half_maps_by_k is not None
            and k_max > k_rec and k_max in half_maps_by_k):
        extra = map_extrapolation(maps_by_k[k_rec], maps_by_k[k_max], half_maps_by_k[k_max],
                                  mask, th, per_k[k_max].empty_classes if k_max in per_k else ())
    evidence["map_extrapolation"] = extra
    return _MapEvidence(
        evidence=evidence, k_max=k_max, curve=curve, split=split, extra=extra,
        mixed_parents=mixed_parents, is_path=bool(path and path["is_path"]),
        is_band=bool(band and band["concentrated"]), differs=bool(split and split["beyond_noise"]),
        drop=curve["shape"] == "plateau_then_drop", extrapolates=bool(extra and extra["significant"]))


def _within_class_paths(per_k, maps_by_k, half_maps_by_k, mask, th: Thresholds, k_rec: int,
                        k_max: int):
    """Do the K = ``k_max`` children (>= 3) of a K = ``k_rec`` class lie on a path?
    ``({parent: path evidence}, [parents on a path])``."""
    parent = parent_of_classes(per_k[k_max].consensus, k_max, per_k[k_rec].consensus, k_rec)
    sub = {}
    on_path = []
    for p in range(k_rec):
        children = np.flatnonzero(parent == p)
        if children.size >= 3:
            hv = None if half_maps_by_k is None or k_max not in half_maps_by_k \
                else half_maps_by_k[k_max][:, children]
            ev = map_path(maps_by_k[k_max][children], hv, mask, th)
            ev["children"] = (children + 1).tolist()
            sub[str(p + 1)] = ev
            if ev["is_path"]:
                on_path.append(p)
    return sub, on_path


def _uncalibrated_decision(k_rec: int, per_k, ev: _MapEvidence, th: Thresholds):
    """The verdict from evidence (a)-(f) alone (no null): ``(verdict, reasons, affected)``."""
    n = len(next(iter(per_k.values())).consensus)
    affected = np.zeros(n, dtype=bool)
    if k_rec == 1:
        return _uncalibrated_k1(ev, affected)
    k_max = ev.k_max
    if ev.extrapolates:
        affected[:] = True
        return "continuous", [
            f"K={k_rec} is reproducible, but K={k_max} classes reach beyond the K={k_rec} maps "
            f"(extrapolation {_get(ev.extra, 'max_extrapolation')}): finer classes are more "
            "extreme, as when binning a continuum"], affected
    if ev.is_path and not ev.drop and (k_max > k_rec or per_k[k_max].min_class_jaccard
                                       < th.highly_stable_jaccard):
        affected[:] = True
        return "continuous", [
            f"K={k_rec} is reproducible, but stability shows no sharp drop beyond it and the "
            f"K={k_max} class maps lie on one path with even steps: the classes bin a "
            "continuum"], affected
    if ev.mixed_parents:
        names = ", ".join(str(p + 1) for p in ev.mixed_parents)
        return "mixed", [
            f"K={k_rec} classes are stable; at K={k_max} the sub-classes of class(es) {names} "
            "lie on a path (continuous within)"], np.isin(per_k[k_rec].consensus, ev.mixed_parents)
    reasons = [f"K={k_rec} classes are stable and pass the random-overlap test"
               + (f"; stability drops beyond (curve: {ev.curve['shape']})" if k_max > k_rec else "")]
    if ev.is_path:
        reasons.append(f"the K={k_max} maps lie on a path, but "
                       + ("stability drops sharply past K=%d (over-split states give "
                          "mixture maps on the line between states)" % k_rec if ev.drop else
                          "every class is highly stable: scan a larger K to tell discrete "
                          "states on a line from a continuum"))
    if ev.is_band:
        reasons.append("replicate disagreement at the largest K is between neighbouring "
                       "classes (over-split states)")
    return "discrete", reasons, affected


def _uncalibrated_k1(ev: _MapEvidence, affected: np.ndarray):
    """K_rec = 1 without a null: continuous when the maps show structure, else homogeneous."""
    if not (ev.is_path or ev.differs or (ev.curve["shape"] == "smooth_decay" and ev.is_band)):
        return "homogeneous", ["no split into 2 or more classes is reproducible and the class "
                               "maps differ by noise only"], affected
    affected[:] = True
    if ev.is_path:
        why = (f"no reproducible discrete split, but the K={ev.k_max} class maps lie on a "
               "one-dimensional path")
    elif ev.differs:
        why = (f"no reproducible discrete split, yet the K={_get(ev.split, 'k')} class maps "
               f"differ beyond noise (signal/noise {_get(ev.split, 'max_signal_to_noise')}): "
               "real structural variability that no K separates reproducibly")
    else:
        why = "stability decays smoothly and replicates disagree between neighbouring classes"
    return "continuous", [why], affected


def _get(record: Optional[dict], key: str):
    return None if record is None else record.get(key)


def _p(x) -> str:
    return "n/a" if x is None else (f"{x:.2g}" if x >= 1e-4 else "< 1e-4")


def calibrated_decision(k_rec: int, per_k: Mapping[int, KScores], tests: dict,
                        extrapolates: bool, extra: Optional[dict], th: Thresholds):
    """The verdict from the null-calibrated tests: ``(verdict, reasons, affected,
    suggestions)``.

    * K_rec = 1: "continuous" when the K = 2 classes differ beyond the null (structure no
      K separates reproducibly and distinguishably), else "homogeneous".
    * K_rec >= 2, from the within-class and continuity tests: classes with a spread inside
      are continuous (so is a class with unresolved structure when a finer class of the scan
      that is mostly this class reaches beyond the K_rec maps), and so are two neighbouring
      classes whose particles, classified again together, form one spread (no gap between
      them); some continuous and some not -> "mixed" (the continuous classes' particles form
      the continuous part); all continuous -> "continuous"; none -> "discrete". Without within-class or continuity
      evidence: "continuous" when the finer classes extrapolate, else "discrete".

    Suggestions: merge indistinguishable classes of a stable K; classify a class holding two
    states again (under-split).
    """
    n = len(next(iter(per_k.values())).consensus)
    affected = np.zeros(n, dtype=bool)
    reasons: List[str] = []
    scan = tests.get("scan") or {}
    if scan.get("added"):
        reasons.append(f"the scan was extended to K={max(scan['added'])} (typed "
                       f"{_k_range(scan.get('typed'))}) to look past the recommended K")
    suggestions = _merge_suggestions(per_k, tests)
    het = tests.get("heterogeneity_test") or {}
    if k_rec == 1:
        verdict, why = _calibrated_k1(het)
        affected[:] = verdict == "continuous"
        return verdict, reasons + [why], affected, suggestions
    within = tests.get("within_class") or {}
    outcome = {int(c) - 1: rec["outcome"] for c, rec in within.items()}
    suggestions += _split_suggestions(within, k_rec)
    continuous, why_pairs = _continuous_classes(outcome, tests.get("continuity") or {},
                                                _extending_classes(extra) if extrapolates else set())
    reasons += why_pairs
    verdict, why, parts = _calibrated_kn(k_rec, outcome, continuous, bool(within), het,
                                         extrapolates, extra)
    reasons.append(why)
    if verdict in ("continuous", "mixed"):
        affected = np.isin(per_k[k_rec].consensus, parts)
    return verdict, reasons, affected, suggestions


def _merge_suggestions(per_k: Mapping[int, KScores], tests: dict) -> List[dict]:
    """Merge the reproducible but indistinguishable class pairs of every stable K."""
    out = []
    for k_text, pw in sorted((tests.get("distinguishability") or {}).items(), key=lambda x: int(x[0])):
        k = int(k_text)
        if not (k in per_k and per_k[k].all_stable and pw.get("merge")):
            continue
        for a, b in pw["merge"]:
            pair = next(p for p in pw["pairs"] if p["classes"] == [a, b])
            inside = pair.get("in_k_fit")
            how, more = ("", "") if inside is None else (
                " once their particles are classified again on their own",
                f"; {_p(inside['p_value'])} inside the K={k} fit")
            out.append({"action": "merge", "k": k, "classes": [a, b], "p_value": pair["p_value"],
                        "why": f"at K={k} classes {a} and {b} are reproducible but their maps "
                               f"differ no more than in the null{how} "
                               f"(p = {_p(pair['p_value'])}{more})"})
    return out


def _split_suggestions(within: dict, k_rec: int) -> List[dict]:
    """Classify again the classes whose within-class test found two states."""
    out = []
    for c_text, rec in sorted(within.items(), key=lambda x: int(x[0])):
        if rec["outcome"] == "two states":
            out.append({"action": "split", "k": k_rec, "classes": [int(c_text)],
                        "p_value": rec["p_value"],
                        "why": f"class {c_text} splits in two beyond the null (p = "
                               f"{_p(rec['p_value'])}) in a direction no other class takes: it "
                               "holds two states (classify its particles with K=2, or try a "
                               "larger K)"})
    return out


def _calibrated_k1(het: dict):
    """K_rec = 1: ``(verdict, reason)`` from the heterogeneity test."""
    p_text = _p(het.get("p_value"))
    if het.get("beyond_null"):
        return "continuous", (f"no K splits the data into reproducible, distinguishable "
                              f"classes, yet the K=2 class maps differ beyond the null (p = "
                              f"{p_text}): structural variability, continuous")
    return "homogeneous", (f"the K=2 class maps differ no more than classes of simulated "
                           f"one-state data (p = {p_text}) and no split is both reproducible "
                           "and distinguishable")


def _extending_classes(extra: Optional[dict]) -> set:
    """0-based coarse classes that a finer class of the scan extends beyond the coarse maps
    (evidence (f), per fine class: the coarse class it mostly is)."""
    rows = (extra or {}).get("classes") or []
    return {int(r["mostly_coarse_class"]) - 1 for r in rows
            if r.get("significant") and r.get("mostly_coarse_class")}


def _continuous_classes(outcome: Dict[int, str], continuity: dict, extending: set):
    """0-based classes found continuous (within-class spread; unresolved structure inside a
    class that a finer class of the scan extends beyond the coarse maps; or part of a
    neighbour pair that is one spread) and the reasons from the continuity tests."""
    continuous = {c for c, o in outcome.items()
                  if o == "continuous" or (o == "heterogeneous" and c in extending)}
    spread_pairs = [rec["classes"] for rec in continuity.values() if rec["outcome"] == "continuous"]
    continuous |= {c - 1 for pair in spread_pairs for c in pair}
    reasons = []
    if spread_pairs:
        names = "; ".join(f"{a} and {b}" for a, b in spread_pairs)
        reasons.append(f"classified again together, the particles of classes {names} form "
                       "one spread along their difference, with no gap between the classes")
    return sorted(continuous), reasons


def _calibrated_kn(k_rec: int, outcome: Dict[int, str], continuous: List[int], tested: bool,
                   het: dict, extrapolates: bool, extra: Optional[dict]):
    """K_rec >= 2: ``(verdict, reason, continuous classes)``."""
    p_text = f"p = {_p(het.get('p_value'))}"
    if not tested and not continuous:
        if extrapolates:
            return "continuous", (f"K={k_rec} is reproducible and distinguishable, but finer "
                                  f"classes reach beyond its maps (extrapolation "
                                  f"{_get(extra, 'max_extrapolation')})"), list(range(k_rec))
        return "discrete", (f"K={k_rec} classes are reproducible and differ beyond the null "
                            f"({p_text} at K=2)"), []
    if len(continuous) == k_rec:
        return "continuous", (f"K={k_rec} classes are reproducible, but every class is part of "
                              "a spread of particles, not of separate groups: the classes bin "
                              "a continuum"), continuous
    if continuous:
        names = ", ".join(str(c + 1) for c in continuous)
        return "mixed", (f"K={k_rec} classes are reproducible and distinguishable; class(es) "
                         f"{names} hold a continuum (a spread of particles along their split), "
                         "the others do not"), continuous
    kinds = sorted(set(outcome.values()))
    return "discrete", (f"K={k_rec} classes are reproducible and differ beyond the null "
                        f"({p_text} at K=2); within the classes: "
                        f"{', '.join(kinds) if kinds else 'not tested'}"), []


def _k_range(values) -> str:
    if not values:
        return "?"
    values = sorted(values)
    return f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0])
