"""The map statistic after the best rigid motion (hetclass.stability.rigid_fit).

Known truth: phantom maps (the project's pseudo-atomic phantom rasterised at 6 A) with half
maps of known noise; one pair differs only by a whole-map rotation and shift (what a split
by the direction of pose errors gives), one by a domain motion, one by a missing subunit.
"""

import numpy as np
import pytest

from hetclass.phantoms import domain_moved_gaussians, rasterise
from hetclass.stability.distinguish import RIGID_ALPHA, beyond_null, log_ratio_matrix
from hetclass.stability.rigid_fit import MAX_ROTATION_DEG, aligned_ratio, moved, rigid_ratio

BOX, PSIZE = 40, 6.0


def _turned(gaussians, rotvec_deg, shift_A):
    """The Gaussians rotated about the origin (the box centre) and shifted: a whole-map
    rigid motion made in atom coordinates (independent of the fit's interpolation)."""
    from scipy.spatial.transform import Rotation
    xyz, amp, sigma = gaussians
    r = Rotation.from_rotvec(np.deg2rad(rotvec_deg)).as_matrix()
    return xyz @ r.T + np.asarray(shift_A), amp, sigma


def _pair(second, noise_sd, seed=0):
    """Maps (2, b, b, b) and half maps (2, 2, b, b, b) of the base phantom and ``second``."""
    rng = np.random.default_rng(seed)
    truth = np.stack([rasterise(domain_moved_gaussians(), BOX, PSIZE),
                      rasterise(second, BOX, PSIZE)]).astype(np.float64)
    sd = noise_sd * truth.std()
    halves = truth[None] + sd * rng.standard_normal((2,) + truth.shape)
    return halves.mean(0), halves


def _plain_log_ratio(maps, halves):
    from hetclass.stability.verdict import map_distances
    _, raw2, noise2, _ = map_distances(maps, halves)
    return float(np.log(raw2[0, 1] / (noise2[0] + noise2[1])))


def test_a_turned_copy_differs_by_noise_only():
    maps, halves = _pair(_turned(domain_moved_gaussians(), [2.0, -2.5, 1.0], [2.0, 0.0, -1.0]),
                         noise_sd=0.3)
    assert log_ratio_matrix(maps, halves)[0, 1] > 1.0     # plain: far beyond the noise
    # after the fit: noise, up to the trilinear interpolation of a sharp map (T < 1.5)
    assert log_ratio_matrix(maps, halves, rigid=True)[0, 1] < 0.4


def test_the_fit_finds_the_motion():
    base = rasterise(domain_moved_gaussians(), BOX, PSIZE).astype(np.float64)
    p_true = np.array([2.0, -3.0, 1.5, 0.5, -0.4, 0.3])
    target = moved(base, p_true)
    sel = np.ones(base.shape, bool)
    t, p = rigid_ratio(base, target, sel, np.ones(sel.sum()), 1.0, 1.0)
    np.testing.assert_allclose(p, p_true, atol=0.15)


def test_a_change_of_structure_stays():
    turned = _pair(_turned(domain_moved_gaussians(), [2.0, -2.5, 1.0], [2.0, 0.0, -1.0]), 0.3)
    hinge = _pair(domain_moved_gaussians([((0, 1, 0), 12.0)]), 0.3)   # domain closed 12 deg
    subunit = _pair(domain_moved_gaussians(remove_chains=("B",)), 0.3)  # a subunit missing
    rigid = [log_ratio_matrix(m, h, rigid=True)[0, 1] for m, h in (turned, hinge, subunit)]
    # a domain motion keeps the part no whole-map motion explains; a missing subunit all
    assert rigid[1] > 2.0 * rigid[0] and rigid[2] > 1.5
    assert abs(rigid[2] - log_ratio_matrix(*subunit)[0, 1]) < 0.1


def test_beyond_null_needs_both_statistics():
    assert beyond_null(1e-4, 1e-3, 0.01) is True
    assert beyond_null(1e-4, RIGID_ALPHA, 0.01) is False       # explained by a rigid motion
    assert beyond_null(0.02, 1e-4, 0.01) is False
    assert beyond_null(1e-4, float("nan"), 0.01) is True        # no rigid null: plain decides
    assert beyond_null(float("nan"), 1e-4, 0.01) is None


def test_matrix_is_symmetric_with_nan_diagonal_and_bounded_motion():
    maps, halves = _pair(_turned(domain_moved_gaussians(), [40.0, 0.0, 0.0], [0, 0, 0]),
                         noise_sd=0.3)
    out = aligned_ratio(maps, halves)
    assert np.isnan(out[0, 0]) and out[0, 1] == out[1, 0]
    # a 40 deg turn is beyond what pose errors do: the bounded fit cannot explain it away
    assert MAX_ROTATION_DEG < 40.0 and np.log(out[0, 1]) > 1.0
