"""One replicate set aside (hetclass.stability.set_aside) on label sets with known answers."""

import numpy as np
import pytest

from hetclass.stability.replicates import ReplicateRun
from hetclass.stability.report import set_aside_text
from hetclass.stability.scores import adjusted_rand_index, score_replicates
from hetclass.stability.set_aside import least_agreeing, score_setting_aside

N, K = 600, 3


def _truth():
    return np.repeat(np.arange(K), N // K)


def _copy(truth, rng, flip=0.02):
    """``truth`` with its classes renamed and ``flip`` of the labels changed at random."""
    out = rng.permutation(K)[truth]
    flipped = rng.random(truth.size) < flip
    out[flipped] = rng.integers(0, K, flipped.sum())
    return out


def _run(labels):
    r = labels.shape[0]
    post = np.zeros((r, labels.shape[1], K), np.float32)
    post[np.arange(r)[:, None], np.arange(labels.shape[1])[None, :], labels] = 1.0
    return ReplicateRun(
        k=K, rows=np.arange(labels.shape[1]), labels=labels, posteriors=post,
        maps=np.arange(r, dtype=np.float32)[:, None, None, None, None] * np.ones((r, K, 2, 2, 2), np.float32),
        half_maps=np.zeros((r, 2, K, 2, 2, 2), np.float32), fsc=np.zeros((r, K, 3)),
        resolution_A=np.full((r, K), 10.0), histories=[[{"iteration": i}] for i in range(r)],
        seconds=np.arange(r, dtype=float), pixel_size_A=3.0, subsample=None)


def _score(run):
    return score_replicates(run.labels, run.k, posteriors=list(run.posteriors),
                            rng=np.random.default_rng(0))


def _set_aside(labels):
    run = _run(labels)
    scores = _score(run)
    return run, scores, score_setting_aside(run, scores, _score)


def _labels(n_good, n_random, seed=0):
    rng = np.random.default_rng(seed)
    truth = _truth()
    good = [_copy(truth, rng) for _ in range(n_good)]
    bad = [rng.integers(0, K, N) for _ in range(n_random)]
    return truth, np.array(good[:2] + bad + good[2:])      # the odd ones in the middle


def test_one_replicate_that_disagrees_is_set_aside_when_the_four_others_agree():
    truth, labels = _labels(4, 1)
    run, scores, (kept_run, kept) = _set_aside(labels)
    assert not scores.all_stable and scores.min_class_jaccard < 0.75
    assert kept.all_stable and kept.n_replicates == 4 and kept_run.n_replicates == 4
    rec = kept.extra["set_aside"]
    assert rec["replicate"] == 3 and rec["replicates_used"] == [1, 2, 4, 5]
    assert rec["mean_ari_to_others"] < 0.05 < 0.9 < rec["mean_ari_among_others"]
    assert rec["min_class_jaccard_all_replicates"] == pytest.approx(scores.min_class_jaccard, abs=1e-4)
    # every per-replicate array lost the same replicate (the maps carry their replicate index)
    assert list(kept_run.maps[:, 0, 0, 0, 0]) == [0, 1, 3, 4]
    assert list(kept_run.seconds) == [0, 1, 3, 4]
    assert [h[0]["iteration"] for h in kept_run.histories] == [0, 1, 3, 4]
    assert adjusted_rand_index(kept.consensus, truth) > 0.95
    # the set-aside labels are kept, in the consensus numbering
    assert kept.set_aside_labels.shape == (N,)
    assert np.array_equal(kept.set_aside_labels >= 0, labels[2] >= 0)
    assert "set_aside" in kept.to_dict()


@pytest.mark.parametrize("n_good, n_random", [(3, 2), (4, 0), (3, 1)])
def test_no_replicate_is_set_aside_unless_one_of_five_or_more_disagrees(n_good, n_random):
    """Two odd replicates of five, all agreeing, or four replicates: scores unchanged."""
    _, labels = _labels(n_good, n_random)
    run, scores, (kept_run, kept) = _set_aside(labels)
    assert kept is scores and kept_run is run
    assert "set_aside" not in kept.extra and kept.set_aside_labels is None
    if n_random == 0:
        assert kept.all_stable
    else:
        assert not kept.all_stable


def test_least_agreeing_is_the_lowest_mean_off_diagonal_row():
    ari = np.array([[1.0, 0.9, 0.8, 0.1],
                    [0.9, 1.0, 0.9, 0.2],
                    [0.8, 0.9, 1.0, 0.0],
                    [0.1, 0.2, 0.0, 1.0]])
    assert least_agreeing(ari) == 3


def test_report_sentence_names_the_replicate_and_both_agreements():
    _, labels = _labels(4, 1)
    _, _, (_, kept) = _set_aside(labels)
    text = set_aside_text({"3": kept.to_dict(), "2": {"k": 2}})
    assert len(text) == 1
    assert text[0].startswith("K = 3: replicate 3 was set aside")
    assert "other 4 agree at" in text[0] and "with all 5" in text[0]
