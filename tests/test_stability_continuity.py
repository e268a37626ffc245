"""Two groups or one spread: the shape test, the neighbour pairs and the verdict they drive.

Known truth: positions drawn from two point masses or from a uniform interval, measured
with known errors (and with errors larger than the stated ones, as when the references are
estimates); class maps whose nearest neighbours are known.
"""

import numpy as np

from hetclass.stability.class_tests import continuity_tests, neighbour_pairs
from hetclass.stability.distinguish import shape_test
from hetclass.stability.scores import score_replicates
from hetclass.stability.verdict import Thresholds, calibrated_decision


def _measured(true_u, rng, error_factor=1.0):
    """Positions ``u = t + e`` with separations D (errors sqrt(2 / D) stated, ``error_factor``
    times that real)."""
    d = rng.uniform(2.0, 12.0, true_u.size)
    return true_u + error_factor * np.sqrt(2.0 / d) * rng.standard_normal(true_u.size), d


def test_two_groups_with_underestimated_errors_stay_two_groups():
    rng = np.random.default_rng(1)
    t = np.where(rng.random(3000) < 0.4, -1.0, 1.0)
    u, d = _measured(t, rng, error_factor=1.4)
    out = shape_test(u, d)
    assert out["shape"] == "two groups", out
    assert 1.2 < out["two_groups"]["error_scale"] < 1.6
    assert sorted(round(p) for p in out["two_groups"]["positions"]) == [-1, 1]


def test_uniform_spread_is_a_spread():
    rng = np.random.default_rng(2)
    t = rng.uniform(-2.0, 2.0, 3000)       # a continuum reaches beyond its two class means
    u, d = _measured(t, rng, error_factor=1.2)
    out = shape_test(u, d)
    assert out["shape"] == "spread", out
    assert abs(out["uniform_spread"]["from"] + 2.0) < 0.3
    assert abs(out["uniform_spread"]["to"] - 2.0) < 0.3


def test_too_few_informative_particles_decide_nothing():
    rng = np.random.default_rng(3)
    u, d = _measured(rng.uniform(-1, 1, 40), rng)
    assert shape_test(u, d)["shape"] == "undetermined"


def _maps(rng, box=10):
    base = rng.normal(size=(box, box, box))
    step = rng.normal(size=(box, box, box))
    far = rng.normal(size=(box, box, box))
    # classes 0, 1, 2 on a line (0-1 close, 1-2 a bit further), class 3 far from all
    return np.stack([base, base + 0.5 * step, base + 1.2 * step, base + 4.0 * far])


def test_neighbour_pairs_are_nearest_maps_of_big_classes():
    rng = np.random.default_rng(4)
    maps = _maps(rng)
    sizes = {0: 900, 1: 800, 2: 700, 3: 600}
    pairs = neighbour_pairs(maps, None, sizes)
    assert (0, 1) in pairs and (1, 2) in pairs
    assert len(pairs) == 3 and sum(3 in p for p in pairs) == 1   # class 3: its nearest only
    small = neighbour_pairs(maps, None, {0: 900, 1: 50, 2: 700, 3: 600})
    assert all(1 not in p for p in small)        # too small to be classified again
    assert (0, 2) in small


class _Fit:
    def __init__(self, position, separation):
        self.position, self.separation = position, separation
        self.labels = (position < 0).astype(int)


def _tests(continuity, k):
    return {"recommended_k": k, "heterogeneity_test": {"p_value": 1e-6, "beyond_null": True},
            "within_class": {}, "continuity": continuity, "distinguishability": {}, "scan": {}}


