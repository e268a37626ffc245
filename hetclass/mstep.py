"""M-step: class maps, half maps, prior spectra and FSC resolution from the accumulators.

Input: the (rank-summed) :class:`hetclass.em_step.Accumulators`; output: an
:class:`MStepResult`. Each class is solved on the padded Fourier grid (MAP estimate,
:func:`hetclass.reconstruct.solve_grid`), once from both half sets and once per half set.

**Prior (hierarchical, centred on the consensus).** The consensus map ``mu`` (all particles,
whatever their class) has the prior ``CN(0, T tau2_mean[shell])``; each class map has the
prior ``CN(mu, T tau2_diff[shell])``: classes share everything they have in common and only
their *differences* are shrunk. A class of 5 % of the particles then keeps the consensus's
full-resolution detail wherever it does not differ, instead of being shrunk towards zero
(which makes its projections weaker than those of large classes and drains it, the bias a
zero-centred prior gives small classes). ``prior`` is the (2, S) array ``[tau2_mean,
tau2_diff]``; the M-step returns the new one (the shell power of the consensus and the
population-weighted shell power of the class deviations), as RELION re-estimates tau2 from
its maps.

When ``acc.grid`` is a CuPy array (the GPU pass) the solves, FFTs and FSCs run on the device;
the small results (maps, half maps, prior, FSC) always come back as NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .em_step import Accumulators
from .fourier import radial_mean
from .fsc import fsc, fsc_resolution
from .gpu.xp import array_module, to_host
from .parallel import thread_map
from .reconstruct import grid_to_volume, prior_variance, shell_power, solve_grid, symmetrise
from .workspace import Workspace


@dataclass
class MStepResult:
    maps: np.ndarray        # (K, b, b, b) unmasked class maps
    half_maps: np.ndarray   # (2, K, b, b, b) unmasked half-set maps
    tau2: np.ndarray        # (2, S) new prior spectra [consensus, class deviations]
    fsc: np.ndarray         # (K, S)
    resolution_A: np.ndarray   # (K,) NaN where nothing was resolved
    resolution_status: list    # (K,) hetclass.fsc.RESOLUTION_* (measured / crop_limit / ...)
    # the half maps where they were computed (a CuPy array on the GPU path, else the same
    # NumPy array as ``half_maps``): lets later map arithmetic stay on the device
    half_maps_xp: object = None
    consensus: Optional[np.ndarray] = None        # (b, b, b) consensus map (all particles)
    half_consensus: Optional[np.ndarray] = None   # (2, b, b, b) consensus of each half set
    deviation_resolution_A: Optional[np.ndarray] = None  # (K,) where the deviations are resolved


def _grid_shells(ws: Workspace, xp):
    """The padded grid's shell index in module ``xp`` (the device pass keeps a copy)."""
    if xp is np:
        return ws.grid_shell
    cached = getattr(ws.device_pass, "grid_shell", None)
    return cached if cached is not None else xp.asarray(ws.grid_shell)


def initial_prior(tau2_consensus: np.ndarray) -> np.ndarray:
    """(2, S) prior before any class exists: classes may differ as much as the signal."""
    t = np.asarray(tau2_consensus, dtype=np.float64)
    return np.stack([t, t])


def _accumulated(acc: Accumulators, k: int, shape, threads: int = 1):
    """Symmetrised (num, den) grids: ``[h][j]`` per half set h and class j (complex64 and
    float32); ``threads`` share the (half, class) pairs."""
    xp = array_module(acc.grid)

    def one(hj):
        h, j = divmod(hj, k)
        g = acc.grid[h]
        if xp is np and g.dtype == np.float32:
            # class j's (re, im) columns read as one complex column, and its den column,
            # as strided views: the symmetrisation's mirror is their first copy
            num = g[:, 2 * j:2 * j + 2].view(np.complex64)[:, 0]
            den = g[:, 2 * k + j]
        else:
            num = (g[:, 2 * j] + 1j * g[:, 2 * j + 1]).astype(np.complex64)
            den = xp.ascontiguousarray(g[:, 2 * k + j], dtype=np.float32)
        return symmetrise(num.reshape(shape), den.reshape(shape))

    pairs = list(thread_map(one, range(2 * k), threads if xp is np else 1))
    return [pairs[:k], pairs[k:]]


