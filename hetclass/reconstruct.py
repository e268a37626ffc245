"""Between real-space maps and padded Fourier grids, and the regularised reconstruction.

``volume_to_grid`` prepares a map for trilinear slicing (gridding pre-correction, zero
padding, centred FFT); ``grid_to_volume`` goes back. ``solve_grid`` is the M-step: the MAP
estimate ``V = num / (den + 1 / (pad**3 * tau2))`` per voxel, after enforcing Hermitian
symmetry of the accumulators (only half-planes of data are inserted).

Every function works on NumPy or CuPy arrays (the module of the map/grid argument); small
NumPy side inputs (``shells``, ``tau2_shell``) are moved to that module.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .fourier import fft_axis, fftn, irfft_axis, irfftn, radial_mean
from .gpu.xp import Array, array_module, to_host
from .parallel import thread_map
from .projector import hermitian_flip


def _sinc2_profile(box_px: int, side: int, xp=np):
    """(b, b, b) sinc^2 of the trilinear kernel's transform, at the padded grid's sampling."""
    c = (np.arange(box_px) - box_px // 2) / side
    s = xp.asarray(np.sinc(c) ** 2)
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).astype(np.float32)


def _window_positions(box_px: int, side: int) -> np.ndarray:
    """(b,) positions of a centred b-sample window in the un-centred (``ifftshift``) order of
    a length-``side`` axis: ``(i - b//2) mod side``."""
    return (np.arange(box_px) - box_px // 2) % side


def _checker(positions: np.ndarray, xp=np):
    """(b, b, b) ``(-1)^(z + y + x)`` over the 3-D grid of ``positions`` (one per axis)."""
    c = np.where(positions % 2 == 0, 1.0, -1.0)
    return xp.asarray((c[:, None, None] * c[None, :, None] * c[None, None, :]).astype(np.float32))


def volume_to_grid(volume: Array, pad: int) -> Array:
    """Centred (b, b, b) map -> centred (N, N, N) complex64 transform, N = pad * b.

    ``fftshift(fftn(ifftshift(zero-padded map)))`` (the map gridding-corrected) without the
    shifts or the zeros' work (N even): the map is written straight to its ``ifftshift``
    positions, the output ``fftshift`` is the factor ``(-1)^n`` on those samples, and the
    transform runs axis by axis over the lines that hold data only (x: b^2 lines, y: b N,
    z: N^2).
    """
    xp = array_module(volume)
    b = volume.shape[0]
    side = pad * b
    if side % 2:
        return _volume_to_grid_shifted(volume, pad)
    positions = _window_positions(b, side)
    at = xp.asarray(positions)
    corrected = volume * (_checker(positions, xp) / _sinc2_profile(b, side, xp))
    lines = xp.zeros((b, b, side), dtype=np.float32)
    lines[:, :, at] = corrected
    plane = xp.zeros((b, side, side), dtype=np.complex64)
    plane[:, at, :] = fft_axis(lines, 2)
    grid = xp.zeros((side, side, side), dtype=np.complex64)
    grid[at] = fft_axis(plane, 1, overwrite=True)
    return fft_axis(grid, 0, overwrite=True).astype(np.complex64, copy=False)


def _volume_to_grid_shifted(volume: Array, pad: int) -> Array:
    """:func:`volume_to_grid` with explicit shifts (any grid side)."""
    xp = array_module(volume)
    b = volume.shape[0]
    side = pad * b
    corrected = volume / _sinc2_profile(b, side, xp)
    padded = xp.zeros((side, side, side), dtype=np.float32)
    lo = side // 2 - b // 2
    padded[lo:lo + b, lo:lo + b, lo:lo + b] = corrected
    f = xp.fft.fftshift(fftn(xp.fft.ifftshift(padded)))
    return f.astype(np.complex64)


def volume_grids(volumes, pad: int, threads: int = 1) -> np.ndarray:
    """(N**3, K) complex64 projection grid of a stack of K (b, b, b) maps, classes as
    columns (:func:`volume_to_grid` of each, by ``threads`` threads; the layout of
    :func:`hetclass.projector.stack_grids`)."""
    k = len(volumes)
    side = pad * int(volumes[0].shape[0])
    out = np.empty((side ** 3, k), dtype=np.complex64)
    grids = thread_map(lambda m: volume_to_grid(np.asarray(m, np.float32), pad), volumes,
                       threads)
    for j, grid in enumerate(grids):
        out[:, j] = grid.ravel()
    return out


def grid_to_volume(grid: Array, box_px: int, correct: bool = True) -> Array:
    """Centred (N, N, N) transform of a real map -> centred (b, b, b) float32 map (central
    window).

    ``grid`` must be Hermitian (``grid[p] == conj(grid[-p])``, as every solved grid is: the
    accumulators are symmetrised and the prior is radial): only its half ``x < N/2 + 1`` is
    read, by a real inverse FFT (half the work of the complex one, the same map). N even:
    without the shifts (the input ``ifftshift`` is the factor ``(-1)^n`` on the output, the
    output ``fftshift`` reads the window at its un-centred positions) and axis by axis over
    the lines the window needs only (z: N (N/2+1), y: b (N/2+1), x: b^2).
    """
    xp = array_module(grid)
    side = grid.shape[0]
    if side % 2:
        return _grid_to_volume_shifted(grid, box_px, correct)
    positions = _window_positions(box_px, side)
    at = xp.asarray(positions)
    half = grid[:, :, :side // 2 + 1]
    rows = fft_axis(half, 0, inverse=True)[at]
    rows = fft_axis(rows, 1, inverse=True, overwrite=True)[:, at]
    vol = irfft_axis(rows, side, 2)[:, :, at]
    factor = _checker(positions, xp)
    if correct:
        factor = factor / _sinc2_profile(box_px, side, xp)
    return (vol * factor).astype(np.float32)


def _grid_to_volume_shifted(grid: Array, box_px: int, correct: bool = True) -> Array:
    """:func:`grid_to_volume` with explicit shifts (any grid side)."""
    xp = array_module(grid)
    side = grid.shape[0]
    half = xp.fft.ifftshift(grid)[..., :side // 2 + 1]
    full = xp.fft.fftshift(irfftn(half, shape=grid.shape))
    lo = side // 2 - box_px // 2
    vol = full[lo:lo + box_px, lo:lo + box_px, lo:lo + box_px].astype(np.float32)
    if correct:
        vol = vol / _sinc2_profile(box_px, side, xp)
    return vol


def grid_shells(side: int, pad: int) -> np.ndarray:
    """(N**3,) int shell index of every padded-grid voxel, in unpadded frequency units."""
    c = (np.arange(side) - side // 2).astype(np.float32)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.rint(np.sqrt(x * x + y * y + z * z) / pad).astype(np.int32).ravel()


def symmetrise(num: Array, den: Array) -> Tuple[Array, Array]:
    """Add the Hermitian mirror of the accumulators: (N,N,N) complex and real."""
    return num + hermitian_flip(num).conj(), den + hermitian_flip(den)


def prior_variance(tau2_shell: Array, shells: Array, pad: int, r_max_px: int, xp=np) -> Array:
    """(N**3,) float32 prior variance ``pad**3 tau2`` of every padded-grid voxel (by its
    clipped shell), 0 beyond ``r_max_px`` and where ``tau2`` is not positive or not finite."""
    tau2 = np.maximum(np.nan_to_num(np.asarray(to_host(tau2_shell), dtype=np.float64)), 0.0)
    top = int(max(r_max_px, len(tau2) - 1)) + 1
    table = np.zeros(top + 1, np.float32)
    table[:top] = pad ** 3 * tau2[np.minimum(np.arange(top), len(tau2) - 1)]
    table[r_max_px + 1:] = 0.0
    return xp.asarray(table)[xp.minimum(xp.asarray(shells), top)]


def solve_grid(num: Array, den: Array, tau2_shell: Optional[Array], shells: Array, pad: int,
               r_max_px: int, prior_mean: Optional[Array] = None,
               variance: Optional[Array] = None) -> Array:
    """Regularised estimate on the padded grid; voxels beyond ``r_max_px`` are zero.

    ``num`` (N,N,N) complex, ``den`` (N,N,N) float (already symmetrised), ``tau2_shell``
    (n_shells,) signal power per voxel of the unpadded transform (0 = no signal),
    ``shells`` (N**3,) from :func:`grid_shells`. ``prior_mean`` (N,N,N) complex, optional:
    the prior is centred there instead of at zero, ``V = (num + lam * prior_mean) / (den +
    lam)`` with ``lam = 1 / (pad**3 tau2)`` (``tau2 = 0`` then gives ``prior_mean``).
    ``variance``: :func:`prior_variance` of these arguments, when the caller solves many
    grids with one prior (then ``tau2_shell`` is not read and may be None).

    Written with the prior's variance ``v = pad**3 tau2`` instead of its precision ``lam``,
    ``V = (v num + prior_mean) / (1 + v den)``: finite for every ``tau2 >= 0`` and
    ``den >= 0``, so the whole grid is one single-precision expression.
    """
    xp = array_module(num)
    if variance is None:
        if tau2_shell is None:
            raise ValueError("solve_grid needs tau2_shell or variance")
        variance = prior_variance(tau2_shell, shells, pad, r_max_px, xp)
    variance = variance.reshape(num.shape)
    out = variance * num
    if prior_mean is not None:
        out += prior_mean
    out /= 1.0 + variance * den.astype(np.float32, copy=False)
    if prior_mean is not None:      # without a prior mean the zero variance did it
        out[xp.asarray(shells).reshape(num.shape) > r_max_px] = 0
    return out.astype(np.complex64, copy=False)


def shell_power(grid: Array, shells: Array, n_shells: int) -> Array:
    """Mean |V|^2 per (unpadded) shell of a padded grid."""
    xp = array_module(grid)
    return radial_mean(xp.abs(grid.ravel()) ** 2, shells, n_shells)
