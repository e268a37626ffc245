"""Where the classes differ: a local weight for the class deviations from the consensus.

Class maps estimated from a few thousand noisy particles carry noise everywhere, but the
states usually differ only in part of the molecule (a moving domain, a missing subunit, a
bound ligand). Every voxel where they do *not* differ adds noise to each particle's
comparison between classes and nothing else. :func:`local_weight` estimates, per voxel, the
fraction of the between-class variance of the class maps that is signal:

    s(x) = smooth( sum_k f_k (V_k(x) - mu(x))^2 )                  (between-class variance)
    n(x) = smooth( sum_k f_k ((H1_k(x) - H2_k(x)) / 2)^2 )          (its noise, from half maps)
    w(x) = clip((s - n) / s, floor, 1)

(``f_k`` the class fractions, ``mu`` the consensus, ``H1``/``H2`` the half-set maps, ``smooth``
a Gaussian of ``smooth_px``), i.e. the local Wiener factor of the deviations, an empirical-Bayes
prior whose variance varies in space. The references the particles are scored against are
``mu + w * (V_k - mu)``: the consensus where classes agree, the class map where they differ.
``floor`` keeps some of every deviation while classes are still forming (at the start all
deviations are noise and ``w`` would be 0 everywhere).

NumPy or CuPy (the module of the maps).
"""

from __future__ import annotations

import numpy as np

from .gpu.xp import array_module


def gaussian_blur(volume, sigma_px: float):
    """Centred cubic map blurred by an isotropic Gaussian of ``sigma_px`` (periodic, by FFT)."""
    xp = array_module(volume)
    b = volume.shape[-1]
    f = xp.fft.fftfreq(b).astype(np.float32)
    fr = xp.fft.rfftfreq(b).astype(np.float32)
    g = np.float32(-2.0 * np.pi ** 2 * sigma_px ** 2)
    kernel = (xp.exp(g * f[:, None, None] ** 2) * xp.exp(g * f[None, :, None] ** 2)
              * xp.exp(g * fr[None, None, :] ** 2))
    axes = (-3, -2, -1)
    f = xp.fft.rfftn(volume, axes=axes) * kernel
    return xp.fft.irfftn(f, s=volume.shape[-3:], axes=axes).astype(np.float32)


def local_weight(maps, half_maps, consensus, half_consensus, fractions, smooth_px: float = 2.0,
                 floor: float = 0.0, mask=None):
    """(b, b, b) float32 weight in [floor, 1] of the class deviations (module docstring).

    ``maps`` (K, b, b, b) class maps from all particles, ``half_maps`` (2, K, b, b, b),
    ``consensus`` (b, b, b), ``half_consensus`` (2, b, b, b), ``fractions`` (K,);
    ``mask`` (b, b, b) optional: the weight is multiplied by it (e.g. a focus mask).
    """
    xp = array_module(maps)
    f = xp.asarray(np.asarray(fractions, dtype=np.float32))[:, None, None, None]
    dev = maps - consensus[None]
    noise = (half_maps[0] - half_consensus[0][None]) - (half_maps[1] - half_consensus[1][None])
    s = gaussian_blur((f * dev ** 2).sum(0), smooth_px)
    n = gaussian_blur((f * (noise / 2) ** 2).sum(0), smooth_px)
    w = xp.clip((s - n) / xp.maximum(s, 1e-30), float(floor), 1.0)
    if mask is not None:
        w = w * xp.asarray(mask)
    return w.astype(np.float32)


def weighted_references(maps, consensus, weight):
    """``consensus + weight * (maps - consensus)`` for (K, b, b, b) maps (float32)."""
    return (consensus[None] + weight[None] * (maps - consensus[None])).astype(np.float32)
