"""Fourier shell correlation and resolution from it."""

from __future__ import annotations

import numpy as np

from .fourier import fftn, radial_index_3d
from .gpu.xp import array_module


def fsc(map1, map2):
    """FSC between two centred cubic maps of side b; returns (b//2 + 1,) float64 (shell 0 = DC).

    NumPy or CuPy maps; the curve is in the maps' array module.
    """
    xp = array_module(map1, map2)
    b = map1.shape[0]
    f1 = xp.fft.fftshift(fftn(xp.fft.ifftshift(map1)))
    f2 = xp.fft.fftshift(fftn(xp.fft.ifftshift(map2)))
    shells = xp.asarray(radial_index_3d(b).ravel())
    n = b // 2 + 1
    ok = shells < n
    s = shells[ok]
    cross = xp.bincount(s, weights=(f1 * f2.conj()).real.ravel()[ok], minlength=n)
    p1 = xp.bincount(s, weights=(xp.abs(f1) ** 2).ravel()[ok], minlength=n)
    p2 = xp.bincount(s, weights=(xp.abs(f2) ** 2).ravel()[ok], minlength=n)
    return cross / xp.sqrt(xp.maximum(p1 * p2, 1e-30))


def resolution_from_fsc(curve: np.ndarray, box_px: int, pixel_size_A: float,
                        threshold: float = 0.143, max_shell: int = None) -> float:
    """Resolution (A) where the FSC first drops below ``threshold`` (linear interpolation).

    ``max_shell`` caps the answer at the highest shell actually used (e.g. the target
    resolution radius); a curve never crossing gives the resolution of that shell.
    """
    curve = np.asarray(curve, dtype=np.float64)
    last = len(curve) - 1 if max_shell is None else min(int(max_shell), len(curve) - 1)
    below = np.flatnonzero(curve[1:last + 1] < threshold)
    if below.size == 0:
        shell = float(last)
    else:
        i = int(below[0]) + 1
        a, c = curve[i - 1], curve[i]
        shell = (i - 1) + (a - threshold) / (a - c) if a != c else float(i)
        shell = max(shell, 1e-3)
    return float(box_px * pixel_size_A / max(shell, 1e-3))
