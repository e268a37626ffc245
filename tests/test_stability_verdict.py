"""Recommended K and the heterogeneity verdict on synthetic score tables and maps.

The replicate label sets are built to mimic what replicate classifications of each kind
of data give (known truth), and the class maps to mimic their consensus maps.
"""

from dataclasses import replace

import numpy as np
import pytest

from hetclass.stability.scores import score_replicates, single_class_scores
from hetclass.stability.verdict import (
    heterogeneity_verdict,
    map_path,
    neighbour_disagreement,
    recommended_k,
    stability_curve,
)

R = 5
BOX = 12


def _field(rng, smooth=2):
    v = rng.normal(size=(BOX, BOX, BOX))
    f = np.fft.fftn(v)
    k = np.fft.fftfreq(BOX)
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return np.fft.ifftn(f * np.exp(-(kk * BOX / smooth) ** 2 / 8)).real


def _discrete_labels(truth, k, rng, flip=0.02):
    """Replicates of data with truth classes: a K above the truth splits classes at random."""
    k_true = truth.max() + 1
    out = []
    for _ in range(R):
        lab = truth.copy()
        extra = k - k_true
        for e in range(max(extra, 0)):                 # over-split: a random half of a class
            victim = np.flatnonzero(lab == (e % k_true))
            lab[victim[rng.random(victim.size) < 0.5]] = k_true + e
        if k < k_true:
            lab = np.minimum(lab, k - 1)
        idx = rng.random(lab.size) < flip
        lab[idx] = rng.integers(0, k, idx.sum())
        out.append(rng.permutation(k)[lab])
    return np.array(out)


def _continuum_labels(t, k, rng, jitter=0.08):
    """Replicates binning a 1-D coordinate t in [0, 1) with noisy per-replicate estimates."""
    out = []
    for _ in range(R):
        est = t + rng.normal(0, jitter, t.size) + rng.normal(0, 0.03)
        lab = np.clip((est * k).astype(int), 0, k - 1)
        out.append(rng.permutation(k)[lab])
    return np.array(out)


def _maps_from_labels(scores, value_of_particle, base, direction, rng, noise=0.02):
    """Consensus maps: each class map = base + mean particle value * direction + noise."""
    maps = []
    for c in range(scores.k):
        members = scores.consensus == c
        v = value_of_particle[members].mean() if members.any() else 0.0
        maps.append(base + v * direction + noise * rng.normal(size=base.shape))
    return np.array(maps)


def test_recommended_k_is_largest_all_stable():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], [400, 300, 300])
    per_k = {1: single_class_scores(1000, R)}
    for k in (2, 3, 4, 5):
        per_k[k] = score_replicates(_discrete_labels(truth, k, rng), k, rng=rng)
    assert per_k[2].all_stable and per_k[3].all_stable          # merging is reproducible too
    assert not per_k[4].all_stable and not per_k[5].all_stable
    assert recommended_k(per_k) == 3
    unstable = {k: score_replicates(rng.integers(0, k, (R, 1000)), k, rng=rng) for k in (2, 3)}
    assert recommended_k(unstable) == 1
    assert recommended_k({1: single_class_scores(10, R), **unstable}) == 1


def test_recommended_k_needs_the_overlap_test():
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 500)
    s = score_replicates(_discrete_labels(truth, 2, rng), 2, rng=rng)
    assert recommended_k({2: s}) == 2
    failing = replace(s, classes=[replace(c, overlap_pass_fraction=0.8) for c in s.classes])
    assert failing.classes[0].stable            # Jaccard still fine
    assert recommended_k({2: failing}) == 1


def test_stability_curve_shapes():
    rng = np.random.default_rng(2)
    truth = np.repeat([0, 1], 500)
    per_k = {k: score_replicates(_discrete_labels(truth, k, rng), k, rng=rng) for k in (2, 3, 4)}
    ev = stability_curve(per_k)
    assert ev["shape"] == "plateau_then_drop" and ev["plateau_up_to_k"] == 2
    assert ev["drops"]["2->3"] >= 0.2
    ev = stability_curve({k: per_k[k] for k in (2,)})
    assert ev["shape"] == "single_k"
    noise = {k: score_replicates(rng.integers(0, k, (R, 800)), k, rng=rng) for k in (2, 3)}
    assert stability_curve(noise)["shape"] == "no_stable_split"
    t = rng.random(2000)
    cont = {k: score_replicates(_continuum_labels(t, k, rng, jitter=0.12), k, rng=rng)
            for k in (2, 3, 4, 5)}
    ev = stability_curve(cont)
    assert ev["shape"] == "smooth_decay", ev


