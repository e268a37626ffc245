"""One pass over the particles: E-step per batch and the M-step accumulators.

Every accumulator is a sum over particles (back-projected numerators/denominators per half
set, noise power per optics group and shell, class weights, log-likelihood), so batches,
threads or MPI ranks combine them by addition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp

from .projector import backproject, project


@dataclass
class Accumulators:
    """Sums over particles for one EM pass."""

    grid: np.ndarray        # (2, V, 3K) float32 per half set: [re,im interleaved num | den] per class
    noise: np.ndarray       # (G, S) float64: sum of posterior-weighted residual power
    noise_count: np.ndarray  # (G, S) float64: number of coefficients behind ``noise``
    class_weight: np.ndarray  # (K,) float64
    log_likelihood: float

    def add(self, other: "Accumulators") -> None:
        if other.grid is not None:
            self.grid += other.grid
        self.noise += other.noise
        self.noise_count += other.noise_count
        self.class_weight += other.class_weight
        self.log_likelihood += other.log_likelihood


def empty_accumulators(n_voxels: int, k: int, n_groups: int, n_shells: int) -> Accumulators:
    return Accumulators(np.zeros((2, n_voxels, 3 * k), np.float32),
                        np.zeros((n_groups, n_shells)), np.zeros((n_groups, n_shells)),
                        np.zeros(k), 0.0)


def shell_onehot(shell: np.ndarray, n_shells: int) -> np.ndarray:
    """(M, S) float32 indicator of each coefficient's shell."""
    out = np.zeros((shell.size, n_shells), dtype=np.float32)
    out[np.arange(shell.size), np.minimum(shell, n_shells - 1)] = 1.0
    return out


# The likelihood starts at this shell: the DC coefficient (shell 0, one per image) never
# enters it. It is an image's integrated density, shifted by the per-image normalisation's
# error (the background mean, estimated from noisy pixels) and in real data by ice and
# carbon; at low SNR a class map with another DC explains that spread better than the real
# differences do. On two states at SNR 0.01 (bench_stability two_far --snr 0.01) every start
# split the particles by their mean density (ARI 0.00 against the truth, ideal observer
# 0.387); without the DC term the same fits found the states (ARI 0.19, as maps reconstructed
# from the true labels give). The DC is still reconstructed (the maps' mean density).
FIRST_LIKELIHOOD_SHELL = 1


def likelihood_shell_range(like_shells: int) -> slice:
    """The shells in the likelihood, ``FIRST_LIKELIHOOD_SHELL <= s < like_shells``, as a
    slice of a per-shell axis (the one place that says which shells count)."""
    return slice(FIRST_LIKELIHOOD_SHELL, int(like_shells))


def likelihood_shells(shell: np.ndarray, like_shells: int) -> np.ndarray:
    """(M,) bool: the coefficients of ``shell`` that enter the likelihood
    (:func:`likelihood_shell_range`)."""
    used = likelihood_shell_range(like_shells)
    return (shell >= used.start) & (shell < used.stop)


def class_log_likelihoods(data, ctf, slices, sigma2_coeff, onehot, like_shells: int):
    """Per-class log-likelihoods (n, K) and per-shell residual powers (n, K, S).

    data (n, M) complex64, ctf (n, M) float32, slices (n, M, K) complex64, sigma2_coeff (n, M)
    noise variance of each coefficient; only shells ``FIRST_LIKELIHOOD_SHELL <= s <
    like_shells`` enter the likelihood.
    """
    resid = slices * (-ctf[:, :, None])
    resid += data[:, :, None]
    power = resid.real ** 2                                         # (n, M, K)
    power += resid.imag ** 2
    per_shell = np.matmul(power.transpose(0, 2, 1), onehot)        # (n, K, S)
    # the noise variance is constant within a shell: divide the per-shell sums once
    used = likelihood_shell_range(like_shells)
    counts = np.maximum(onehot[:, used].sum(0), 1.0)
    sigma2_shell = (sigma2_coeff @ onehot[:, used]) / counts          # (n, shells used)
    loglik = -(per_shell[:, :, used] / sigma2_shell[:, None, :]).sum(-1)
    return loglik.astype(np.float64), per_shell