def m_step(ws: Workspace, acc: Accumulators, prior: np.ndarray, tau2_fudge: float,
           solvent_mask: np.ndarray, focus_mask: Optional[np.ndarray],
           full_maps: bool = True) -> MStepResult:
    """Class maps (full and half sets) from the accumulators; new prior spectra and FSCs.

    ``full_maps`` False: the class maps and the consensus are the means of the half-set ones
    (no solve from both half sets together; the gold-standard phase scores against half maps
    only, so this saves K + 1 solves and inverse FFTs per iteration).
    """
    xp = array_module(acc.grid)
    k = acc.grid.shape[2] // 3
    side, pad, b = ws.side, ws.pad, ws.data.plan.crop_box_px
    r_max = ws.data.plan.data_shell
    shells = _grid_shells(ws, xp)
    n_shells = prior.shape[1]
    threads = ws.threads if xp is np else 1     # independent solves: the same numbers
    sym = _accumulated(acc, k, (side, side, side), threads)
    t_mean = tau2_fudge * np.asarray(prior[0])
    t_diff = np.asarray(prior[1])      # estimated without bias (below): no fudge factor

    # one prior variance grid per prior, shared by every solve with it
    v_mean = prior_variance(t_mean, shells, pad, r_max, xp)
    v_diff = prior_variance(t_diff, shells, pad, r_max, xp)

    def solve(num, den, variance, mean=None):
        return solve_grid(num, den, None, shells, pad, r_max, prior_mean=mean,
                          variance=variance)

    def consensus(hs):
        num = sum(sym[h][j][0] for h in hs for j in range(k))
        den = sum(sym[h][j][1] for h in hs for j in range(k))
        return solve(num, den, v_mean)

    mu_half = list(thread_map(lambda h: consensus((h,)), range(2), threads))
    mu = consensus((0, 1)) if full_maps else (mu_half[0] + mu_half[1]) / 2
    maps = xp.zeros((k, b, b, b), np.float32)
    halves = xp.zeros((2, k, b, b, b), np.float32)
    weight = np.asarray(to_host(acc.class_weight), dtype=np.float64)
    weight = weight / max(float(weight.sum()), 1e-30)
    mean_den = np.zeros((k, n_shells))

    def one_class(j):
        den = sym[0][j][1] + sym[1][j][1]
        mean_den[j] = np.asarray(to_host(radial_mean(den.ravel(), shells, n_shells)))
        if full_maps:
            maps[j] = grid_to_volume(solve(sym[0][j][0] + sym[1][j][0], den, v_diff, mu), b)
        for h in range(2):
            halves[h, j] = grid_to_volume(solve(sym[h][j][0], sym[h][j][1], v_diff,
                                                mu_half[h]), b)

    for _ in thread_map(one_class, range(k), threads):
        pass
    half_cons = xp.stack([grid_to_volume(mu_half[h], b) for h in range(2)])
    if full_maps:
        cons = grid_to_volume(mu, b)
    else:
        maps = (halves[0] + halves[1]) / 2
        cons = (half_cons[0] + half_cons[1]) / 2
    if focus_mask is not None:
        # focused classification: outside the focus mask every class is the consensus
        focus = xp.asarray(focus_mask)
        maps = focus * maps + (1.0 - focus) * cons
        for h in range(2):
            halves[h] = focus * halves[h] + (1.0 - focus) * half_cons[h]
    fscs, res, status = _class_fsc(ws, halves, solvent_mask, n_shells)
    dev = halves - half_cons[:, None]
    d_fsc, d_res, _ = _class_fsc(ws, dev, solvent_mask, n_shells)
    new_prior = np.stack([np.asarray(to_host(shell_power(mu, shells, n_shells))),
                          _deviation_power(d_fsc, mean_den, weight, pad)])
    host_halves = to_host(halves)
    return MStepResult(to_host(maps).astype(np.float32), host_halves, new_prior, fscs, res,
                       status, halves if xp is not np else host_halves,
                       consensus=to_host(cons), half_consensus=to_host(half_cons),
                       deviation_resolution_A=d_res)


def _deviation_power(d_fsc: np.ndarray, mean_den: np.ndarray, fractions: np.ndarray,
                     pad: int) -> np.ndarray:
    """(S,) prior power of the class deviations, from their half-set FSC (gold standard).

    The FSC of the two half sets' deviations gives the deviations' spectral SNR,
    ``SSNR = 2 FSC / (1 - FSC)`` (full set); the MAP solve's per-voxel SNR is
    ``den * pad**3 * tau2``, so ``tau2 = SSNR / (pad**3 <den>)`` per shell and class
    (``<den>`` the class's mean accumulated CTF^2/sigma^2 weight in the shell). Unlike the
    power of the shrunken deviations, this does not fall as the prior shrinks them (the
    FSC does not change when a shell is scaled), so the prior cannot collapse onto itself.
    """
    f = np.clip(d_fsc, 0.0, 0.999)
    ssnr = 2.0 * f / (1.0 - f)
    tau2 = np.where(mean_den > 0, ssnr / (pad ** 3 * np.maximum(mean_den, 1e-30)), 0.0)
    return (np.asarray(fractions)[:, None] * tau2).sum(0)


def _class_fsc(ws: Workspace, halves, solvent_mask, n_shells: int):
    """Per-class FSC curves (K, S) of the masked half maps, resolutions and their status."""
    xp = array_module(halves)
    k = halves.shape[1]
    b = ws.data.plan.crop_box_px
    psize = ws.data.plan.crop_pixel_size_A
    mask = xp.asarray(solvent_mask)
    fscs = np.zeros((k, n_shells))
    res = np.zeros(k)
    status: List[str] = []
    curves = thread_map(lambda j: to_host(fsc(halves[0, j] * mask, halves[1, j] * mask)),
                        range(k), ws.threads if xp is np else 1)
    for j, curve in enumerate(curves):
        fscs[j, :min(len(curve), n_shells)] = curve[:n_shells]
        res[j], st = fsc_resolution(curve, b, psize, max_shell=ws.like_shells - 1)
        status.append(st)
    return fscs, res, status


__all__ = ["MStepResult", "m_step", "initial_prior", "symmetrise"]
