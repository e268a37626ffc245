"""Checks a front end runs right after reading the particles, before any heavy work.

They turn two silent surprises into messages:

* :func:`missing_stack` -- the first particle stack a relative ``index@stack`` name does
  not resolve to (from the project directory), so the front end can name it and say how
  the paths are resolved (``--project-dir`` on the command line);
* :func:`clamped_target_res_A` -- a ``--target-res`` finer than the data can give (beyond
  Nyquist, less the margin the cropped box needs): the resolution actually used.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from .io.images import split_image_names
from .preprocess import plan_crop


def missing_stack(particles) -> Optional[Tuple[str, str, bool]]:
    """``(image name, resolved path, relative)`` of the first stack that does not exist, or
    None. ``relative`` says whether the name's path was relative (resolved from
    ``particles.project_dir``). Only STAR input is checked (``.cs`` input has its own
    check)."""
    if particles.source.get("format") == "cs" or len(particles) == 0:
        return None
    names = np.asarray(particles.image_names).astype(str)
    _, stacks = split_image_names(names)
    unique, first = np.unique(stacks, return_index=True)
    for stack, row in sorted(zip(unique.tolist(), first.tolist()), key=lambda t: t[1]):
        relative = not os.path.isabs(stack)
        path = os.path.join(particles.project_dir, stack) if relative else stack
        if not os.path.exists(path):
            return str(names[row]), os.path.normpath(path), relative
    return None


def clamped_target_res_A(box_px: int, pixel_size_A: float,
                         target_res_A: Optional[float]) -> Optional[float]:
    """The resolution (A) used instead of ``target_res_A`` when it is finer than the finest
    shell the box allows (see :func:`hetclass.preprocess.plan_crop`); None when it is used
    as asked (up to rounding to a whole Fourier shell) or not given."""
    if target_res_A is None or not target_res_A > 0 or box_px < 8:
        return None
    asked_shell = int(np.floor(box_px * pixel_size_A / float(target_res_A) + 1e-6))
    plan = plan_crop(int(box_px), float(pixel_size_A), float(target_res_A))
    if asked_shell > plan.target_shell:
        return float(plan.target_res_A)
    return None