def inverse_noise_table(sigma2, shell):
    """(G, M) float32 ``1 / sigma2`` of every optics group and coefficient; ``sigma2`` (G, S)
    per shell, coefficients past its last shell use the last one."""
    return (1.0 / sigma2[:, np.minimum(shell, sigma2.shape[1] - 1)]).astype(np.float32)


def noise_weights(x, c, table, g):
    """The per-coefficient quantities of the E-step and the back-projection, float32:
    ``inv = 1 / sigma2`` (n, M), ``y = c x / sigma2`` (n, M) complex64 and
    ``q = c^2 / sigma2`` (n, M), from :func:`inverse_noise_table` and the optics groups
    ``g`` (n,)."""
    inv = table[g]
    ci = c * inv
    return inv, ci * x, ci * c


def expanded_log_likelihoods(x, y, q, inv, slices):
    """Per-class log-likelihoods (n, K) float64 and ``|slices|^2`` (n, M, K) float32.

    The log-likelihoods of :func:`class_log_likelihoods` (the GPU kernels' NumPy twin), to
    float32 rounding, written out as ``-sum inv |x|^2 + 2 Re(sum conj(y) s_k) - sum q |s_k|^2`` (``y``,
    ``q``, ``inv`` from :func:`noise_weights`, every coefficient in the likelihood): the
    class-dependent sums are two batched products over the coefficients instead of a
    residual array per class, and the class-independent term cancels from the posteriors.
    """
    cross = np.matmul(y.conj()[:, None, :], slices)[:, 0, :].real        # (n, K)
    abs2 = slices.real ** 2
    abs2 += slices.imag ** 2                                             # (n, M, K)
    quad = np.matmul(q[:, None, :], abs2)[:, 0, :]                       # (n, K)
    own = np.einsum("nm,nm->n", x.real ** 2 + x.imag ** 2, inv)
    loglik = (2.0 * cross.astype(np.float64) - quad) - own.astype(np.float64)[:, None]
    return loglik, abs2


def weighted_residual_power(x, c, slices, abs2, weights, onehot):
    """(n, S) float64 ``sum_k w_k |x - c s_k|^2`` per shell, from ``|x|^2``, the weighted
    mean slice and the weighted ``|s_k|^2`` (no residual array per class)."""
    w = weights.astype(np.float32)
    mean_slice = np.matmul(slices, w.astype(np.complex64)[:, :, None])[:, :, 0]   # (n, M)
    mean_abs2 = np.matmul(abs2, w[:, :, None])[:, :, 0]                           # (n, M)
    total = w.sum(1)[:, None]
    power = (x.real ** 2 + x.imag ** 2) * total
    power -= 2.0 * c * (x.real * mean_slice.real + x.imag * mean_slice.imag)
    power += c * c * mean_abs2
    # one product per particle: its sums do not depend on the other rows of the batch
    return np.matmul(power[:, None, :], onehot)[:, 0, :].astype(np.float64)


def posteriors_from_loglik(loglik: np.ndarray, log_prior: np.ndarray, hard: bool):
    """Stable posteriors (log-sum-exp) and each particle's log evidence."""
    z = loglik + log_prior[None, :]
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    total = e.sum(axis=1, keepdims=True)
    post = e / total
    evidence = (zmax + np.log(total))[:, 0]
    if hard:
        hard_post = np.zeros_like(post)
        hard_post[np.arange(post.shape[0]), post.argmax(1)] = 1.0
        return hard_post, post, evidence
    return post, post, evidence


@dataclass
class BatchResult:
    rows: np.ndarray
    posteriors: np.ndarray   # (n, K) float32, the soft posteriors (reported)
    loglik: np.ndarray       # (n,) log evidence contribution of each particle
    acc: Accumulators        # ``acc.grid`` is None: the back-projection is in ``grid``
    half: int
    grid: np.ndarray         # (V, 3K) float32 back-projection of this batch ((V * K, 3) by class)


BLOCK = 128   # particles whose E-step work arrays are made together (they stay in cache)


