"""Fourier slice extraction and insertion as one sparse trilinear operator.

With poses fixed, the map from a class volume's padded Fourier grid to a particle's ``M``
data coefficients never changes: it is a sparse matrix ``P`` (rows: particle x coefficient,
columns: grid voxels, 8 trilinear weights per row). Projection is ``P @ V`` and
back-projection is ``P.T @ W``; both run in compiled code (scipy.sparse) for all classes
at once (the classes are the dense matrix's columns).

Geometry: coefficient ``(kx, ky)`` of particle ``i`` samples the volume transform at
``A_i.T @ (kx, ky, 0)`` (see :mod:`hetclass.particles`), scaled by the padding factor, on a
centred grid of side ``N = pad * b`` indexed ``[z, y, x]`` (see :mod:`hetclass.fourier`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .fourier import CoefficientSet
from .gpu.xp import Array, array_module


def grid_side(box_px: int, pad: int) -> int:
    return int(pad) * int(box_px)


def slice_operator(rotations: np.ndarray, coeffs: CoefficientSet, pad: int) -> sp.csr_matrix:
    """Sparse (n * M, N**3) float32 trilinear operator for particles with matrices ``rotations``.

    Rows are ordered particle-major (row ``i * M + m``). Requires ``coeffs.r_max_px <
    box/2`` so that every neighbour lies inside the grid.
    """
    n = rotations.shape[0]
    m = coeffs.size
    side = grid_side(coeffs.box_px, pad)
    if coeffs.r_max_px * pad + 1 >= side // 2 + side // 2:
        raise ValueError("coefficient radius too large for the padded grid")
    k2 = np.stack([coeffs.kx, coeffs.ky], axis=0).astype(np.float64) * pad  # (2, M)
    # q = A.T @ (kx, ky, 0): uses the first two rows of A.
    rt = np.ascontiguousarray(rotations[:, :2, :].transpose(0, 2, 1))  # (n, 3, 2)
    q = (rt @ k2 + side // 2).astype(np.float32)  # (n, 3, M) grid coordinates (x, y, z)
    base = np.floor(q)
    frac = q - base                                # (n, 3, M) in [0, 1)
    base = base.astype(np.int32)
    s2 = side * side
    # corner c = 4 dz + 2 dy + dx sits at the lower corner's voxel plus a fixed offset, with
    # weight w_z[dz] * w_y[dy] * w_x[dx] (w[0] = 1 - f, w[1] = f)
    lower = (base[:, 2] * s2 + base[:, 1] * side + base[:, 0]).reshape(-1)  # (n M,) int32
    offsets = [dz * s2 + dy * side + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
    w = np.empty((3, 2, n, m), dtype=np.float32)                           # axis, d, n, M
    np.subtract(np.float32(1.0), frac.transpose(1, 0, 2), out=w[:, 0])
    w[:, 1] = frac.transpose(1, 0, 2)
    wzy = np.empty((2, 2, n, m), dtype=np.float32)
    for dz in (0, 1):
        for dy in (0, 1):
            np.multiply(w[2, dz], w[1, dy], out=wzy[dz, dy])
    # corner-major (8, n M) arrays are filled with contiguous writes, then transposed once
    # into the row-major (n M, 8) layout of the CSR entries: 2x faster than writing every
    # eighth element, the same numbers
    by_corner = np.empty((8, n * m), dtype=np.float32)
    corner_index = np.empty((8, n * m), dtype=np.int32)
    for corner in range(8):
        dz, dy, dx = corner >> 2, (corner >> 1) & 1, corner & 1
        np.multiply(wzy[dz, dy], w[0, dx], out=by_corner[corner].reshape(n, m))
        np.add(lower, np.int32(offsets[corner]), out=corner_index[corner])
    return _eight_per_row(np.ascontiguousarray(by_corner.T),             # (n M, 8)
                          np.ascontiguousarray(corner_index.T), side ** 3)


VIEW_BAND_DEG = 6.0   # width of the bands of viewing directions in :func:`view_order`


def view_order(rotations: np.ndarray) -> np.ndarray:
    """(n,) order of particles that puts similar slice planes next to each other.

    A particle's slice is the plane through the origin normal to ``A.T @ (0, 0, 1)`` (the
    third row of its matrix; the plane of ``-n`` is the same). Normals folded onto the
    upper hemisphere are sorted by bands of :data:`VIEW_BAND_DEG` in tilt, then by azimuth,
    alternately rising and falling (a boustrophedon path). Consecutive slices then touch
    mostly the same voxels, so projection and back-projection find them in cache (on a
    72 px case: projection 1.7x, back-projection 1.2x faster than in random order). The
    order is a function of the rotations alone: a stable sort, ties in input order.
    """
    normal = np.asarray(rotations, dtype=np.float64)[:, 2, :]
    normal = np.where(normal[:, 2:3] < 0, -normal, normal)
    tilt_deg = np.degrees(np.arccos(np.clip(normal[:, 2], -1.0, 1.0)))
    azimuth_deg = np.degrees(np.arctan2(normal[:, 1], normal[:, 0]))
    band = np.floor(tilt_deg / VIEW_BAND_DEG).astype(np.int64)
    along = np.where(band % 2 == 0, azimuth_deg, -azimuth_deg)
    return np.lexsort((along, band))


def _eight_per_row(data: np.ndarray, indices: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """The CSR operator whose rows hold 8 consecutive entries each of ``data`` and
    ``indices`` (any shape; read in C order)."""
    rows = data.size // 8
    return sp.csr_matrix((data.reshape(-1), indices.reshape(-1), _indptr(rows)),
                         shape=(rows, n_cols))


def _indptr(rows: int) -> np.ndarray:
    """Row pointers of a CSR operator with 8 entries per row (int64 past 2**31 entries)."""
    return np.arange(0, 8 * rows + 1, 8, dtype=np.int64 if 8 * rows >= 2 ** 31 else np.int32)


def particle_rows(operator: sp.csr_matrix, keep: np.ndarray, m: int) -> sp.csr_matrix:
    """The operator of the particles ``keep`` (sorted indices into its particles) only.

    ``operator`` is a :func:`slice_operator` of ``M = m`` coefficients per particle (8
    entries per row, particle-major), so its rows are cut out without a general sparse
    indexing: the same numbers, in the same order.
    """
    return _cut(operator, m, keep, m)


def coefficient_prefix(operator: sp.csr_matrix, m: int, m_use: int) -> sp.csr_matrix:
    """The operator of each particle's first ``m_use`` coefficients only.

    ``operator`` is a :func:`slice_operator` of ``M = m`` coefficients per particle; the
    result has the same numbers as ``slice_operator`` of ``coeffs.prefix(m_use)`` (every row
    is computed from its own coefficient alone), cut out instead of recomputed.
    """
    return _cut(operator, m, slice(None), m_use)


def stack_rows(operators) -> sp.csr_matrix:
    """Operators of :func:`slice_operator` form (8 entries per row; whole, cut or prefixes
    of the same ``M``) one above the other: the operator of all their particles, in order."""
    return _eight_per_row(np.concatenate([op.data for op in operators]),
                          np.concatenate([op.indices for op in operators]),
                          operators[0].shape[1])


def _cut(operator: sp.csr_matrix, m: int, particles, m_use: int) -> sp.csr_matrix:
    """The rows of ``particles`` (an index array or slice) and of their first ``m_use``
    coefficients, from a :func:`slice_operator` of ``m`` coefficients per particle (8
    entries per row, particle-major): the same numbers in the same order."""
    n = operator.shape[0] // m
    data = operator.data.reshape(n, 8 * m)[particles, :8 * m_use]
    indices = operator.indices.reshape(n, 8 * m)[particles, :8 * m_use]
    return _eight_per_row(data, indices, operator.shape[1])


def project(operator: sp.csr_matrix, grids_stacked: np.ndarray, n: int, m: int) -> np.ndarray:
    """Slices of K volumes: ``grids_stacked`` is (N**3, K) complex64 -> (n, M, K) complex64."""
    k = grids_stacked.shape[1]
    real = grids_stacked.view(np.float32)  # (N**3, 2K), re/im interleaved per class
    out = operator @ real
    return np.ascontiguousarray(out, dtype=np.float32).view(np.complex64).reshape(n, m, k)


def backproject(operator: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """Adjoint: ``values`` (n * M, C) float32 -> (N**3, C) float32 summed onto the grid."""
    return operator.T @ values


def stack_grids(grids: Array) -> Array:
    """(K, N, N, N) complex -> (N**3, K) complex64 contiguous (classes as columns).

    NumPy or CuPy: the result lives where ``grids`` lives.
    """
    xp = array_module(grids)
    k = grids.shape[0]
    return xp.ascontiguousarray(grids.reshape(k, -1).T, dtype=np.complex64)


def hermitian_flip(grid: Array) -> Array:
    """``out[p] = grid[-p]`` for a centred even grid (last three axes); index 0 wraps to 0.

    NumPy or CuPy (the module of ``grid``).
    """
    xp = array_module(grid)
    flipped = grid[..., ::-1, ::-1, ::-1]
    return xp.roll(flipped, 1, axis=(-3, -2, -1))
