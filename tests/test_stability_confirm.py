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


def _confirm_scan(monkeypatch, rng):
    """A scan whose K = 4 and K = 3 each have one borderline pair; the K = 4 pair's particles
    hold one state and the K = 3 pair's two. Returns (res, pairwise, calls, base)."""
    from hetclass.stability import class_tests
    state = _field(rng)
    other = state + 0.8 * _field(rng)
    n = 900
    base = rng.permutation(np.arange(1000, 1000 + n))        # global rows, not sorted
    k4 = np.repeat([0, 1, 2, 3], [300, 250, 200, 150])
    k3 = np.repeat([0, 1, 2], [300, 250, 350])
    fits = {450: _fit(rng, state, state, n=(300, 150)),     # K = 4 pair 1-4: one state
            600: _fit(rng, state, other, n=(250, 350))}     # K = 3 pair 2-3: two states
    calls = []

    def split_fit(prepared, options, rows, seed, check, fit, start_labels=None):
        calls.append((rows.copy(), start_labels.copy()))
        return fits[rows.size]

    monkeypatch.setattr(class_tests, "_split_fit", split_fit)
    stable = {k: SimpleNamespace(all_stable=True, consensus=c)
              for k, c in ((2, np.repeat([0, 1], [300, 600])), (3, k3), (4, k4))}
    res = SimpleNamespace(per_k=stable, seconds={})
    pairwise = {2: _tests(2, [1e-6]), 3: _tests(3, [1e-6, 1e-6, 0.002]),
                4: _tests(4, [1e-6, 1e-6, 0.004, 1e-6, 1e-6, 1e-6])}
    return res, pairwise, calls, base


def test_the_scan_confirms_the_recommended_k_and_falls_back_to_the_next_accepted(monkeypatch):
    from hetclass.stability.analysis import _confirm_stage
    rng = np.random.default_rng(3)
    res, pairwise, calls, base = _confirm_scan(monkeypatch, rng)
    keys = []

    def stage(task_keys, one, label):
        assert label == "confirm"
        keys.extend(task_keys)
        return {key: (one(key, None), 0.0) for key in task_keys}

    stage.progress, stage.root = None, True
    k_rec = _confirm_stage(None, None, res, pairwise, 4, base, np.random.SeedSequence(5),
                           stage, None, _null(), None)
    assert keys == ["confirm_k4_c1_c4", "confirm_k3_c2_c3"]
    assert k_rec == 3                                    # K = 4 lost its pair 1-4
    assert pairwise[4]["merge"] == [[1, 4]] and pairwise[3]["all_distinguishable"] is True
    assert "confirm" in res.seconds
    # each refit got exactly its pair's particles (sorted global rows), started from the
    # consensus boundary (1 = the pair's second class)
    order = np.argsort(base)
    for (rows, starts), (k, pair) in zip(calls, ((4, (0, 3)), (3, (1, 2)))):
        labels = res.per_k[k].consensus[order]
        inside = np.isin(labels, pair)
        assert np.array_equal(rows, base[order][inside])
        assert np.array_equal(starts, (labels[inside] == pair[1]).astype(np.int64))


def test_confirm_pairs_leaves_a_k2_test_alone(monkeypatch):
    from hetclass.stability.class_tests import confirm_pairs
    rng = np.random.default_rng(4)
    res, pairwise, calls, base = _confirm_scan(monkeypatch, rng)

    def run(keys, one):
        raise AssertionError("nothing to classify again at K = 2")

    out = confirm_pairs(None, None, pairwise[2], res.per_k[2].consensus, base,
                        np.random.SeedSequence(5), run, _null())
    assert out is pairwise[2] and calls == []