def process_batch(rows, half, operator, grids_stacked, x, c, g, sigma2, log_prior,
                  onehot, shell, like_shells, hard, with_estep=True,
                  fixed_weights: Optional[np.ndarray] = None,
                  active: Optional[np.ndarray] = None, backproject_data: bool = True,
                  by_class: bool = False) -> BatchResult:
    """E-step for ``rows`` (all in half set ``half`` = 0/1) and their M-step contributions.

    ``x`` (n, M) complex64 data, ``c`` (n, M) float32 CTF and ``g`` (n,) optics groups of the
    batch's particles. ``fixed_weights`` (n, K) replaces the E-step (used for initial/explicit
    reconstructions); ``active`` (n,) bool excludes particles (e.g. a replicate's subsample)
    from every sum. ``backproject_data`` False skips the back-projection (an E-step only:
    ``grid`` is None). ``by_class`` (the weights are one-hot: a hard E-step or one-hot
    ``fixed_weights``; :func:`use_by_class`): ``grid`` is (V * K, 3) from
    :func:`backproject_by_class` instead of (V, 3K), the same numbers.

    The slices are projected and back-projected for the whole batch (one sparse product
    each); everything between is computed :data:`BLOCK` particles at a time. Every number
    of a particle depends on that particle alone, so the block size never changes a result.
    """
    n, m, k = rows.size, shell.size, log_prior.size
    n_groups, n_shells = sigma2.shape
    acc = empty_accumulators(0, k, n_groups, n_shells)
    slices = project(operator, grids_stacked, n, m) if with_estep else None
    # the coefficients outside the likelihood's shells (the DC; those past like_shells when
    # the caller did not cut the data there) are masked out of the E-step
    in_like = likelihood_shells(shell, like_shells)
    keep = None if in_like.all() else in_like.astype(np.float32)
    weights, post = np.empty((n, k)), np.empty((n, k))
    evidence, contrib = np.zeros(n), np.zeros((n, n_shells))
    values = None
    if backproject_data:
        values = np.empty((n, m, 3 if by_class else 3 * k), dtype=np.float32)
    table = inverse_noise_table(sigma2, shell)
    for lo in range(0, n, BLOCK):
        b = slice(lo, min(lo + BLOCK, n))
        inv, y, q = noise_weights(x[b], c[b], table, g[b])
        if with_estep:
            assert slices is not None
            weights[b], post[b], evidence[b], contrib[b] = _estep_block(
                x[b], c[b], y, q, inv, slices[b], keep, log_prior, hard, onehot,
                None if active is None else active[b])
        else:
            assert fixed_weights is not None
            weights[b] = post[b] = fixed_weights[b]
        if by_class and values is not None:
            own_class_values(y, q, values[b])
        elif values is not None:
            backprojection_values(y, q, weights[b], values[b])
    if with_estep:
        for grp in np.unique(g):
            sel = (g == grp) if active is None else (g == grp) & active
            acc.noise[grp] += contrib[sel].sum(0)
            acc.noise_count[grp] += sel.sum() * onehot.sum(0)
        acc.log_likelihood = float(evidence.sum())
    acc.class_weight = weights.sum(0)
    acc.grid = None  # type: ignore[assignment]   # the batch grid travels in BatchResult.grid
    reported = (weights if (hard and with_estep) else post).astype(np.float32)
    if values is None:
        return BatchResult(rows, reported, evidence, acc, int(half), None)  # type: ignore[arg-type]
    if by_class:
        grid = backproject_by_class(operator, values, weights)
    else:
        grid = backproject(operator, values.reshape(n * m, 3 * k))
    return BatchResult(rows, reported, evidence, acc, int(half), grid)


# one-hot back-projection pays off from this many classes (on 2 classes the index arithmetic
# costs more than the 6 -> 3 columns save: measured on M = 307 and 1061)
BY_CLASS_MIN_CLASSES = 3


def use_by_class(k: int, n_voxels: int, hard: bool, fixed_weights) -> bool:
    """Whether a pass back-projects class by class (:func:`backproject_by_class`): one-hot
    weights (a hard E-step, or one-hot ``fixed_weights``), at least
    :data:`BY_CLASS_MIN_CLASSES` classes, and ``n_voxels * k`` within int32 indices."""
    if k < BY_CLASS_MIN_CLASSES or n_voxels * k >= 2 ** 31:
        return False
    return (hard and fixed_weights is None) or is_one_hot(fixed_weights)


def is_one_hot(weights: Optional[np.ndarray]) -> bool:
    """Whether every row of ``weights`` (n, K) is zero or has a single 1 (the rest 0)."""
    if weights is None:
        return False
    ones = weights == 1.0
    return bool(np.all(ones | (weights == 0.0)) and np.all(ones.sum(1) <= 1))


