"""Particle images -> centred, Fourier-cropped, masked coefficient vectors (the hot loop of
preprocessing).

For every image of side ``B`` (centred at ``B // 2``, see :mod:`hetclass.fourier`):

1. the low frequencies ``|ky| < b/2, 0 <= kx <= b/2`` of its transform, phases about the
   centre -- either by an ``rfft2`` of the whole image cut down to the ``b`` box, or, when the
   cropped box is at most half the image (the usual case), by two small matrix products with
   the ``(b/2+1, B)`` and ``(b, B)`` DFT matrices of exactly those frequencies (no full
   transform: ~2 b/B of its arithmetic, in BLAS);
2. the Nyquist row ``ky = -b/2`` set to zero when ``b < B`` (it has no unique partner in the
   small box);
3. the phase shift that translates the image by ``+shifts_px`` (centres the particle), applied
   to the cropped coefficients only, as the outer product of one phase vector per axis;
4. the scale ``(b/B)**2`` that keeps real-space pixel values;
5. back to a ``b`` x ``b`` image, times the soft circular image window
   (:func:`hetclass.preprocess.image_window`), and forward again;
6. the ``M`` half-plane coefficients of ``coeffs`` kept.

This is the same arithmetic as shifting the full transform, cropping it and masking the
cropped image (``tests/test_preprocess_equivalence.py`` compares the two to float32 rounding):
the phase shift is an element-wise product, so applying it before or after the cut gives the
same numbers, and masking the origin-centred image with the origin-centred mask is masking the
centred image with the centred mask, rearranged. Every image is computed on its own, so the
result does not depend on how images are grouped into batches or threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.fft

from .fourier import CoefficientSet


@dataclass(frozen=True)
class CropOperator:
    """Everything :func:`crop_images` needs, built once per data set."""

    box_px: int                 # B, side of the input images
    crop_box_px: int            # b, side of the cropped images
    coeffs: CoefficientSet      # the kept half-plane coefficients of the b box
    mask_origin: np.ndarray     # (b, b) float32 particle mask, centre moved to index 0
    ky: np.ndarray              # (b,) float64 signed frequencies of the cropped rows
    kx: np.ndarray              # (b/2+1,) float64 frequencies of the cropped columns
    dft_x: Optional[np.ndarray]  # (B, 2(b/2+1)) float32 [cos | -sin], phases about B//2
    dft_y: Optional[np.ndarray]  # (b, B) complex64, phases about B//2

    @property
    def uses_dft(self) -> bool:
        return self.dft_x is not None


def crop_operator(box_px: int, crop_box_px: int, coeffs: CoefficientSet, mask: np.ndarray,
                  method: str = "auto") -> CropOperator:
    """The crop of ``box_px`` images to ``crop_box_px`` with the centred (b, b) ``mask``.

    ``method``: ``"dft"`` (small matrix products), ``"fft"`` (full rfft2, then cut) or
    ``"auto"``: dft when the cropped box is at most half the image.
    """
    big, b = int(box_px), int(crop_box_px)
    if b > big or (b % 2 and b != big):
        raise ValueError(f"cropped box {b} must be even and at most the image box {big}")
    if method not in ("auto", "dft", "fft"):
        raise ValueError(f"unknown crop method {method!r}")
    half = b // 2
    ky = np.fft.fftfreq(b, d=1.0 / b)
    kx = np.arange(half + 1, dtype=np.float64)
    dft_x = dft_y = None
    if method == "dft" or (method == "auto" and 2 * b <= big):
        pos = np.arange(big, dtype=np.float64) - big // 2
        ax = -2.0 * np.pi * np.outer(pos, kx) / big                   # (B, b/2+1)
        dft_x = np.concatenate([np.cos(ax), np.sin(ax)], axis=1).astype(np.float32)
        dft_y = np.exp(-2j * np.pi * np.outer(ky, pos) / big).astype(np.complex64)
    origin = np.fft.ifftshift(np.asarray(mask, dtype=np.float32), axes=(-2, -1))
    return CropOperator(big, b, coeffs, np.ascontiguousarray(origin), ky, kx, dft_x, dft_y)


def _low_frequencies(images: np.ndarray, op: CropOperator) -> np.ndarray:
    """(n, B, B) real -> (n, b, b/2+1) complex64 transform at the kept frequencies; phases
    about ``B // 2`` on the dft path, about index 0 on the fft path."""
    big, b = op.box_px, op.crop_box_px
    half = b // 2
    if op.dft_x is not None and op.dft_y is not None:          # op.uses_dft
        t = np.matmul(images, op.dft_x)                       # (n, B, 2(b/2+1)) float32
        tc = np.empty(t.shape[:2] + (half + 1,), dtype=np.complex64)
        tc.real = t[..., :half + 1]
        tc.imag = t[..., half + 1:]
        return np.matmul(op.dft_y, tc)                         # (n, b, b/2+1) complex64
    f = scipy.fft.rfft2(images, axes=(-2, -1), workers=1)
    if b == big:
        return f.astype(np.complex64, copy=False)
    small = np.empty(f.shape[:-2] + (b, half + 1), dtype=np.complex64)
    small[:, :half] = f[:, :half, :half + 1]
    small[:, half:] = f[:, big - half:, :half + 1]
    return small


def crop_images(images: np.ndarray, shifts_px: np.ndarray, op: CropOperator) -> np.ndarray:
    """(n, B, B) images (any real dtype) and their (n, 2) origins in pixels (x, y) -> (n, M)
    complex64 coefficients: centred, cropped, masked (see the module docstring).

    One thread: run several calls at once for more (BLAS and FFTs release the GIL).
    """
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[0]
    big, b = op.box_px, op.crop_box_px
    if images.shape[1:] != (big, big):
        raise ValueError(f"images are {images.shape[1:]}, expected ({big}, {big})")
    small = _low_frequencies(images, op)
    if b < big:
        small[:, b // 2, :] = 0
    # translate by +shift (and, on the fft path, move the phase origin to B // 2)
    sx = np.asarray(shifts_px[:, 0], dtype=np.float64)
    sy = np.asarray(shifts_px[:, 1], dtype=np.float64)
    if not op.uses_dft:
        sx, sy = sx - big // 2, sy - big // 2
    scale = (b / big) ** 2
    phase_y = (np.exp(-2j * np.pi * np.outer(sy, op.ky) / big) * scale).astype(np.complex64)
    phase_x = np.exp(-2j * np.pi * np.outer(sx, op.kx) / big).astype(np.complex64)
    small *= phase_y[:, :, None]
    small *= phase_x[:, None, :]
    img = scipy.fft.irfft2(small, s=(b, b), axes=(-2, -1), workers=1)
    img *= op.mask_origin
    g = scipy.fft.rfft2(img, axes=(-2, -1), workers=1)
    return np.ascontiguousarray(g.reshape(n, -1)[:, op.coeffs.flat_index], dtype=np.complex64)
