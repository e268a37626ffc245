"""One pass over the particles: E-step per batch and the M-step accumulators.

Every accumulator is a sum over particles (back-projected numerators/denominators per half
set, noise power per optics group and shell, class weights, log-likelihood), so batches,
threads or MPI ranks combine them by addition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

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


def class_log_likelihoods(data, ctf, slices, sigma2_coeff, onehot, like_shells: int):
    """Per-class log-likelihoods (n, K) and per-shell residual powers (n, K, S).

    data (n, M) complex64, ctf (n, M) float32, slices (n, M, K) complex64, sigma2_coeff (n, M)
    noise variance of each coefficient; only shells ``< like_shells`` enter the likelihood.
    """
    resid = slices * (-ctf[:, :, None])
    resid += data[:, :, None]
    power = resid.real ** 2                                         # (n, M, K)
    power += resid.imag ** 2
    per_shell = np.matmul(power.transpose(0, 2, 1), onehot)        # (n, K, S)
    # the noise variance is constant within a shell: divide the per-shell sums once
    counts = np.maximum(onehot[:, :like_shells].sum(0), 1.0)
    sigma2_shell = (sigma2_coeff @ onehot[:, :like_shells]) / counts  # (n, like_shells)
    loglik = -(per_shell[:, :, :like_shells] / sigma2_shell[:, None, :]).sum(-1)
    return loglik.astype(np.float64), per_shell


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
    grid: np.ndarray         # (V, 3K) float32 back-projection of this batch


def process_batch(rows, half, operator, grids_stacked, x, c, g, sigma2, log_prior,
                  onehot, shell, like_shells, hard, with_estep=True,
                  fixed_weights: Optional[np.ndarray] = None,
                  active: Optional[np.ndarray] = None, backproject_data: bool = True
                  ) -> BatchResult:
    """E-step for ``rows`` (all in half set ``half`` = 0/1) and their M-step contributions.

    ``x`` (n, M) complex64 data, ``c`` (n, M) float32 CTF and ``g`` (n,) optics groups of the
    batch's particles. ``fixed_weights`` (n, K) replaces the E-step (used for initial/explicit
    reconstructions); ``active`` (n,) bool excludes particles (e.g. a replicate's subsample)
    from every sum. ``backproject_data`` False skips the back-projection (an E-step only:
    ``grid`` is None).
    """
    n = rows.size
    m = shell.size
    k = log_prior.size
    n_groups, n_shells = sigma2.shape
    sig = sigma2[g][:, np.minimum(shell, n_shells - 1)].astype(np.float32)  # (n, M)
    acc = empty_accumulators(0, k, n_groups, n_shells)
    if with_estep:
        slices = project(operator, grids_stacked, n, m)
        loglik, per_shell = class_log_likelihoods(x, c, slices, sig, onehot, like_shells)
        weights, post, evidence = posteriors_from_loglik(loglik, log_prior, hard)
        if active is not None:
            weights = weights * active[:, None]
            evidence = evidence * active
        contrib = np.einsum("nk,nks->ns", weights, per_shell)
        for grp in np.unique(g):
            sel = (g == grp) if active is None else (g == grp) & active
            acc.noise[grp] += contrib[sel].sum(0)
            acc.noise_count[grp] += sel.sum() * onehot.sum(0)
        acc.log_likelihood = float(evidence.sum())
    else:
        weights = np.asarray(fixed_weights, dtype=np.float64)
        post = weights
        evidence = np.zeros(n)
    acc.class_weight = weights.sum(0)
    acc.grid = None  # type: ignore[assignment]   # the batch grid travels in BatchResult.grid
    reported = weights if (hard and with_estep) else post
    if not backproject_data:
        return BatchResult(rows, reported.astype(np.float32), evidence, acc, int(half), None)  # type: ignore[arg-type]
    w32 = weights.astype(np.float32)
    # one (n*M, 3K) block of values, back-projected in one sparse product (one pass over
    # the operator's indices instead of two): [re, im interleaved per class | den per class]
    values = np.empty((n, m, 3 * k), dtype=np.float32)
    np.multiply((c * x / sig)[:, :, None], w32[:, None, :],
                out=values[:, :, :2 * k].view(np.complex64))
    np.multiply((c * c / sig)[:, :, None], w32[:, None, :], out=values[:, :, 2 * k:])
    grid = backproject(operator, values.reshape(n * m, 3 * k))
    return BatchResult(rows, reported.astype(np.float32), evidence, acc, int(half), grid)

