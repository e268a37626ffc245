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

from .fourier import fftn, ifftn, radial_mean
from .gpu.xp import Array, array_module
from .projector import hermitian_flip


def _sinc2_profile(box_px: int, side: int, xp=np):
    """(b, b, b) sinc^2 of the trilinear kernel's transform, at the padded grid's sampling."""
    c = (np.arange(box_px) - box_px // 2) / side
    s = xp.asarray(np.sinc(c) ** 2)
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).astype(np.float32)


def volume_to_grid(volume: Array, pad: int) -> Array:
    """Centred (b, b, b) map -> centred (N, N, N) complex64 transform, N = pad * b."""
    xp = array_module(volume)
    b = volume.shape[0]
    side = pad * b
    corrected = volume / _sinc2_profile(b, side, xp)
    padded = xp.zeros((side, side, side), dtype=np.float32)
    lo = side // 2 - b // 2
    padded[lo:lo + b, lo:lo + b, lo:lo + b] = corrected
    f = xp.fft.fftshift(fftn(xp.fft.ifftshift(padded)))
    return f.astype(np.complex64)


def volume_grids(volumes, pad: int) -> np.ndarray:
    """(N**3, K) complex64 projection grid of a stack of K (b, b, b) maps, classes as
    columns (:func:`volume_to_grid` of each, :func:`hetclass.projector.stack_grids`)."""
    from .projector import stack_grids
    return stack_grids(np.stack([volume_to_grid(np.asarray(m, np.float32), pad) for m in volumes]))


def grid_to_volume(grid: Array, box_px: int, correct: bool = True) -> Array:
    """Centred (N, N, N) transform -> centred (b, b, b) float32 map (central window)."""
    xp = array_module(grid)
    side = grid.shape[0]
    full = xp.fft.fftshift(ifftn(xp.fft.ifftshift(grid))).real
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


def solve_grid(num: Array, den: Array, tau2_shell: Array, shells: Array, pad: int, r_max_px: int,
               prior_mean: Optional[Array] = None) -> Array:
    """Regularised estimate on the padded grid; voxels beyond ``r_max_px`` are zero.

    ``num`` (N,N,N) complex, ``den`` (N,N,N) float (already symmetrised), ``tau2_shell``
    (n_shells,) signal power per voxel of the unpadded transform (0 = no signal),
    ``shells`` (N**3,) from :func:`grid_shells`. ``prior_mean`` (N,N,N) complex, optional:
    the prior is centred there instead of at zero, ``V = (num + lam * prior_mean) / (den +
    lam)`` with ``lam = 1 / (pad**3 tau2)`` (``tau2 = 0`` then gives ``prior_mean``).
    """
    xp = array_module(num)
    shape = num.shape
    shells = xp.asarray(shells)
    tau2 = xp.asarray(tau2_shell, dtype=np.float64)
    # only voxels inside r_max can be non-zero: solve there (about a third of the grid)
    inside = xp.flatnonzero(shells <= r_max_px)
    t = tau2[xp.minimum(shells[inside], len(tau2) - 1)]
    with np.errstate(divide="ignore"):
        inv_prior = xp.where(t > 0, 1.0 / (pad ** 3 * xp.maximum(t, 1e-30)), np.inf)
    if prior_mean is None:
        d = den.ravel()[inside].astype(np.float64) + inv_prior
        ok = xp.isfinite(d) & (d > 0)
        out = xp.zeros(num.size, dtype=np.complex64)
        out[inside] = xp.where(ok, num.ravel()[inside] / xp.where(ok, d, 1.0), 0)
        return out.reshape(shape)
    mean = prior_mean.ravel()[inside]
    d = den.ravel()[inside].astype(np.float64)
    lam = xp.where(xp.isfinite(inv_prior), inv_prior, 0.0)
    tight = ~xp.isfinite(inv_prior)              # tau2 = 0: the prior mean itself
    est = (num.ravel()[inside] + lam * mean) / xp.maximum(d + lam, 1e-30)
    est = xp.where(tight | (d + lam <= 0), mean, est)
    out = xp.zeros(num.size, dtype=np.complex64)
    out[inside] = est
    return out.reshape(shape)


def shell_power(grid: Array, shells: Array, n_shells: int) -> Array:
    """Mean |V|^2 per (unpadded) shell of a padded grid."""
    xp = array_module(grid)
    return radial_mean(xp.abs(grid.ravel()) ** 2, shells, n_shells)
