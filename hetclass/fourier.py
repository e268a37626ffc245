"""Fourier-space conventions and grid helpers.

Conventions (used everywhere in the engine):

* Real-space images and maps of side ``b`` are centred at index ``b // 2`` on every axis
  (RELION's centre). Transforms are taken after ``ifftshift`` so that phases are relative to
  that centre; forward transforms are unnormalised (numpy's default).
* 2D data are stored as a compact vector of ``M`` coefficients of the half-plane
  ``rfft2`` layout: every ``(kx, ky)`` with ``kx >= 0``, ``kx**2 + ky**2 <= r_max**2`` and not
  ``(kx == 0 and ky < 0)`` (the Hermitian duplicates). ``kx, ky`` are integer frequencies in
  cycles per box. The coefficients are ordered by shell (``round(|k|)``), so the data up to
  any resolution are a prefix of the vector (:meth:`CoefficientSet.count_below`).
* 3D volumes used for slicing are zero-padded by ``pad`` and stored *centred* (DC at index
  ``N // 2``, ``N = pad * b``), indexed ``[z, y, x]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .gpu.xp import Array, array_module


@dataclass(frozen=True)
class CoefficientSet:
    """The half-plane coefficients kept for a box ``box_px`` up to radius ``r_max_px``."""

    box_px: int
    r_max_px: int
    kx: np.ndarray          # (M,) int, cycles per box
    ky: np.ndarray          # (M,) int
    flat_index: np.ndarray  # (M,) int, index into the flattened rfft2 array (b, b//2+1)
    shell: np.ndarray       # (M,) int, round(|k|)

    @property
    def size(self) -> int:
        return int(self.kx.shape[0])

    @property
    def n_shells(self) -> int:
        return self.r_max_px + 1

    def prefix(self, m: int) -> "CoefficientSet":
        """The first ``m`` coefficients (those of the lowest shells)."""
        m = int(m)
        if m == self.size:
            return self
        return CoefficientSet(self.box_px, int(self.shell[m - 1]) if m else 0, self.kx[:m],
                              self.ky[:m], self.flat_index[:m], self.shell[:m])

    def count_below(self, n_shells: int) -> int:
        """How many coefficients lie in shells ``< n_shells`` (they come first)."""
        return int(np.searchsorted(self.shell, int(n_shells), side="left"))


def coefficient_set(box_px: int, r_max_px: int) -> CoefficientSet:
    """Half-plane coefficients of an rfft2 of a ``box_px`` image within ``r_max_px``."""
    b = int(box_px)
    r_max = int(min(r_max_px, b // 2))
    ky_all = np.fft.fftfreq(b, d=1.0 / b).round().astype(np.int64)
    kx_all = np.arange(b // 2 + 1, dtype=np.int64)
    KY, KX = np.meshgrid(ky_all, kx_all, indexing="ij")
    radius = np.sqrt(KX.astype(np.float64) ** 2 + KY ** 2)
    keep = (radius <= r_max + 1e-9) & ~((KX == 0) & (KY < 0))
    flat = np.flatnonzero(keep.ravel())
    shell = np.rint(radius.ravel()[flat]).astype(np.int64)
    order = np.argsort(shell, kind="stable")       # by shell, then rfft2 order
    flat, shell = flat[order], shell[order]
    return CoefficientSet(b, r_max, KX.ravel()[flat], KY.ravel()[flat], flat, shell)


def centred_rfft2(images: Array) -> Array:
    """(n, b, b) real images centred at b//2 -> (n, b, b//2+1) complex, phases about the centre."""
    xp = array_module(images)
    return _fft("rfft2", xp.fft.ifftshift(images, axes=(-2, -1)), axes=(-2, -1))


def resize_volume(volume: np.ndarray, new_box_px: int) -> np.ndarray:
    """Fourier crop or zero-pad a centred cubic volume, preserving voxel values.

    Cropping removes frequencies beyond the new Nyquist; padding adds none.
    """
    xp = array_module(volume)
    old = volume.shape[0]
    new = int(new_box_px)
    if new == old:
        return volume.astype(xp.float32, copy=True)
    f = xp.fft.fftshift(xp.fft.fftn(xp.fft.ifftshift(volume)))
    if new < old:
        lo = old // 2 - new // 2
        g = f[lo:lo + new, lo:lo + new, lo:lo + new]
    else:
        g = xp.zeros((new, new, new), dtype=f.dtype)
        lo = new // 2 - old // 2
        g[lo:lo + old, lo:lo + old, lo:lo + old] = f
    out = xp.fft.fftshift(xp.fft.ifftn(xp.fft.ifftshift(g))).real
    return (out * (new / old) ** 3).astype(xp.float32)


