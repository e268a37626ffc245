"""M-step: class maps, half maps, prior spectra and FSC resolution from the accumulators.

Input: the (rank-summed) :class:`hetclass.em_step.Accumulators`; output: an
:class:`MStepResult`. Each class is solved on the padded Fourier grid (Wiener/MAP estimate,
:func:`hetclass.reconstruct.solve_grid`), once from both half sets and once per half set.

When ``acc.grid`` is a CuPy array (the GPU pass) the solves, FFTs and FSCs run on the device;
the small results (maps, half maps, tau2, FSC) always come back as NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .em_step import Accumulators
from .fsc import fsc, fsc_resolution
from .gpu.xp import array_module, to_host
from .reconstruct import grid_to_volume, shell_power, solve_grid, symmetrise
from .workspace import Workspace


@dataclass
class MStepResult:
    maps: np.ndarray        # (K, b, b, b) unmasked class maps
    half_maps: np.ndarray   # (2, K, b, b, b) unmasked half-set maps
    tau2: np.ndarray        # (K, S)
    fsc: np.ndarray         # (K, S)
    resolution_A: np.ndarray   # (K,) NaN where nothing was resolved
    resolution_status: list    # (K,) hetclass.fsc.RESOLUTION_* (measured / crop_limit / ...)
    # the half maps where they were computed (a CuPy array on the GPU path, else the same
    # NumPy array as ``half_maps``): lets later map arithmetic stay on the device
    half_maps_xp: object = None


def _grid_shells(ws: Workspace, xp):
    """The padded grid's shell index in module ``xp`` (the device pass keeps a copy)."""
    if xp is np:
        return ws.grid_shell
    cached = getattr(ws.device_pass, "grid_shell", None)
    return cached if cached is not None else xp.asarray(ws.grid_shell)


def m_step(ws: Workspace, acc: Accumulators, tau2: np.ndarray, tau2_fudge: float,
           solvent_mask: np.ndarray, focus_mask: Optional[np.ndarray]) -> MStepResult:
    """Class maps (full and half sets) from the accumulators; new tau2 and FSCs."""
    xp = array_module(acc.grid)
    k = tau2.shape[0]
    side, pad, b = ws.side, ws.pad, ws.data.plan.crop_box_px
    shape = (side, side, side)
    r_max = ws.data.plan.data_shell
    shells = _grid_shells(ws, xp)
    nums, dens = [], []
    for h in range(2):
        g = acc.grid[h]
        cplx = g[:, :2 * k].reshape(-1, k, 2)
        nums.append([(cplx[:, j, 0] + 1j * cplx[:, j, 1]).reshape(shape) for j in range(k)])
        dens.append([g[:, 2 * k + j].astype(np.float64).reshape(shape) for j in range(k)])
    maps = xp.zeros((k, b, b, b), np.float32)
    halves = xp.zeros((2, k, b, b, b), np.float32)
    new_tau2 = xp.zeros(tau2.shape, dtype=tau2.dtype)
    sym = [[symmetrise(nums[h][j], dens[h][j]) for j in range(k)] for h in range(2)]
    for j in range(k):
        num = sym[0][j][0] + sym[1][j][0]
        den = sym[0][j][1] + sym[1][j][1]
        grid = solve_grid(num, den, tau2_fudge * tau2[j], shells, pad, r_max)
        new_tau2[j] = shell_power(grid, shells, tau2.shape[1])
        maps[j] = grid_to_volume(grid, b)
        for h in range(2):
            hg = solve_grid(sym[h][j][0], sym[h][j][1], tau2_fudge * tau2[j],
                            shells, pad, r_max)
            halves[h, j] = grid_to_volume(hg, b)
    if focus_mask is not None:
        # focused classification: classes share one density outside the focus mask
        focus = xp.asarray(focus_mask)

        def shared(hs):
            num = sum(sym[h][j][0] for h in hs for j in range(k))
            den = sum(sym[h][j][1] for h in hs for j in range(k))
            return grid_to_volume(solve_grid(num, den, tau2_fudge * tau2.mean(0), shells,
                                             pad, r_max), b)
        maps = focus * maps + (1.0 - focus) * shared((0, 1))
        for h in range(2):
            halves[h] = focus * halves[h] + (1.0 - focus) * shared((h,))
    fscs = np.zeros((k, tau2.shape[1]))
    res = np.zeros(k)
    status = []
    psize = ws.data.plan.crop_pixel_size_A
    mask = xp.asarray(solvent_mask)
    curves = [fsc(halves[0, j] * mask, halves[1, j] * mask) for j in range(k)]
    for j in range(k):
        curve = to_host(curves[j])
        fscs[j, :min(len(curve), fscs.shape[1])] = curve[:fscs.shape[1]]
        res[j], st = fsc_resolution(curve, b, psize, max_shell=ws.like_shells - 1)
        status.append(st)
    host_halves = to_host(halves)
    return MStepResult(to_host(maps).astype(np.float32), host_halves, to_host(new_tau2),
                       fscs, res, status, halves if xp is not np else host_halves)
