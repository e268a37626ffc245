"""Cutting a batch down to its active particles gives the sums of the full batch.

run_pass projects only the active particles of a batch (exploration subsets, split fits on
one class, subsampled replicates); the inactive ones contributed zero weight before, so
every sum must be the same.
"""

import numpy as np
from scipy.spatial.transform import Rotation

from hetclass.em_step import process_batch, shell_onehot
from hetclass.fourier import coefficient_set
from hetclass.projector import grid_side, particle_rows, slice_operator


def _setup(n=12, box=16, r_max=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    coeffs = coefficient_set(box, r_max)
    rot = Rotation.random(n, random_state=seed).as_matrix()
    op = slice_operator(rot, coeffs, 2)
    m = coeffs.size
    side = grid_side(box, 2)
    grids = (rng.standard_normal((side ** 3, k)) + 1j * rng.standard_normal((side ** 3, k))
             ).astype(np.complex64)
    x = (rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m))).astype(np.complex64)
    c = rng.uniform(0.2, 1.0, (n, m)).astype(np.float32)
    g = rng.integers(0, 2, n)
    n_shells = int(coeffs.shell.max()) + 1
    sigma2 = rng.uniform(0.5, 2.0, (2, n_shells))
    return op, m, grids, x, c, g, sigma2, coeffs.shell, n_shells, k


def test_particle_rows_are_the_operators_rows():
    op, m, *_ = _setup()
    keep = np.array([1, 4, 5, 11])
    rows = (keep[:, None] * m + np.arange(m)).ravel()
    cut = particle_rows(op, keep, m)
    assert cut.shape == (keep.size * m, op.shape[1])
    assert (cut != op[rows]).nnz == 0


def test_active_rows_only_gives_the_same_sums():
    op, m, grids, x, c, g, sigma2, shell, n_shells, k = _setup()
    onehot = shell_onehot(shell, n_shells)
    log_prior = np.log(np.full(k, 1.0 / k))
    rows = np.arange(x.shape[0])
    active = np.zeros(rows.size, bool)
    active[[0, 3, 4, 9, 10]] = True
    keep = np.flatnonzero(active)
    for hard in (False, True):
        full = process_batch(rows, 0, op, grids, x, c, g, sigma2, log_prior, onehot, shell,
                             n_shells, hard, active=active)
        cut = process_batch(rows[keep], 0, particle_rows(op, keep, m), grids, x[keep], c[keep],
                            g[keep], sigma2, log_prior, onehot, shell, n_shells, hard,
                            active=np.ones(keep.size, bool))
        np.testing.assert_allclose(cut.grid, full.grid, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cut.acc.noise, full.acc.noise, rtol=1e-10)
        np.testing.assert_allclose(cut.acc.class_weight, full.acc.class_weight, rtol=1e-12)
        np.testing.assert_allclose(cut.acc.log_likelihood, full.acc.log_likelihood, rtol=1e-10)
        np.testing.assert_allclose(cut.posteriors, full.posteriors[keep], rtol=1e-6)
        assert np.abs(full.grid).max() > 0
