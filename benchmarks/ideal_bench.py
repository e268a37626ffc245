"""The ideal observer on a simulated benchmark data set (shared by the benchmark scripts).

:func:`ideal_state_labels` reads a simulated STAR file and its images, scores every particle
with :func:`hetclass.ideal_observer.ideal_log_likelihoods` (the true states projected at the
STAR pose with the CTF) and returns the Bayes-optimal state of each particle, in the order
of ``truth.csv``'s ``image_name`` column as given.

The noise level is the simulator's (``SimulatedDataset.noise_sigma``) when the caller kept
it; otherwise it is measured from the data and the truth: the mean squared residual of every
raw image against its *true* state's clean projection (the maximum-likelihood estimate of a
white-noise variance; with thousands of images of thousands of pixels it is exact to well
under 1 %). Either way the observer knows the noise, as the definition requires.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

BATCH = 1000


def _log_likelihoods(particles, states, sigma: float, offset, scale, threads: int):
    from hetclass.ideal_observer import ideal_log_likelihoods
    from hetclass.io.images import ImageSource
    n = len(particles)
    ll = np.empty((n, len(states)))
    with ImageSource(particles) as src:
        for start in range(0, n, BATCH):
            rows = np.arange(start, min(n, start + BATCH))
            ll[rows] = ideal_log_likelihoods(particles.take(rows), src.read(rows), states,
                                             sigma, offset[rows], scale[rows], threads=threads)
    return ll


def ideal_state_labels(star: str, project_dir: str, truth_csv: str, states: Sequence,
                       populations: Sequence[float], noise_sigma: Optional[float] = None,
                       threads: int = 2):
    """``(image_names (n,), true_state (n,), ideal_state (n,), noise_sigma)``.

    ``states`` the Gaussians of every true state in simulation order; ``populations`` their
    true fractions. ``noise_sigma`` None: measured from the residuals (module docstring).
    """
    from hetclass.ideal_observer import ideal_labels
    from hetclass.io.loader import load_particles
    particles = load_particles(star, project_dir=project_dir)
    names = particles.image_names.astype(str)
    truth = pd.read_csv(truth_csv).set_index("image_name").reindex(names)
    offset = truth["norm_offset"].values
    scale = truth["norm_scale"].values
    true_state = truth["state_index"].values.astype(np.int64)
    if noise_sigma is None:
        # log-likelihoods at sigma = sqrt(1/2) are minus the squared residuals
        resid2 = -_log_likelihoods(particles, states, np.sqrt(0.5), offset, scale, threads)
        box = int(particles.box_px[0])
        noise_sigma = float(np.sqrt(resid2[np.arange(len(names)), true_state].mean()
                                    / (box * box)))
        ll = -resid2 / (2.0 * noise_sigma ** 2)
    else:
        ll = _log_likelihoods(particles, states, noise_sigma, offset, scale, threads)
    return names, true_state, ideal_labels(ll, np.asarray(populations)), noise_sigma
