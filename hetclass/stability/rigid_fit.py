"""Class maps that differ only by a rigid motion: the map statistic's nuisance.

Fixed poses are never exact (a refinement's errors are a few degrees and an Angstrom or so),
and EM can split the particles of *one* state by the direction of their pose errors: the
particles whose STAR poses are off one way make one class, those off the other way another,
and the two class maps are the same structure turned by a few degrees about the box centre.
Such a split is reproducible, its maps differ beyond what a null simulated from the
consensus map gives (even with pose errors of the measured size,
:mod:`.pose_spread`: the consensus of several states is blurrier and its noise estimate
holds their differences, so the null's pose splits are weaker than a sharp state's) and the
particles form a spread between the classes (the errors are a continuous distribution), so
it passed for a continuous conformational change.
Measured (``benchmarks/bench_stability.py``, STAR poses off by 3 deg / 1 A, median):
``three_pose`` (three states, 4000 particles) came out "mixed, K = 4", the 40 % state cut in
two classes whose maps are related by a 3.2 deg rotation; ``homogeneous_pose`` (one state)
had a K = 2 split of replicate ARI 0.49-0.87 with ``log T`` 0.72 against null values
0.36-0.47 (p = 0.011), and 0.04 once one map is turned onto the other.

:func:`aligned_ratio` measures the difference *left* after the best rigid motion of one map
onto the other: ``b`` is fitted by ``alpha M_p(a) + c`` inside the mask, ``M_p`` the map
rotated about the box centre (index ``b // 2``, :mod:`hetclass.fourier`) by the rotation vector
``p[:3]`` (degrees) and shifted by ``p[3:]`` (pixels), ``p`` found by Gauss-Newton from zero
(:data:`GN_ITERATIONS` steps, the motion bounded by :data:`MAX_ROTATION_DEG` and
:data:`MAX_SHIFT_PX`); ``T`` is the residual's squared norm over its noise (the half-map noise
of ``b`` plus ``alpha^2`` that of the *moved* ``a``: its half-map difference moved alike), the
smaller of both directions and of no motion at all. The Gauss-Newton steps interpolate
trilinearly; the fitted motion is applied with cubic splines (:data:`FINAL_ORDER`). Trilinear
motion with the unmoved noise biased ``T`` by the motion's size (two noisy maps of one
structure turned 3 deg apart: ``log T`` +0.6 from the blur it leaves at low noise, -0.25 from
the noise it smooths at high noise; now within 0.05 of 0; on ``four_pose``'s null splits,
turned 2.4-3.3 deg, the two biases nearly cancelled: -0.02 to +0.08). With no motion this is
the normalised distance of :func:`hetclass.stability.verdict.map_distances` to second order in
the maps' correlation. The null data go through the same fit, so the test stays calibrated. A
change of structure keeps most of its difference (trilinear version, 2026-12-06: ``two_near`` K
= 2, a subunit missing: ``log T`` 1.24 -> 1.22, its null 0.42-0.48 -> 0.36-0.44); a domain
motion keeps the part no global motion explains (``four`` K = 2, domains 12 deg apart: 1.74 ->
0.97, null 0.62 -> 0.58): that is the price of not calling pose errors heterogeneity. Hence the
statistic is used only where the STAR poses have measurable errors
(:class:`hetclass.stability.distinguish.NullModel` ``aligned``, set by
:func:`hetclass.stability.null.run_null`); on data without pose errors the plain statistic
keeps its power (the 30 deg hinge of the CI tests: plain p 0.002, aligned 0.014).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry import rotvec_to_matrix

GN_ITERATIONS = 4          # Gauss-Newton steps of the rigid fit
MAX_ROTATION_DEG = 10.0    # bound on the fitted rotation (pose errors are a few degrees)
MAX_SHIFT_PX = 2.0         # bound on the fitted shift, per axis (map pixels)
FINAL_ORDER = 3            # interpolation of the fitted motion's map and noise (cubic spline)


def moved(vol: np.ndarray, p: np.ndarray, order: int = 1) -> np.ndarray:
    """``vol`` (b, b, b) turned by the rotation vector ``p[:3]`` (degrees, array-index axes)
    about index ``b // 2`` and shifted by ``p[3:]`` pixels: ``out(x) = vol(R (x - c) + c +
    t)`` (spline interpolation of ``order``: 1 trilinear, 3 cubic; zero outside)."""
    from scipy import ndimage
    c = np.full(3, vol.shape[0] // 2, dtype=np.float64)
    m = rotvec_to_matrix(np.deg2rad(p[:3]))[0]
    return ndimage.affine_transform(vol, m, offset=c - m @ c + p[3:], order=order,
                                    mode="constant")


def _motion_fields(x: np.ndarray, sel: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(6, n) derivatives of :func:`moved` ``(x, p)`` at ``p = 0`` on the mask: rotation
    about each axis (per radian), shift along each axis (per pixel), times the mask weights."""
    b = x.shape[0]
    grads = np.gradient(x)
    idx = np.indices(x.shape).astype(np.float64) - b // 2
    g = np.stack([gr[sel] for gr in grads])            # (3, n)
    r = np.stack([ix[sel] for ix in idx])               # (3, n)
    rot = np.cross(np.eye(3)[:, :, None], r[None, :, :], axis=1)   # (3 axes, 3, n): e_i x r
    out = np.concatenate([np.einsum("ajn,jn->an", rot, g), g])
    return out * w[None, :]


