"""A borderline class pair of a K >= 3 fit is judged by the pair classified again on its own.

The null calibrates K = 2 classifications on their own; inside a K-class fit the pair's
statistic is inflated (likely by other classes' particles in its maps through their soft
weights), so the pair classified alone is what is tested (``class_tests.pairs_to_confirm``,
``class_tests.apply_confirmations``).
Stand-in fits with known maps: a refit whose two maps differ only by their noise must lose
the pair (merge), a refit whose maps differ must keep it, a collapsed refit is no split.
"""

from types import SimpleNamespace

import numpy as np

from hetclass.stability.class_tests import CONFIRM_P, apply_confirmations, pairs_to_confirm
from hetclass.stability.distinguish import NullModel

BOX = 12


def _field(rng):
    return rng.normal(size=(BOX, BOX, BOX))


def _fit(rng, base_a, base_b, n=(400, 400), noise=0.3):
    """A K = 2 result: two maps with half maps of independent noise."""
    halves = np.stack([np.stack([m + noise * _field(rng) for m in (base_a, base_b)])
                       for _ in range(2)])
    labels = np.repeat([0, 1], n)
    return SimpleNamespace(labels=labels, maps=halves.mean(axis=0), half_maps=halves)


def _tests(k, p_values):
    pairs = []
    i = 0
    for a in range(1, k + 1):
        for b in range(a + 1, k + 1):
            p = p_values[i]
            pairs.append({"classes": [a, b], "particles": 800, "log_ratio": 1.0,
                          "p_value": p, "distinguishable": bool(p < 0.01)})
            i += 1
    return {"k": k, "alpha": 0.01, "pairs": pairs, "merge": [],
            "all_distinguishable": all(p["distinguishable"] for p in pairs)}


def _null():
    """log T of one state near 0 (maps of one state differ by their noise only)."""
    sizes = [800, 200] * 4
    return NullModel(sizes, [0.02, 0.05, -0.03, -0.06, 0.01, 0.08, -0.02, -0.04])


def test_only_borderline_pairs_of_k3_or_more_are_classified_again():
    assert pairs_to_confirm(_tests(2, [0.003])) == []               # K = 2: the fit is the pair
    tests = _tests(3, [1e-6, 0.003, 0.5])
    assert pairs_to_confirm(tests) == [(0, 2)]      # p >= CONFIRM_P and distinguishable
    assert CONFIRM_P > 1e-6


def test_a_refit_within_the_null_loses_the_pair_and_one_beyond_keeps_it():
    rng = np.random.default_rng(0)
    state = _field(rng)
    other = state + 0.8 * _field(rng)
    tests = _tests(3, [1e-6, 0.003, 0.002])
    fits = {(0, 2): _fit(rng, state, state),              # one state cut in two
            (1, 2): _fit(rng, state, other)}              # two states
    out = apply_confirmations(tests, fits, _null())
    by = {tuple(p["classes"]): p for p in out["pairs"]}
    assert by[(1, 2)] == tests["pairs"][0]                # not classified again: unchanged
    same, diff = by[(1, 3)], by[(2, 3)]
    assert same["distinguishable"] is False and same["p_value"] > 0.05
    assert same["in_k_fit"] == {"particles": 800, "log_ratio": 1.0, "p_value": 0.003}
    assert diff["distinguishable"] is True and diff["p_value"] < 0.01
    assert same["particles"] == 800
    assert out["merge"] == [[1, 3]] and out["all_distinguishable"] is False
    assert tests["pairs"][1]["distinguishable"] is True      # the input is not modified
    assert pairs_to_confirm(out) == []                       # confirmed once


def test_a_collapsed_refit_is_no_split():
    rng = np.random.default_rng(1)
    state = _field(rng)
    fit = _fit(rng, state, state + _field(rng), n=(795, 5))
    out = apply_confirmations(_tests(3, [1e-6, 1e-6, 0.002]), {(1, 2): fit}, _null())
    pair = out["pairs"][2]
    assert pair["distinguishable"] is False and pair["log_ratio"] is None
    assert out["merge"] == [[2, 3]]


def test_the_merge_suggestion_says_the_pair_was_classified_again():
    from hetclass.stability.verdict import _merge_suggestions
    rng = np.random.default_rng(2)
    state = _field(rng)
    tests = apply_confirmations(_tests(3, [1e-6, 0.003, 1e-6]), {(0, 2): _fit(rng, state, state)},
                                _null())
    stable = SimpleNamespace(all_stable=True)
    (sug,) = _merge_suggestions({3: stable}, {"distinguishability": {"3": tests}})
    assert sug["classes"] == [1, 3] and sug["p_value"] > 0.05
    assert "once their particles are classified again on their own (p = " in sug["why"]
    assert "; 0.003 inside the K=3 fit)" in sug["why"]