def own_class_values(y, q, out):
    """Fill ``out`` (n, M, 3) float32 with ``[re(y), im(y), q]`` of every coefficient: what a
    particle back-projects into its own class under a one-hot weight (``y``, ``q`` from
    :func:`noise_weights`)."""
    n, m = q.shape
    parts = y.view(np.float32).reshape(n, m, 2)
    out[:, :, :2] = parts
    out[:, :, 2] = q


def backproject_by_class(operator, values, weights) -> np.ndarray:
    """(V * K, 3) float32 back-projection of one-hot ``weights`` (n, K): row ``v * K + j``
    holds ``[re, im, den]`` of class j at voxel v (:func:`class_major_to_grid` turns it into
    the ``(V, 3K)`` layout), from ``values`` (n, M, 3) of :func:`own_class_values`.

    One sparse product of 3 columns instead of 3K: each particle's operator entries point
    at its own class's voxels (the operator's indices times K plus the class). The same
    numbers as :func:`backproject` of :func:`backprojection_values`: every voxel's sum has
    the same nonzero terms in the same order (the ones left out were exact zeros). Particles
    with an all-zero row (inactive) add exact zeros (their rows of ``values`` are zeroed in
    place).
    """
    n, k = weights.shape
    m = values.shape[1]
    ok = weights.sum(1) > 0
    cls = np.where(ok, weights.argmax(1), 0).astype(operator.indices.dtype)
    if not ok.all():
        values[~ok] = 0.0
    indices = operator.indices.reshape(n, 8 * m) * operator.indices.dtype.type(k)
    indices += cls[:, None]
    shifted = sp.csr_matrix((operator.data, indices.reshape(-1), operator.indptr),
                            shape=(operator.shape[0], operator.shape[1] * k))
    return backproject(shifted, values.reshape(n * m, 3))


def class_major_to_grid(grid: np.ndarray, k: int, out: Optional[np.ndarray] = None
                        ) -> np.ndarray:
    """(V * K, 3) from :func:`backproject_by_class` -> (V, 3K) in the accumulators' layout
    ``[re_0, im_0, ..., re_{K-1}, im_{K-1} | den_0, ..., den_{K-1}]`` (into ``out``)."""
    order = np.concatenate([np.stack([3 * np.arange(k), 3 * np.arange(k) + 1], 1).ravel(),
                            3 * np.arange(k) + 2])
    return np.take(grid.reshape(grid.shape[0] // k, 3 * k), order, axis=1, out=out)


def _estep_block(x, c, y, q, inv, slices, keep, log_prior, hard, onehot, active):
    """One block's E-step: ``(weights, posteriors, evidence, residual power per shell)``;
    ``keep`` (M,) 0/1 masks the coefficients outside the likelihood's shells
    (:func:`likelihood_shells`: the DC, and those past ``like_shells``; None: all in)."""
    if keep is None:
        loglik, abs2 = expanded_log_likelihoods(x, y, q, inv, slices)
    else:
        loglik, abs2 = expanded_log_likelihoods(x, y * keep, q * keep, inv * keep, slices)
    weights, post, evidence = posteriors_from_loglik(loglik, log_prior, hard)
    if active is not None:
        weights = weights * active[:, None]
        evidence = evidence * active
    return weights, post, evidence, weighted_residual_power(x, c, slices, abs2, weights, onehot)


def backprojection_values(y, q, weights, out):
    """Fill ``out`` (n, M, 3K) float32 with the values back-projected in one sparse product
    (one pass over the operator's indices instead of two): per coefficient ``[re(w_k y),
    im(w_k y) for each class k | w_k q for each class k]`` (``y = c x / sigma2``,
    ``q = c^2 / sigma2``), column by column (each write runs along the coefficients)."""
    n, m = q.shape
    k = weights.shape[1]
    w = weights.astype(np.float32)
    parts = y.view(np.float32).reshape(n, m, 2)
    for j in range(k):
        wj = w[:, j:j + 1]
        np.multiply(parts[:, :, 0], wj, out=out[:, :, 2 * j])
        np.multiply(parts[:, :, 1], wj, out=out[:, :, 2 * j + 1])
        np.multiply(q, wj, out=out[:, :, 2 * k + j])
