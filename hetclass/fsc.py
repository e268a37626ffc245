"""Fourier shell correlation and resolution from it."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .fourier import fftn, radial_index_3d
from .gpu.xp import array_module


def fsc(map1: np.ndarray, map2: np.ndarray) -> np.ndarray:
    """FSC between two centred cubic maps of side b; returns (b//2 + 1,) float64 (shell 0 = DC).

    NumPy or CuPy maps; the curve is in the maps' array module.
    """
    xp = array_module(map1, map2)
    b = map1.shape[0]
    # plain transforms: centring only multiplies both by the same unit phase, which cancels
    # in f1 f2* and |f|^2; the shells are laid out as the unshifted transform is
    f1 = fftn(map1)
    f2 = fftn(map2)
    shells = xp.asarray(np.fft.ifftshift(radial_index_3d(b)).ravel())
    n = b // 2 + 1
    ok = shells < n
    s = shells[ok]
    cross = xp.bincount(s, weights=(f1 * f2.conj()).real.ravel()[ok], minlength=n)
    p1 = xp.bincount(s, weights=(xp.abs(f1) ** 2).ravel()[ok], minlength=n)
    p2 = xp.bincount(s, weights=(xp.abs(f2) ** 2).ravel()[ok], minlength=n)
    return cross / xp.sqrt(xp.maximum(p1 * p2, 1e-30))


RESOLUTION_MEASURED = "measured"     # the FSC crossed the threshold inside the data
RESOLUTION_AT_LIMIT = "crop_limit"   # never crossed: the value is the data's limit, not a measurement
RESOLUTION_NONE = "unmeasured"       # below the threshold from the first shell (empty/tiny class)


def fsc_resolution(curve: np.ndarray, box_px: int, pixel_size_A: float,
                   threshold: float = 0.143, max_shell: Optional[int] = None
                   ) -> Tuple[float, str]:
    """Resolution (A) where the FSC first drops below ``threshold``, and what the number is.

    Returns ``(resolution_A, status)``. ``status`` is :data:`RESOLUTION_MEASURED` when the
    curve crosses the threshold between shell 1 and ``max_shell`` (linear interpolation
    between the two shells around the crossing); :data:`RESOLUTION_AT_LIMIT` when it never
    does (the value is the resolution of ``max_shell``, the finest shell used: a bound, not
    a measurement); :data:`RESOLUTION_NONE` when shell 1 is already below the threshold
    (nothing was resolved: the value is NaN). A measured value is never finer than Nyquist
    (``2 * pixel_size_A``) nor than ``max_shell``.
    """
    curve = np.asarray(curve, dtype=np.float64)
    last = len(curve) - 1 if max_shell is None else min(int(max_shell), len(curve) - 1)
    last = max(last, 1)
    size_A = box_px * pixel_size_A
    values = np.nan_to_num(curve[1:last + 1], nan=-1.0)
    below = np.flatnonzero(values < threshold)
    if below.size == 0:
        return float(size_A / last), RESOLUTION_AT_LIMIT
    i = int(below[0]) + 1
    if i == 1:
        return float("nan"), RESOLUTION_NONE
    a, c = values[i - 2], values[i - 1]
    shell = (i - 1) + (a - threshold) / (a - c) if a != c else float(i - 1)
    shell = min(max(shell, 1.0), float(last))
    return float(max(size_A / shell, 2.0 * pixel_size_A)), RESOLUTION_MEASURED


def resolution_from_fsc(curve: np.ndarray, box_px: int, pixel_size_A: float,
                        threshold: float = 0.143, max_shell: Optional[int] = None) -> float:
    """The value of :func:`fsc_resolution` (NaN when nothing was resolved)."""
    return fsc_resolution(curve, box_px, pixel_size_A, threshold, max_shell)[0]
