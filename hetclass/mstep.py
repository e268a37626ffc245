"""M-step: class maps, half maps, prior spectra and FSC resolution from the accumulators.

Input: the (rank-summed) :class:`hetclass.em_step.Accumulators`; output: an
:class:`MStepResult`. Each class is solved on the padded Fourier grid (Wiener/MAP estimate,
:func:`hetclass.reconstruct.solve_grid`), once from both half sets and once per half set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .em_step import Accumulators
from .fsc import fsc, resolution_from_fsc
from .reconstruct import grid_to_volume, shell_power, solve_grid, symmetrise
from .workspace import Workspace


@dataclass
class MStepResult:
    maps: np.ndarray        # (K, b, b, b) unmasked class maps
    half_maps: np.ndarray   # (2, K, b, b, b) unmasked half-set maps
    tau2: np.ndarray        # (K, S)
    fsc: np.ndarray         # (K, S)
    resolution_A: np.ndarray


def m_step(ws: Workspace, acc: Accumulators, tau2: np.ndarray, tau2_fudge: float,
           solvent_mask: np.ndarray, focus_mask: Optional[np.ndarray]) -> MStepResult:
    """Class maps (full and half sets) from the accumulators; new tau2 and FSCs."""
    k = tau2.shape[0]
    side, pad, b = ws.side, ws.pad, ws.data.plan.crop_box_px
    shape = (side, side, side)
    r_max = ws.data.plan.data_shell
    nums, dens = [], []
    for h in range(2):
        g = acc.grid[h]
        cplx = g[:, :2 * k].reshape(-1, k, 2)
        nums.append([(cplx[:, j, 0] + 1j * cplx[:, j, 1]).reshape(shape) for j in range(k)])
        dens.append([g[:, 2 * k + j].astype(np.float64).reshape(shape) for j in range(k)])
    maps = np.zeros((k, b, b, b), np.float32)
    halves = np.zeros((2, k, b, b, b), np.float32)
    new_tau2 = np.zeros_like(tau2)
    sym = [[symmetrise(nums[h][j], dens[h][j]) for j in range(k)] for h in range(2)]
    for j in range(k):
        num = sym[0][j][0] + sym[1][j][0]
        den = sym[0][j][1] + sym[1][j][1]
        grid = solve_grid(num, den, tau2_fudge * tau2[j], ws.grid_shell, pad, r_max)
        new_tau2[j] = shell_power(grid, ws.grid_shell, tau2.shape[1])
        maps[j] = grid_to_volume(grid, b)
        for h in range(2):
            hg = solve_grid(sym[h][j][0], sym[h][j][1], tau2_fudge * tau2[j],
                            ws.grid_shell, pad, r_max)
            halves[h, j] = grid_to_volume(hg, b)
    if focus_mask is not None:
        # focused classification: classes share one density outside the focus mask
        def shared(hs):
            num = sum(sym[h][j][0] for h in hs for j in range(k))
            den = sum(sym[h][j][1] for h in hs for j in range(k))
            return grid_to_volume(solve_grid(num, den, tau2_fudge * tau2.mean(0), ws.grid_shell,
                                             pad, r_max), b)
        maps = focus_mask * maps + (1.0 - focus_mask) * shared((0, 1))
        for h in range(2):
            halves[h] = focus_mask * halves[h] + (1.0 - focus_mask) * shared((h,))
    fscs = np.zeros((k, tau2.shape[1]))
    res = np.zeros(k)
    psize = ws.data.plan.crop_pixel_size_A
    for j in range(k):
        curve = fsc(halves[0, j] * solvent_mask, halves[1, j] * solvent_mask)
        fscs[j, :min(len(curve), fscs.shape[1])] = curve[:fscs.shape[1]]
        res[j] = resolution_from_fsc(curve, b, psize, max_shell=ws.like_shells - 1)
    return MStepResult(maps.astype(np.float32), halves, new_tau2, fscs, res)
