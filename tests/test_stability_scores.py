"""Matching and agreement scores on hand-made label vectors with known answers."""

import itertools

import numpy as np
import pytest

from hetclass.stability.matching import (
    align_replicates,
    contingency,
    majority_vote,
    match_to_reference,
    parent_of_classes,
    relabel,
)
from hetclass.stability.scores import (
    adjusted_rand_index,
    jaccard_band,
    jaccard_matrix,
    normalized_mutual_info,
    pac,
    score_replicates,
    single_class_scores,
)

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the ARI/NMI reference")


# --- ARI / NMI against scikit-learn ---------------------------------------------------------

def test_ari_nmi_equal_scikit_learn_on_random_labelings():
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(2, 80))
        a = rng.integers(0, int(rng.integers(1, 6)), n)
        b = rng.integers(0, int(rng.integers(1, 6)), n)
        if trial % 4 == 0:                      # a relabelled copy with a few changes
            b = rng.permutation(6)[a]
            flip = rng.random(n) < 0.1
            b[flip] = rng.integers(0, 6, flip.sum())
        assert adjusted_rand_index(a, b) == pytest.approx(sk.adjusted_rand_score(a, b), abs=1e-12)
        assert normalized_mutual_info(a, b) == pytest.approx(
            sk.normalized_mutual_info_score(a, b), abs=1e-12)


@pytest.mark.parametrize("a,b", [
    ([0, 0, 0, 0], [1, 1, 1, 1]),          # both one class
    ([0, 1, 2, 3], [3, 2, 1, 0]),          # both all singletons
    ([0, 0, 0, 0], [0, 1, 2, 3]),          # one class vs singletons
    ([0, 0, 1, 1], [0, 1, 0, 1]),          # independent
    ([0, 0, 1, 1, 2, 2], [5, 5, 7, 7, 9, 9]),
])
def test_ari_nmi_edge_cases_match_scikit_learn(a, b):
    assert adjusted_rand_index(a, b) == pytest.approx(sk.adjusted_rand_score(a, b), abs=1e-12)
    assert normalized_mutual_info(a, b) == pytest.approx(
        sk.normalized_mutual_info_score(a, b), abs=1e-12)


def test_absent_particles_are_ignored():
    a = np.array([0, 0, 1, 1, -1, 2, 2])
    b = np.array([1, 1, 0, -1, 0, 2, 0])
    keep = (a >= 0) & (b >= 0)
    assert adjusted_rand_index(a, b) == pytest.approx(sk.adjusted_rand_score(a[keep], b[keep]))
    assert normalized_mutual_info(a, b) == pytest.approx(
        sk.normalized_mutual_info_score(a[keep], b[keep]))


# --- contingency / matching ------------------------------------------------------------------