def _per_k(k, n):
    labels = np.tile(np.repeat(np.arange(k), n // k), (3, 1))
    return {k: score_replicates(labels, k, rng=np.random.default_rng(0))}


def test_spread_pair_makes_mixed_and_all_pairs_continuous():
    rng = np.random.default_rng(5)
    u_spread, d_spread = _measured(rng.uniform(-2.0, 2.0, 2000), rng)
    u_two, d_two = _measured(np.where(rng.random(2000) < 0.5, -1.0, 1.0), rng)
    fits = {(1, 2): _Fit(u_spread, d_spread), (0, 1): _Fit(u_two, d_two)}
    cont = continuity_tests(fits)
    assert cont["2-3"]["outcome"] == "continuous" and cont["1-2"]["outcome"] == "two groups"
    per_k = _per_k(3, 3000)
    verdict, reasons, affected, _ = calibrated_decision(3, per_k, _tests(cont, 3), False, None,
                                                        Thresholds())
    assert verdict == "mixed", reasons
    np.testing.assert_array_equal(affected, np.isin(per_k[3].consensus, [1, 2]))

    per_k2 = _per_k(2, 2000)
    only = continuity_tests({(0, 1): _Fit(u_spread, d_spread)})
    verdict, reasons, affected, _ = calibrated_decision(2, per_k2, _tests(only, 2), False, None,
                                                        Thresholds())
    assert verdict == "continuous" and affected.all(), reasons
    discrete = continuity_tests({(0, 1): _Fit(u_two, d_two)})
    verdict, reasons, _, _ = calibrated_decision(2, per_k2, _tests(discrete, 2), False, None,
                                                 Thresholds())
    assert verdict == "discrete", reasons


def test_a_spread_inside_a_class_is_continuous_only_when_its_split_reproduces():
    from hetclass.stability.class_tests import _outcome
    # beyond the null, positions spread: a continuum bins the same way in both fits ...
    assert _outcome(1e-4, 0.01, "spread", 0.1, 0.9, 0.75) == "continuous"
    # ... a class of junk of many shapes spreads too, but its split does not reproduce
    assert _outcome(3e-4, 0.01, "spread", float("nan"), 0.50, 0.75) == "heterogeneous"
    assert _outcome(0.5, 0.01, "spread", 0.1, 0.9, 0.75) == "homogeneous"


def test_extrapolation_makes_only_the_class_it_extends_continuous():
    """A junk-like class (structure inside, split not reproducible: "heterogeneous") is a
    continuum only when a finer class that is mostly *it* reaches beyond the coarse maps; a
    finer class of another class reaching away from it (a homogeneous state cut by noise)
    says nothing about it."""
    from hetclass.stability.verdict import map_extrapolation
    rng = np.random.default_rng(3)
    coarse = rng.normal(size=(3, 16, 16, 16))

    def fine_of(mix):
        fine = np.tensordot(np.asarray(mix, float), coarse, axes=1)
        halves = fine[None] + 0.002 * rng.normal(size=(2,) + fine.shape)
        return map_extrapolation(coarse, fine, halves, np.ones((16, 16, 16)))

    per_k = _per_k(3, 3000)
    tests = dict(_tests({}, 3), within_class={"3": {"outcome": "heterogeneous", "p_value": 1e-4}})
    # a finer class of class 1 beyond class 3, the others plain re-mixes
    away = fine_of([[1.1, 0.0, -0.1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    assert away["significant"]
    verdict, reasons, _, _ = calibrated_decision(3, per_k, tests, True, away, Thresholds())
    assert verdict == "discrete", reasons
    # a finer class of class 3 beyond class 1: class 3 holds a continuum
    beyond = fine_of([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.1, 0.0, 1.1], [0.5, 0.5, 0.0]])
    verdict, reasons, affected, _ = calibrated_decision(3, per_k, tests, True, beyond, Thresholds())
    assert verdict == "mixed", reasons
    np.testing.assert_array_equal(affected, per_k[3].consensus == 2)


def test_a_fine_class_empty_in_the_consensus_extends_nothing():
    """A finer K whose class no particle holds (EM emptied it; its "map" is a blend the
    replicates left behind) is no evidence that a coarse class extends: mixed_72's K = 8
    had such a class, whose blend made the discrete noB class look continuous."""
    from hetclass.stability.verdict import map_extrapolation
    rng = np.random.default_rng(4)
    coarse = rng.normal(size=(3, 16, 16, 16))
    fine = np.tensordot(np.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.2, -0.2, 0.0],
                                    [0.0, 0.0, 1.0]]), coarse, axes=1)
    halves = fine[None] + 0.002 * rng.normal(size=(2,) + fine.shape)
    mask = np.ones((16, 16, 16))
    assert map_extrapolation(coarse, fine, halves, mask)["significant"]
    out = map_extrapolation(coarse, fine, halves, mask, empty_fine=[3])
    assert not out["significant"] and out["classes"][2] == {
        "class": 3, "empty": True, "extrapolation": None, "significant": False}
    assert out["classes"][3]["mostly_coarse_class"] == 3


def test_null_model_scatter_follows_the_size():
    """Null statistics scatter more at small sizes; the prediction at the full size must use
    the full size's scatter, so p-values there are uniform under the null, not squeezed
    towards 0.5 by the small sets' scatter (as with one pooled scatter)."""
    from scipy import stats as sstats

    from hetclass.stability.distinguish import NullModel
    rng = np.random.default_rng(5)
    sd = {2000: 0.1, 500: 0.8}
    p_full, sd_full = [], []
    for _ in range(400):
        sizes = [2000, 500] * 4
        values = [rng.normal(0.0 if n == 2000 else -1.2, sd[n]) for n in sizes]
        model = NullModel(sizes, values)
        p_full.append(model.p_value(float(rng.normal(0.0, sd[2000])), 2000))
        sd_full.append(model.predict(2000)[1])
    assert 0.08 < np.median(sd_full) < 0.2             # the full size's scatter (0.1)...
    assert np.median([NullModel([2000, 500] * 4, [0.0, -1.2] * 4).predict(500)[0]]) < -1.0
    # ... so p-values at that size are close to uniform (KS), and small ones do occur
    assert sstats.kstest(p_full, "uniform").pvalue > 0.01
    assert np.mean(np.asarray(p_full) < 0.1) > 0.05


def test_one_null_value_on_its_sizes_mean_does_not_widen_the_prediction():
    """The six-state case's null (four sets at 6000 and 1500 particles): one value at 6000
    lies 0.001 from that size's mean. The variance line must follow each size's scatter
    (sd 0.16 at 1500) and not blow it up (a fit to log r^2 gave 0.46 there, and a real
    pair at log T 0.67 got p 0.029)."""
    from hetclass.stability.distinguish import NullModel
    model = NullModel([6000, 1500] * 4,
                      [0.8158, -0.3772, 0.7063, -0.3284, 0.6909, -0.5443, 0.555, -0.6798])
    mean, sd, df = model.predict(1500)
    assert abs(mean - np.mean([-0.3772, -0.3284, -0.5443, -0.6798])) < 1e-6 and df == 4
    assert 0.12 < sd < 0.25, sd
    assert model.p_value(0.6716, 1388) < 0.01
    assert 0.05 < model.predict(6000)[1] < 0.15
