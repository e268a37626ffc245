"""Between real-space maps and padded Fourier grids, and the regularised reconstruction.

``volume_to_grid`` prepares a map for trilinear slicing (gridding pre-correction, zero
padding, centred FFT); ``grid_to_volume`` goes back. ``solve_grid`` is the M-step: the MAP
estimate ``V = num / (den + 1 / (pad**3 * tau2))`` per voxel, after enforcing Hermitian
symmetry of the accumulators (only half-planes of data are inserted).
"""

from __future__ import annotations

import numpy as np

from .fourier import radial_mean
from .projector import hermitian_flip


def _sinc2_profile(box_px: int, side: int) -> np.ndarray:
    """(b, b, b) sinc^2 of the trilinear kernel's transform, at the padded grid's sampling."""
    c = (np.arange(box_px) - box_px // 2) / side
    s = np.sinc(c) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).astype(np.float32)


def volume_to_grid(volume: np.ndarray, pad: int) -> np.ndarray:
    """Centred (b, b, b) map -> centred (N, N, N) complex64 transform, N = pad * b."""
    b = volume.shape[0]
    side = pad * b
    corrected = volume / _sinc2_profile(b, side)
    padded = np.zeros((side, side, side), dtype=np.float32)
    lo = side // 2 - b // 2
    padded[lo:lo + b, lo:lo + b, lo:lo + b] = corrected
    f = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(padded)))
    return f.astype(np.complex64)


def grid_to_volume(grid: np.ndarray, box_px: int, correct: bool = True) -> np.ndarray:
    """Centred (N, N, N) transform -> centred (b, b, b) float32 map (central window)."""
    side = grid.shape[0]
    full = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(grid))).real
    lo = side // 2 - box_px // 2
    vol = full[lo:lo + box_px, lo:lo + box_px, lo:lo + box_px].astype(np.float32)
    if correct:
        vol = vol / _sinc2_profile(box_px, side)
    return vol


def grid_shells(side: int, pad: int) -> np.ndarray:
    """(N**3,) int shell index of every padded-grid voxel, in unpadded frequency units."""
    c = (np.arange(side) - side // 2).astype(np.float32)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.rint(np.sqrt(x * x + y * y + z * z) / pad).astype(np.int32).ravel()


def symmetrise(num: np.ndarray, den: np.ndarray):
    """Add the Hermitian mirror of the accumulators: (N,N,N) complex and real."""
    return num + np.conj(hermitian_flip(num)), den + hermitian_flip(den)


def solve_grid(num: np.ndarray, den: np.ndarray, tau2_shell: np.ndarray, shells: np.ndarray,
               pad: int, r_max_px: int) -> np.ndarray:
    """Regularised estimate on the padded grid; voxels beyond ``r_max_px`` are zero.

    ``num`` (N,N,N) complex, ``den`` (N,N,N) float (already symmetrised), ``tau2_shell``
    (n_shells,) signal power per voxel of the unpadded transform (0 = no signal).
    """
    shape = num.shape
    tau2 = np.asarray(tau2_shell, dtype=np.float64)
    s = np.minimum(shells, len(tau2) - 1)
    t = tau2[s]
    with np.errstate(divide="ignore"):
        inv_prior = np.where(t > 0, 1.0 / (pad ** 3 * np.maximum(t, 1e-30)), np.inf)
    d = den.ravel().astype(np.float64) + inv_prior
    out = np.where((shells <= r_max_px) & np.isfinite(d) & (d > 0),
                   num.ravel() / np.where(np.isfinite(d) & (d > 0), d, 1.0), 0)
    return out.reshape(shape).astype(np.complex64)


def shell_power(grid: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    """Mean |V|^2 per (unpadded) shell of a padded grid."""
    return radial_mean(np.abs(grid.ravel()) ** 2, shells, n_shells)
