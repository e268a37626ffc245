"""Rotation conventions: RELION Euler angles <-> rotation matrices.

``euler_to_matrix(rot, tilt, psi)`` returns RELION's matrix A (ZYZ, angles in degrees):
``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with the passive-rotation sign convention RELION uses,
so that ``A[0,0] = cos psi cos tilt cos rot - sin psi sin rot`` and ``A[2,2] = cos tilt``.
A maps volume coordinates to image coordinates; the projection's Fourier transform is the
central slice at ``A.T @ (kx, ky, 0)`` (see :mod:`hetclass.particles`).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from numpy.typing import ArrayLike


def euler_to_matrix(rot_deg: ArrayLike, tilt_deg: ArrayLike, psi_deg: ArrayLike) -> np.ndarray:
    """RELION Euler angles (degrees, arrays of shape (n,) or scalars) -> (n, 3, 3) float64."""
    a = np.deg2rad(np.atleast_1d(np.asarray(rot_deg, dtype=np.float64)))
    b = np.deg2rad(np.atleast_1d(np.asarray(tilt_deg, dtype=np.float64)))
    g = np.deg2rad(np.atleast_1d(np.asarray(psi_deg, dtype=np.float64)))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(matrices: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 3, 3) RELION A matrices -> (rot, tilt, psi) in degrees, each (n,).

    Inverse of :func:`euler_to_matrix`; at tilt = 0 or 180 the split between rot and psi is
    arbitrary and rot is set so that psi carries the whole in-plane angle, like RELION.
    """
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    abs_sb = np.sqrt(m[:, 0, 2] ** 2 + m[:, 1, 2] ** 2)
    tilt = np.arctan2(abs_sb, m[:, 2, 2])
    regular = abs_sb > 16 * np.finfo(np.float64).eps
    rot = np.where(regular, np.arctan2(m[:, 2, 1], m[:, 2, 0]), 0.0)
    psi = np.where(regular, np.arctan2(m[:, 1, 2], -m[:, 0, 2]),
                   np.where(m[:, 2, 2] > 0, np.arctan2(-m[:, 1, 0], m[:, 0, 0]),
                            np.arctan2(m[:, 1, 0], -m[:, 0, 0])))
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def rotvec_to_matrix(rotvecs: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (n, 3) in radians -> rotation matrices (n, 3, 3) (Rodrigues).

    ``R @ v`` rotates v by |r| radians about r/|r| (active, right-handed).
    """
    r = np.asarray(rotvecs, dtype=np.float64).reshape(-1, 3)
    theta = np.linalg.norm(r, axis=1)
    small = theta < 1e-12
    k = r / np.where(small, 1.0, theta)[:, None]
    kx, ky, kz = k[:, 0], k[:, 1], k[:, 2]
    zero = np.zeros_like(kx)
    kmat = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1),
                     np.stack([-ky, kx, zero], -1)], -2)
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    eye = np.broadcast_to(np.eye(3), kmat.shape)
    return eye + s * kmat + (1 - c) * (kmat @ kmat)


def matrix_to_rotvec(matrices: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) -> axis-angle vectors (n, 3), inverse of rotvec_to_matrix."""
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    cos_t = np.clip((np.trace(m, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos_t)
    axis = np.stack([m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1)
    sin_t = np.sin(theta)
    out = np.zeros((m.shape[0], 3))
    regular = sin_t > 1e-6
    out[regular] = axis[regular] / (2 * sin_t[regular, None]) * theta[regular, None]
    # near pi: axis from the symmetric part
    near_pi = (~regular) & (theta > 1.0)
    for i in np.flatnonzero(near_pi):  # rare; a handful of rows at most
        b = (m[i] + np.eye(3)) / 2
        j = int(np.argmax(np.diag(b)))
        v = b[:, j] / np.sqrt(max(b[j, j], 1e-300))
        if np.dot(axis[i], v) < 0:
            v = -v
        out[i] = v * theta[i]
    return out
