"""The within-class tests of the recommended K are one family of tests.

"Is any class under-split?" is asked of every class of K_rec at once, so each class's test is
judged at alpha divided by the number of classes tested (Bonferroni); a class too small to be
classified again is not tested and does not count.
"""

from types import SimpleNamespace

import numpy as np


def test_within_class_tests_share_alpha_between_the_classes_tested(monkeypatch):
    """The within-class tests of K_rec are one family ("is any class under-split?"): each is
    judged at alpha / (classes tested); a class too small to be tested does not count."""
    from hetclass.stability import analysis
    from hetclass.stability.class_tests import MIN_WITHIN_PARTICLES
    from hetclass.stability.verdict import Thresholds
    seen = {}

    def fits(prepared, options, members, seed, run, fit=None):
        seen["classes"] = sorted(members)
        return {}

    def tests(fits, maps, sizes, null_model, mask, alpha, stable_jaccard):
        seen["alpha"] = alpha
        return {}

    monkeypatch.setattr(analysis, "within_class_fits", fits)
    monkeypatch.setattr(analysis, "within_class_tests", tests)
    n = MIN_WITHIN_PARTICLES
    consensus = np.repeat([0, 1, 2, 3], [n, n + 5, 2 * n, n - 1])     # class 4 too small
    res = SimpleNamespace(per_k={4: SimpleNamespace(consensus=consensus)}, maps={4: None},
                          seconds={})
    analysis._within_class_stage(None, None, res, 4, np.arange(consensus.size), 0, None, None,
                                 None, None, Thresholds(alpha=0.01))
    assert seen["classes"] == [0, 1, 2]
    assert abs(seen["alpha"] - 0.01 / 3) < 1e-12