def test_contingency_known_table():
    a = np.array([0, 0, 1, 1, 1, 2, -1])
    b = np.array([1, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(contingency(a, b, 3, 2), [[0, 2], [2, 1], [0, 1]])


def test_matching_recovers_a_permutation():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 5, 500)
    perm = rng.permutation(5)
    other = perm[truth]                           # other = perm[truth]
    found = match_to_reference(truth, other, 5)   # found[other] == truth
    np.testing.assert_array_equal(relabel(other, found), truth)
    np.testing.assert_array_equal(found[perm], np.arange(5))


def test_majority_vote_and_tie_break():
    aligned = np.array([[0, 1, 1, -1], [0, 0, 1, -1], [1, 0, 1, -1], [1, 1, 1, -1]])
    cons, votes = majority_vote(aligned, 2, tie_break=np.array([1, 1, 1, -1]))
    np.testing.assert_array_equal(cons, [1, 1, 1, -1])      # ties go to the tie-break label
    np.testing.assert_array_equal(votes[2], [0, 4])


def test_align_replicates_on_permuted_noisy_copies():
    rng = np.random.default_rng(3)
    n, k, r = 600, 3, 5
    truth = np.repeat([0, 1, 2], [300, 200, 100])           # sizes make the final order known
    labels = []
    flipped = np.zeros(n, dtype=int)
    for _ in range(r):
        lab = truth.copy()
        idx = rng.choice(n, 12, replace=False)               # 2 % errors per replicate
        lab[idx] = (lab[idx] + 1) % k
        flipped[idx] += 1
        labels.append(rng.permutation(k)[lab])
    labels = np.array(labels)
    aligned, consensus, perms = align_replicates(labels, k)
    np.testing.assert_array_equal(consensus[flipped <= 2], truth[flipped <= 2])
    for rep in range(r):
        np.testing.assert_array_equal(aligned[rep], perms[rep][labels[rep]])
    s = score_replicates(labels, k, rng=np.random.default_rng(0))
    expected = 1 - flipped / r
    ok = flipped <= 2
    np.testing.assert_allclose(s.particle_stability[ok], expected[ok])
    assert [c.size for c in s.classes] == [np.sum(consensus == c) for c in range(k)]
    assert s.classes[0].size > s.classes[1].size > s.classes[2].size
    assert all(c.band == "highly stable" for c in s.classes)
    assert s.all_stable


def test_parent_of_classes():
    parent = np.array([0, 0, 0, 1, 1, 1])
    child = np.array([2, 2, 0, 1, 1, 1])
    np.testing.assert_array_equal(parent_of_classes(child, 4, parent, 2), [0, 1, 0, -1])


# --- Jaccard, bands, random-overlap test -------------------------------------------------------

def test_jaccard_known_values_and_permutation_invariance():
    a = np.array([0, 0, 0, 1, 1, 1])
    b = np.array([0, 0, 1, 1, 1, 1])
    j = jaccard_matrix(a, b, 2, 2)
    np.testing.assert_allclose(j, [[2 / 3, 1 / 6], [0, 3 / 4]])
    s = score_replicates(np.array([a, 1 - b]), 2)            # b relabelled 0<->1
    # consensus class 0 is {3,4,5}: largest once ties are resolved by the medoid's labels
    got = sorted(c.jaccard_mean for c in s.classes)
    assert got == pytest.approx([2 / 3, 3 / 4])
    assert s.ari[0, 1] == pytest.approx(sk.adjusted_rand_score(a, b))
    assert s.nmi[0, 1] == pytest.approx(sk.normalized_mutual_info_score(a, b))


@pytest.mark.parametrize("value,band", [(0.0, "unstable"), (0.5999, "unstable"), (0.6, "doubtful"),
                                        (0.7499, "doubtful"), (0.75, "stable"), (0.8499, "stable"),
                                        (0.85, "highly stable"), (1.0, "highly stable"),
                                        (float("nan"), "unstable")])
def test_jaccard_bands(value, band):
    assert jaccard_band(value) == band


def test_random_overlap_threshold_is_strict():
    # N = 8, classes of 4: expected random overlap 4 * 4 / 8 = 2.
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    at_threshold = np.array([0, 0, 1, 1, 0, 0, 1, 1])        # overlaps of exactly 2
    s = score_replicates(np.array([a, at_threshold]), 2)
    assert [c.overlap_pass_fraction for c in s.classes] == [0.0, 0.0]
    assert not s.all_stable
    above = np.array([0, 0, 0, 1, 1, 1, 1, 0])                # overlaps of 3 > 2
    s = score_replicates(np.array([a, above]), 2)
    assert [c.overlap_pass_fraction for c in s.classes] == [1.0, 1.0]
    # Jaccard 3/5 = 0.6: passes the overlap test, yet only "doubtful"
    assert [c.band for c in s.classes] == ["doubtful", "doubtful"]


def test_random_overlap_fraction_over_pairs():
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    good = a.copy()
    bad = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    # pairs: (a,good) pass, (a,bad) fail, (good,bad) fail -> 1/3
    s = score_replicates(np.array([a, good, bad]), 2)
    for c in s.classes:
        assert c.overlap_pass_fraction == pytest.approx(1 / 3)


def test_overlap_test_catches_a_dominant_class():
    # 100 particles, a 95 % class: Jaccard 0.9 but overlap 90 < 95 * 95 / 100
    a = np.zeros(100, dtype=int)
    b = np.zeros(100, dtype=int)
    a[:5] = 1
    b[5:10] = 1
    s = score_replicates(np.array([a, b]), 2)
    big = s.classes[0]
    assert big.jaccard_mean == pytest.approx(0.9)
    assert big.overlap_pass_fraction == 0.0
    assert not s.all_stable


# --- per-particle stability with subsampling, PAC ---------------------------------------------

def test_subsampled_replicates_use_present_rows_only():
    truth = np.repeat([0, 1], 50)
    rng = np.random.default_rng(4)
    labels = []
    for _ in range(4):
        lab = rng.permutation(2)[truth]
        lab[rng.random(100) < 0.2] = -1
        labels.append(lab)
    labels = np.array(labels)
    s = score_replicates(labels, 2)
    seen = (labels >= 0).any(axis=0)
    np.testing.assert_array_equal(s.particle_stability[seen], 1.0)
    assert np.all(np.isnan(s.particle_stability[~seen]))
    assert all(c.jaccard_mean == 1.0 for c in s.classes)
    np.testing.assert_allclose(s.ari, 1.0)


def _pac_brute(labels, lower=0.1, upper=0.9):
    r, n = labels.shape
    amb = tot = 0
    for i, j in itertools.combinations(range(n), 2):
        both = (labels[:, i] >= 0) & (labels[:, j] >= 0)
        if both.sum() < 2:
            continue
        idx = np.mean(labels[both, i] == labels[both, j])
        tot += 1
        amb += lower < idx < upper
    return amb / tot


def test_pac_exact_on_small_sets_and_sampled_on_large():
    assert pac(np.array([[0, 0, 1, 1], [1, 1, 0, 0]])) == 0.0
    rng = np.random.default_rng(5)
    labels = rng.integers(-1, 3, (4, 30))
    assert pac(labels) == pytest.approx(_pac_brute(labels))
    # two replicates that disagree on half the particles: pairs mixing the halves are ambiguous
    a = np.repeat([0, 1], 1000)
    b = a.copy()
    b[::2] = 1 - b[::2]
    exact_like = pac(np.array([a, b]), n_pairs=200_000, rng=np.random.default_rng(6))
    full = pac(np.array([a[:200:5], b[:200:5]]))           # n=40 exact
    assert 0.3 < exact_like < 0.7
    assert full == pytest.approx(_pac_brute(np.array([a[:200:5], b[:200:5]])))


def test_single_class_entry():
    s = single_class_scores(10, 3)
    assert s.all_stable and s.k == 1 and s.classes[0].size == 10
    assert s.to_dict()["classes"][0]["band"] == "highly stable"


def test_a_class_empty_in_the_consensus_makes_the_k_unsupported():
    """Replicates at K = 3 that agree on a two-way split and leave class 3 (nearly) empty:
    that K is a K = 2 partition, so it is not all stable and not recommended (mixed_72
    was once given K = 6 with class 6 empty)."""
    from hetclass.stability.verdict import recommended_k
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 300)
    reps = []
    for _ in range(4):
        lab = truth.copy()
        stray = rng.choice(600, 3, replace=False)          # a few particles, never agreed on
        lab[stray] = 2
        reps.append(rng.permutation(3)[lab])
    k3 = score_replicates(np.stack(reps), 3, rng=np.random.default_rng(1))
    assert k3.empty_classes == [3] and k3.classes[2].size == 0
    assert not k3.all_stable and k3.min_class_jaccard == 0.0
    assert k3.to_dict()["empty_classes"] == [3]
    k2 = score_replicates(np.stack([truth] * 4), 2, rng=np.random.default_rng(1))
    assert k2.all_stable and k2.empty_classes == []
    assert recommended_k({2: k2, 3: k3}) == 2
