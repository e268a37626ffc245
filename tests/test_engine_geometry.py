"""Engine primitives: Fourier-slice operator, reconstruction, conventions (issue 2, section 3).

Physical invariants with known truth: project -> back-project of a white-ish map recovers it
(FSC > 0.99 up to the target shell); slices agree with the independent analytic projector of
:mod:`hetclass.simulate`; Hermitian symmetry, rotation and CTF conventions.
"""

import numpy as np
import pytest

from hetclass.ctf import ctf_values
from hetclass.fourier import centred_rfft2, coefficient_set
from hetclass.fsc import fsc
from hetclass.geometry import euler_to_matrix, matrix_to_euler, matrix_to_rotvec, rotvec_to_matrix
from hetclass.masks import soft_sphere
from hetclass.phantoms import model_to_gaussians, phantom_model, rasterise
from hetclass.projector import backproject, hermitian_flip, project, slice_operator, stack_grids
from hetclass.reconstruct import grid_shells, grid_to_volume, solve_grid, symmetrise, volume_to_grid
from hetclass.simulate import project_gaussians, random_rotations

BOX = 32
PAD = 2
TARGET_SHELL = 12          # the likelihood's last shell; data kept two shells further
DATA_SHELL = TARGET_SHELL + 2


def _uniform_rotations(n, seed):
    rot, tilt, psi = random_rotations(np.random.default_rng(seed), n)
    return euler_to_matrix(rot, tilt, psi)


def _white_map(seed):
    vol = np.random.default_rng(seed).standard_normal((BOX, BOX, BOX)).astype(np.float32)
    return vol * soft_sphere(BOX, BOX / 2 - 5, 3.0)


def _reconstruct(slices, operator, n, m, ctf=None):
    """Back-project (n, M) complex slices (optionally CTF-weighted) and solve with no prior."""
    c = np.ones((n, m), np.float32) if ctf is None else ctf
    num_vals = (c * slices).astype(np.complex64).reshape(-1, 1).view(np.float32)
    values = np.concatenate([num_vals, (c * c).reshape(-1, 1).astype(np.float32)], axis=1)
    bp = backproject(operator, values)
    side = PAD * BOX
    num = (bp[:, 0] + 1j * bp[:, 1]).reshape(side, side, side)
    den = bp[:, 2].astype(np.float64).reshape(side, side, side)
    num, den = symmetrise(num, den)
    huge_tau2 = np.full(DATA_SHELL + 1, 1e12)
    grid = solve_grid(num, den, huge_tau2, grid_shells(side, PAD), PAD, DATA_SHELL)
    return grid_to_volume(grid, BOX)


@pytest.mark.parametrize("with_ctf", [False, True])
def test_project_backproject_recovers_map(with_ctf):
    vol = _white_map(1)
    coeffs = coefficient_set(BOX, DATA_SHELL)
    n = 3000
    op = slice_operator(_uniform_rotations(n, 2), coeffs, PAD)
    slices = project(op, stack_grids(volume_to_grid(vol, PAD)[None]), n, coeffs.size)[:, :, 0]
    ctf = None
    if with_ctf:  # CTF-weighted insertion (num = sum c x, den = sum c^2), x = c * slice
        rng = np.random.default_rng(3)
        du = rng.uniform(8000, 20000, n)
        size_A = BOX * 2.0
        ctf = ctf_values(coeffs.kx / size_A, coeffs.ky / size_A, du, du - 300,
                         rng.uniform(0, 180, n),
                         300.0, 2.7, 0.1)
        slices = ctf * slices
    rec = _reconstruct(slices, op, n, coeffs.size, ctf)
    curve = fsc(rec, vol)
    assert curve[1:TARGET_SHELL + 1].min() > 0.99, np.round(curve, 4)


def test_slices_match_analytic_projections():
    """Our slice of a rasterised phantom equals the FFT of the analytic (Gaussian) projection."""
    box, psize = 48, 4.0
    gauss = model_to_gaussians(phantom_model("open"), blur_A=3.0)
    vol = rasterise(gauss, box, psize)
    n = 12
    rotations = _uniform_rotations(n, 5)
    images = project_gaussians(*gauss, rotations, np.zeros((n, 2)), box, psize) / psize
    coeffs = coefficient_set(box, 14)
    op = slice_operator(rotations, coeffs, PAD)
    ours = project(op, stack_grids(volume_to_grid(vol, PAD)[None]), n, coeffs.size)[:, :, 0]
    theirs = centred_rfft2(images).reshape(n, -1)[:, coeffs.flat_index]
    for i in range(n):
        a, b = ours[i], theirs[i]
        corr = np.real(np.vdot(a, b)) / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real)
        assert corr > 0.995, (i, corr)
        assert abs(np.abs(a).sum() / np.abs(b).sum() - 1) < 0.03  # same scale


