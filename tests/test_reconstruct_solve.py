"""The M-step's grid arithmetic against its definitions (written out in float64 here).

``solve_grid`` evaluates ``V = (v num + mean) / (1 + v den)`` (``v = pad**3 tau2``) over the
whole grid in single precision, ``grid_to_volume`` inverts only the half ``kx >= 0`` of a
Hermitian grid and ``fsc`` skips the centring shifts: each must give what the plain formula
gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from hetclass.fsc import fsc
from hetclass.reconstruct import _sinc2_profile, grid_shells, grid_to_volume, solve_grid, symmetrise, volume_to_grid

PAD = 2


def _hermitian_pair(side: int, seed: int):
    rng = np.random.default_rng(seed)
    num = (rng.standard_normal((side,) * 3) + 1j * rng.standard_normal((side,) * 3))
    den = rng.random((side,) * 3) * 50.0
    return symmetrise(num.astype(np.complex64), den.astype(np.float32))


def _reference_solve(num, den, tau2, shells, r_max, mean):
    """The MAP estimate voxel by voxel in float64 (tau2 <= 0 or NaN: no signal)."""
    t = np.nan_to_num(np.asarray(tau2, np.float64))[np.minimum(shells, len(tau2) - 1)]
    num, den = num.ravel().astype(np.complex128), den.ravel().astype(np.float64)
    prior = np.zeros_like(num) if mean is None else mean.ravel().astype(np.complex128)
    out = np.where(t > 0, (num + prior / (PAD ** 3 * np.where(t > 0, t, 1.0)))
                   / (den + 1.0 / (PAD ** 3 * np.where(t > 0, t, 1.0))), prior)
    out[shells > r_max] = 0
    return out


@pytest.mark.parametrize("with_mean", [False, True])
def test_solve_grid_is_the_map_estimate_in_every_voxel(with_mean):
    side, r_max = 32, 7
    num, den = _hermitian_pair(side, 1)
    shells = grid_shells(side, PAD)
    mean = None
    if with_mean:
        mean = solve_grid(*_hermitian_pair(side, 2), np.full(20, 0.3), shells, PAD, r_max)
        mean = mean + 0.5 * np.exp(1j * shells.reshape(num.shape)).astype(np.complex64)  # non-zero outside too
    tau2 = np.abs(np.random.default_rng(3).standard_normal(12)) + 0.01
    tau2[3], tau2[5], tau2[6] = 0.0, np.nan, -1.0       # no signal in these shells
    got = solve_grid(num, den, tau2, shells, PAD, r_max, prior_mean=mean)
    want = _reference_solve(num, den, tau2, shells, r_max, mean).reshape(num.shape)
    assert got.dtype == np.complex64
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    sh = shells.reshape(num.shape)
    assert not np.any(got[sh > r_max])
    tight = np.isin(sh, [3, 5, 6])
    assert np.allclose(got[tight], 0 if mean is None else mean[tight])


@pytest.mark.parametrize("box", [12, 13])
def test_half_inverse_equals_the_full_complex_inverse(box):
    side = PAD * box
    num, den = _hermitian_pair(side, 4)
    grid = solve_grid(num, den, np.full(40, 2.0), grid_shells(side, PAD), PAD, box // 2)
    full = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(grid.astype(np.complex128)))).real
    lo = side // 2 - box // 2
    want = full[lo:lo + box, lo:lo + box, lo:lo + box] / _sinc2_profile(box, side)
    got = grid_to_volume(grid, box)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_volume_survives_the_round_trip():
    """volume_to_grid divides by the gridding kernel's sinc^2 profile (pre-correction for
    slicing); without grid_to_volume's own correction the map comes back as that."""
    vol = np.random.default_rng(5).standard_normal((16, 16, 16)).astype(np.float32)
    back = grid_to_volume(volume_to_grid(vol, PAD), 16, correct=False)
    assert np.abs(back - vol / _sinc2_profile(16, 16 * PAD)).max() < 1e-4


@pytest.mark.parametrize("box", [16, 17])
def test_fsc_without_centring_shifts(box):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((box,) * 3)
    b = 0.7 * a + rng.standard_normal((box,) * 3)
    f1 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a)))
    f2 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(b)))
    c = np.arange(box) - box // 2
    r = np.rint(np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2))
    n = box // 2 + 1
    want = np.array([np.sum((f1 * f2.conj()).real[r == s])
                     / np.sqrt(np.sum(abs(f1[r == s]) ** 2) * np.sum(abs(f2[r == s]) ** 2))
                     for s in range(n)])
    assert np.allclose(fsc(a, b), want, atol=1e-10)


def test_solve_grid_with_a_precomputed_variance_is_the_same_grid():
    """The M-step computes each prior's variance grid once and passes it to every solve."""
    from hetclass.reconstruct import prior_variance
    side, r_max = 2 * 12, 5
    shells = grid_shells(side, PAD)
    num, den = _hermitian_pair(side, 3)
    mean, _ = _hermitian_pair(side, 4)
    tau2 = np.linspace(2.0, 0.0, 9)
    tau2[3] = np.nan
    variance = prior_variance(tau2, shells, PAD, r_max)
    for prior_mean in (None, mean):
        direct = solve_grid(num, den, tau2, shells, PAD, r_max, prior_mean=prior_mean)
        shared = solve_grid(num, den, None, shells, PAD, r_max, prior_mean=prior_mean,
                            variance=variance)
        np.testing.assert_array_equal(direct, shared)
    with pytest.raises(ValueError):
        solve_grid(num, den, None, shells, PAD, r_max)