def radial_index_3d(box_px: int) -> np.ndarray:
    """(b, b, b) int array of round(|k|) for a centred 3D Fourier grid of side b."""
    c = np.arange(box_px) - box_px // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.rint(np.sqrt(x * x + y * y + z * z)).astype(np.int64)


def radial_mean(values: Array, shells: Array, n_shells: int) -> Array:
    """Mean of ``values`` per shell index (both flat arrays); empty shells give 0.

    NumPy or CuPy (the module of ``values``; ``shells`` is moved there if needed).
    """
    xp = array_module(values)
    v = xp.asarray(values).ravel()
    s = xp.asarray(shells).ravel()
    ok = s < n_shells
    sums = xp.bincount(s[ok], weights=v[ok], minlength=n_shells)[:n_shells]
    counts = xp.bincount(s[ok], minlength=n_shells)[:n_shells]
    return sums / xp.maximum(counts, 1)


def lowpass_volume(volume: Array, pixel_size_A: float, resolution_A: float,
                   edge_px: float = 2.0) -> Array:
    """Soft (raised-cosine edge) low-pass to ``resolution_A`` of a centred cubic map, or of a
    stack of them (``(..., b, b, b)``: one transform for the whole stack). NumPy or CuPy."""
    xp = array_module(volume)
    b = volume.shape[-1]
    r_cut = b * pixel_size_A / resolution_A
    c = np.arange(b) - b // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    filt = np.clip((r_cut + edge_px / 2 - r) / edge_px, 0.0, 1.0)
    filt = xp.asarray(0.5 - 0.5 * np.cos(np.pi * filt))
    axes = (-3, -2, -1)
    f = xp.fft.fftshift(fftn(xp.fft.ifftshift(volume, axes=axes), axes=axes), axes=axes)
    out = ifftn(xp.fft.ifftshift(f * filt, axes=axes), axes=axes)
    return xp.fft.fftshift(out, axes=axes).real.astype(np.float32)


def cpu_workers() -> int:
    """Threads for CPU FFTs: the cores this process may run on (an MPI binding limits them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _fft(name: str, a, **kwargs):
    """``<module>.fft.<name>(a, **kwargs)`` in the module of ``a``; on the CPU ``scipy.fft``
    threaded over :func:`cpu_workers` (keeps single precision)."""
    xp = array_module(a)
    if xp is np:
        import scipy.fft
        return getattr(scipy.fft, name)(a, workers=cpu_workers(), **kwargs)
    return getattr(xp.fft, name)(a, **kwargs)


def fftn(a: Array, axes: Optional[Sequence[int]] = None) -> Array:
    """Complex n-D FFT over ``axes`` (default all) in the module of ``a``; on the CPU
    ``scipy.fft`` threaded over :func:`cpu_workers` (keeps single precision)."""
    return _fft("fftn", a, axes=axes)


def ifftn(a: Array, axes: Optional[Sequence[int]] = None) -> Array:
    """Inverse of :func:`fftn` (same normalisation as ``numpy.fft.ifftn``)."""
    return _fft("ifftn", a, axes=axes)


def fft_axis(a: Array, axis: int, inverse: bool = False, overwrite: bool = False) -> Array:
    """Complex 1-D FFT (``inverse``: its inverse, normalised by ``1/n``) along ``axis``, in
    the module of ``a``. ``overwrite``: ``a`` (complex) is scratch; on the CPU the result
    may use its memory."""
    name = "ifft" if inverse else "fft"
    if overwrite and array_module(a) is np:
        return _fft(name, a, axis=axis, overwrite_x=True)
    return _fft(name, a, axis=axis)


def irfft_axis(a: Array, n: int, axis: int) -> Array:
    """Real 1-D inverse FFT of length ``n`` along ``axis`` from the half ``a`` (``n//2 + 1``
    values), normalised by ``1/n``."""
    return _fft("irfft", a, n=int(n), axis=axis)


def irfftn(a: Array, shape: Sequence[int]) -> Array:
    """Real inverse of a Hermitian transform given by its half ``a[..., :n // 2 + 1]`` (last
    axis), output ``shape`` (same normalisation as ``numpy.fft.irfftn``)."""
    return _fft("irfftn", a, s=tuple(int(n) for n in shape))
