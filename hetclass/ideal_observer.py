"""The ideal observer: the physical limit of classification on simulated data.

For particle ``i`` with image ``X_i`` and every true state ``s`` it computes the exact
log-likelihood of the simulator's generative model,

    log p(X_i | s) = -|| raw_i - clean_{s,i} ||^2 / (2 noise_sigma^2),
    raw_i = X_i / norm_scale_i + norm_offset_i,

where ``clean_{s,i}`` is state ``s`` projected analytically (:mod:`hetclass.simulate`, the
projector that made the images) at the particle's pose and shift *as written in the STAR
file*, with its CTF; ``norm_offset``/``norm_scale`` undo the per-image normalisation
(``SimulatedDataset.norm_offset`` / ``norm_scale``, also in ``truth.csv``). Adding
``log(population_s)`` and taking the arg-max gives the Bayes-optimal labels: no classifier can
do better on average with these images and these poses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .particles import ParticleSet
from .simulate import simulate_images

Gaussians = tuple


def ideal_log_likelihoods(particles: ParticleSet, images: np.ndarray,
                          states: Sequence[Gaussians], noise_sigma: float,
                          norm_offset: np.ndarray, norm_scale: np.ndarray,
                          threads: int = 1) -> np.ndarray:
    """(n, S) float64 log p(X_i | s) up to a per-particle constant.

    ``images`` (n, B, B) float32 as stored; ``states`` the Gaussians of each true state
    (``(xyz_A, amplitude, sigma_A)``, as given to :func:`hetclass.simulate.simulate_dataset`);
    ``noise_sigma`` in raw image units (``SimulatedDataset.noise_sigma``).
    """
    raw = (np.asarray(images, dtype=np.float64) / np.asarray(norm_scale)[:, None, None]
           + np.asarray(norm_offset)[:, None, None])
    out = np.empty((len(particles), len(states)))
    for s, gauss in enumerate(states):
        clean = true_projections(particles, gauss, threads)
        out[:, s] = -((raw - clean) ** 2).sum(axis=(1, 2)) / (2.0 * noise_sigma ** 2)
    return out


def true_projections(particles: ParticleSet, state: Gaussians, threads: int = 1) -> np.ndarray:
    """(n, B, B) the clean raw images of one true state at every particle's STAR pose, shift
    and CTF (the simulator's own projector)."""
    g = particles.optics_group
    o = particles.optics
    return simulate_images(state, particles.rotations, particles.shifts_A,
                           particles.defocus_u_A, particles.defocus_v_A,
                           particles.defocus_angle_deg, int(particles.box_px[0]),
                           float(particles.pixel_size_A[0]), o.voltage_kV[g], o.cs_mm[g],
                           o.amplitude_contrast[g], particles.phase_shift(), threads=threads)


def ideal_labels(log_likelihoods: np.ndarray, populations: np.ndarray) -> np.ndarray:
    """(n,) Bayes-optimal state indices from :func:`ideal_log_likelihoods` and the true
    population fractions (S,)."""
    prior = np.log(np.maximum(np.asarray(populations, dtype=np.float64), 1e-300))
    return np.argmax(log_likelihoods + prior[None, :], axis=1)