def test_hermitian_flip_of_real_volume_transform():
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((16, 16, 16)).astype(np.float32)
    f = volume_to_grid(vol, PAD)
    np.testing.assert_allclose(hermitian_flip(f), np.conj(f), atol=1e-3 * np.abs(f).max())
    g = rng.standard_normal((8, 8, 8))
    # out[p] = g[-p] for a centred grid (index c + p <-> c - p, c = 4)
    out = hermitian_flip(g)
    assert out[4, 4, 4] == g[4, 4, 4]
    assert out[5, 3, 7] == g[3, 5, 1]
    np.testing.assert_array_equal(hermitian_flip(out), g)
    num, den = symmetrise(f, np.abs(f))
    np.testing.assert_allclose(hermitian_flip(num), np.conj(num), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(hermitian_flip(den), den)


def test_euler_round_trip_including_degenerate_tilts():
    rng = np.random.default_rng(4)
    rot = rng.uniform(-180, 180, 500)
    tilt = rng.uniform(0.5, 179.5, 500)
    psi = rng.uniform(-180, 180, 500)
    r2, t2, p2 = matrix_to_euler(euler_to_matrix(rot, tilt, psi))
    wrap = lambda d: (d + 180.0) % 360.0 - 180.0  # noqa: E731
    np.testing.assert_allclose(wrap(r2 - rot), 0, atol=1e-8)
    np.testing.assert_allclose(t2, tilt, atol=1e-8)
    np.testing.assert_allclose(wrap(p2 - psi), 0, atol=1e-8)
    # tilt 0 / 180: angles not unique, the matrix is
    for t in (0.0, 180.0):
        m = euler_to_matrix([30.0, -70.0], [t, t], [10.0, 125.0])
        back = euler_to_matrix(*matrix_to_euler(m))
        np.testing.assert_allclose(back, m, atol=1e-12)
        assert np.allclose(matrix_to_euler(m)[1], t)
    # RELION's matrix entries (stated in hetclass.geometry)
    a = euler_to_matrix(20.0, 40.0, 70.0)[0]
    r, t, p = np.deg2rad([20.0, 40.0, 70.0])
    assert np.isclose(a[0, 0], np.cos(p) * np.cos(t) * np.cos(r) - np.sin(p) * np.sin(r))
    assert np.isclose(a[2, 2], np.cos(t))
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(a), 1.0)


def test_rotvec_round_trip_including_pi():
    rng = np.random.default_rng(6)
    axes = rng.standard_normal((400, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi - 1e-3, 396), [0.0, 1e-9, np.pi - 1e-7, np.pi]])
    vecs = axes * angles[:, None]
    mats = rotvec_to_matrix(vecs)
    np.testing.assert_allclose(rotvec_to_matrix(matrix_to_rotvec(mats)), mats, atol=1e-6)
    regular = angles < np.pi - 1e-3
    np.testing.assert_allclose(matrix_to_rotvec(mats)[regular], vecs[regular], atol=1e-8)
    # active right-handed: +90 deg about z takes x to y
    np.testing.assert_allclose(rotvec_to_matrix([0, 0, np.pi / 2])[0] @ [1, 0, 0], [0, 1, 0],
                               atol=1e-12)


def test_ctf_at_zero_frequency_equals_amplitude_contrast():
    q0 = np.array([0.07, 0.1, 0.2])
    v = ctf_values(np.zeros(1), np.zeros(1), [10000.0, 20000.0, 5000.0], [9000.0, 20000.0, 4000.0],
                   [0.0, 30.0, 90.0], 300.0, 2.7, q0)
    np.testing.assert_allclose(v[:, 0], q0, rtol=1e-6)
    scaled = ctf_values(np.zeros(1), np.zeros(1), 10000.0, 10000.0, 0.0, 200.0, 2.0, 0.1,
                        scale=0.5, bfactor_A2=100.0)
    assert np.isclose(float(np.ravel(scaled)[0]), 0.05, rtol=1e-6)


@pytest.mark.parametrize("box,r_max", [(32, 14), (40, 18), (31, 15), (16, 8)])
def test_coefficient_set_has_no_hermitian_duplicates(box, r_max):
    c = coefficient_set(box, r_max)
    pairs = set(zip(c.kx.tolist(), c.ky.tolist()))
    assert len(pairs) == c.size
    for kx, ky in pairs:
        if (kx, ky) != (0, 0):
            assert (-kx, -ky) not in pairs, (kx, ky)
    r = int(min(r_max, box // 2))
    if r < box / 2:  # below Nyquist: with their mirrors they cover the disk exactly once
        full = pairs | {(-kx, -ky) for kx, ky in pairs}
        disk = {(x, y) for x in range(-r, r + 1) for y in range(-r, r + 1)
                if x * x + y * y <= r * r}
        assert full == disk
    assert np.all(c.kx >= 0)
    np.testing.assert_array_equal(c.shell, np.rint(np.hypot(c.kx, c.ky)).astype(int))