def _residual_ratio(x: np.ndarray, y: np.ndarray, noise_y: float, noise_x: float) -> float:
    """Residual of ``y`` against ``alpha x + c`` over its noise (``x``, ``y`` centred)."""
    xx = float(x @ x)
    if xx <= 0:
        return float("nan")
    alpha = float(x @ y) / xx
    denom = noise_y + alpha * alpha * noise_x
    if denom <= 0:
        return float("nan")
    return max(float(y @ y) - alpha * float(x @ y), 0.0) / denom


def _noise(diff: np.ndarray, sel: np.ndarray, w: np.ndarray) -> float:
    """Noise power of a map inside the mask from ``diff``, half of its half-maps' difference."""
    return float(np.sum((diff[sel] * w) ** 2))


def rigid_ratio(src: np.ndarray, dst: np.ndarray, sel: np.ndarray, w: np.ndarray,
                noise_dst: float, src_diff: np.ndarray):
    """``(T, p)``: the residual ratio of ``dst`` against ``src`` after the best rigid motion
    ``p`` of ``src`` (the smaller of that and no motion; module docstring). ``src_diff`` is
    half the difference of ``src``'s half maps: moved like ``src``, it gives the noise the
    moved map holds (interpolation smooths noise, so the unmoved noise would overstate it)."""
    y = dst[sel] * w
    y = y - y.mean()
    x0 = src[sel] * w
    best = (_residual_ratio(x0 - x0.mean(), y, noise_dst, _noise(src_diff, sel, w)),
            np.zeros(6))
    p = np.zeros(6)
    for _ in range(GN_ITERATIONS):
        vol = moved(src, p) if np.any(p) else src
        x = vol[sel] * w
        design = np.concatenate([x[None], _motion_fields(vol, sel, w), np.ones((1, x.size))])
        coef, *_ = np.linalg.lstsq(design.T, dst[sel] * w, rcond=None)
        if abs(coef[0]) < 1e-12:
            break
        step = coef[1:7] / coef[0]
        step[:3] = np.rad2deg(step[:3])
        p = p + step
        p[:3] = np.clip(p[:3], -MAX_ROTATION_DEG, MAX_ROTATION_DEG)
        p[3:] = np.clip(p[3:], -MAX_SHIFT_PX, MAX_SHIFT_PX)
    x = moved(src, p, FINAL_ORDER)[sel] * w
    t = _residual_ratio(x - x.mean(), y, noise_dst,
                        _noise(moved(src_diff, p, FINAL_ORDER), sel, w))
    if np.isfinite(t) and not t >= best[0]:
        best = (t, p)
    return best


def aligned_ratio(maps: np.ndarray, half_maps: np.ndarray,
                  mask: Optional[np.ndarray] = None) -> np.ndarray:
    """(K, K) ``T`` of every class pair after the best rigid motion (module docstring; NaN
    on the diagonal). ``maps`` (K, b, b, b), ``half_maps`` (2, K, b, b, b), ``mask`` (b, b, b)
    weights (default a sphere of radius 0.45 b)."""
    from .verdict import _sphere_mask
    maps = np.asarray(maps, dtype=np.float64)
    halves = np.asarray(half_maps, dtype=np.float64)
    k, b = maps.shape[0], maps.shape[-1]
    w = _sphere_mask(b).astype(np.float64) if mask is None else np.asarray(mask, np.float64)
    sel = w > 0
    ws = w[sel]
    diffs = [(halves[0, i] - halves[1, i]) / 2.0 for i in range(k)]
    noise = [_noise(d, sel, ws) for d in diffs]
    out = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(i + 1, k):
            t = np.nanmin([rigid_ratio(maps[i], maps[j], sel, ws, noise[j], diffs[i])[0],
                           rigid_ratio(maps[j], maps[i], sel, ws, noise[i], diffs[j])[0]])
            out[i, j] = out[j, i] = t
    return out