def test_map_path_continuum_vs_oversplit_vs_noise():
    rng = np.random.default_rng(3)
    base, direction = _field(rng), _field(rng)
    ts = np.array([0.3, 0.9, 0.1, 0.5, 0.7])               # shuffled positions on a path
    maps = np.array([base + t * direction + 0.01 * rng.normal(size=base.shape) for t in ts])
    ev = map_path(maps)
    assert ev["is_path"], ev
    assert list(ts[ev["order"]]) in (sorted(ts), sorted(ts, reverse=True))
    b = _field(rng)
    split = np.array([base, base + 0.02 * rng.normal(size=base.shape), b,
                      b + 0.02 * rng.normal(size=base.shape)])
    ev = map_path(split)
    assert not ev["is_path"] and ev["step_gap_ratio"] > 3
    ev = map_path(np.array([_field(rng) for _ in range(4)]))
    assert not ev["is_path"]
    assert not map_path(maps[:2])["is_path"] and not map_path(maps[:2])["informative"]


def test_neighbour_disagreement_band_vs_uniform():
    rng = np.random.default_rng(4)
    t = rng.random(3000)
    s = score_replicates(_continuum_labels(t, 4, rng), 4, rng=rng)
    # order classes by their mean t (as the map path would)
    order = np.argsort([t[s.consensus == c].mean() for c in range(4)])
    ev = neighbour_disagreement(s.aligned, 4, order)
    assert ev["concentrated"] and ev["band_fraction"] > 0.9
    truth = rng.integers(0, 4, 3000)
    s = score_replicates(_discrete_labels(truth, 4, rng, flip=0.2), 4, rng=rng)
    ev = neighbour_disagreement(s.aligned, 4, np.arange(4))
    assert not ev["concentrated"]
    assert ev["band_fraction"] == pytest.approx(ev["uniform_expectation"], abs=0.1)


def _per_k(labels_of_k, ks, rng, n):
    per_k = {1: single_class_scores(n, R)}
    for k in ks:
        per_k[k] = score_replicates(labels_of_k(k), k, rng=rng)
    return per_k


def test_verdict_discrete_two_states():
    rng = np.random.default_rng(5)
    truth = np.repeat([0, 1], [600, 400])
    base, direction = _field(rng), _field(rng)
    per_k = _per_k(lambda k: _discrete_labels(truth, k, rng), (2, 3, 4), rng, truth.size)
    maps = {k: _maps_from_labels(per_k[k], truth.astype(float), base, direction, rng)
            for k in (2, 3, 4)}
    v = heterogeneity_verdict(per_k, maps)
    assert v.recommended_k == 2
    assert v.heterogeneity == "discrete", v.evidence
    assert not v.affected.any()
    assert v.evidence["map_path"]["is_path"] is False


def test_verdict_homogeneous():
    rng = np.random.default_rng(6)
    n = 1000
    base = _field(rng)
    per_k = _per_k(lambda k: rng.integers(0, k, (R, n)), (2, 3, 4), rng, n)
    maps = {k: np.array([base + 0.05 * rng.normal(size=base.shape) for _ in range(k)])
            for k in (2, 3, 4)}
    v = heterogeneity_verdict(per_k, maps)
    assert v.recommended_k == 1
    assert v.heterogeneity == "homogeneous", v.evidence


def test_verdict_continuous():
    rng = np.random.default_rng(7)
    t = rng.random(2000)
    base, direction = _field(rng), _field(rng)
    per_k = _per_k(lambda k: _continuum_labels(t, k, rng, jitter=0.12), (2, 3, 4), rng, t.size)
    maps = {k: _maps_from_labels(per_k[k], t, base, direction, rng) for k in (2, 3, 4)}
    v = heterogeneity_verdict(per_k, maps)
    assert v.heterogeneity == "continuous", v.evidence
    assert v.affected.all()
    ev = v.evidence
    assert ev["map_path"]["is_path"] and ev["neighbour_disagreement"]["concentrated"]
    for key in ("stability_vs_k", "map_path", "neighbour_disagreement", "posterior_spread"):
        assert key in ev


def test_verdict_mixed_discrete_plus_continuum():
    rng = np.random.default_rng(8)
    n_a, n_b = 800, 1200
    t = np.concatenate([np.full(n_a, -1.0), rng.random(n_b)])   # A discrete, B a continuum
    base, direction, other = _field(rng), _field(rng), _field(rng)

    def labels(k):
        out = []
        for _ in range(R):
            lab = np.zeros(n_a + n_b, dtype=int)
            est = t[n_a:] + rng.normal(0, 0.08, n_b)
            lab[n_a:] = 1 + np.clip((est * (k - 1)).astype(int), 0, k - 2)
            out.append(rng.permutation(k)[lab])
        return np.array(out)

    per_k = _per_k(labels, (2, 4), rng, n_a + n_b)
    maps = {}
    for k in (2, 4):
        s = per_k[k]
        m = []
        for c in range(k):
            mem = s.consensus == c
            if np.all(t[mem] < 0):
                m.append(other + 0.01 * rng.normal(size=base.shape))
            else:
                m.append(base + t[mem].clip(0).mean() * direction + 0.01 * rng.normal(size=base.shape))
        maps[k] = np.array(m)
    v = heterogeneity_verdict(per_k, maps)
    assert v.recommended_k == 2
    assert v.heterogeneity == "mixed", v.evidence
    np.testing.assert_array_equal(v.affected, t >= 0)
