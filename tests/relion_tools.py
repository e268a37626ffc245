"""Helpers for tests that call the real RELION binaries (skip with a reason when absent).

Traps handled here (see shared docs, "Simulating particles with RELION"):
* a strong CTF wraps around a small box, so the map is zero-padded (``pad_factor`` x) before
  ``relion_project --ctf`` and the central window is cut out of each projection, as
  extraction from a micrograph would;
* ``relion_project --add_noise`` is not seeded per run -- never used; add noise yourself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional, Sequence, Tuple

import mrcfile
import numpy as np
import pytest
import starfile


def relion_available(*binaries: str) -> bool:
    """True when every named RELION binary (default ``relion_project``) is on PATH."""
    return all(shutil.which(b) is not None for b in (binaries or ("relion_project",)))


def require_relion(*binaries: str) -> None:
    """``pytest.skip`` with the missing binaries named, unless all are on PATH."""
    names = binaries or ("relion_project",)
    missing = [b for b in names if shutil.which(b) is None]
    if missing:
        pytest.skip(f"RELION binaries not installed: {', '.join(missing)}")


def run_relion(args: Sequence[str], cwd: Optional[str] = None, timeout_s: float = 600) -> str:
    """Run a RELION command; on failure raise AssertionError with its output tail."""
    require_relion(args[0])
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def pad_map(vol: np.ndarray, size_px: int) -> np.ndarray:
    """Zero-pad a cubic map to ``size_px`` keeping voxel ``box // 2`` at ``size_px // 2``."""
    box = vol.shape[0]
    out = np.zeros((size_px,) * 3, dtype=np.float32)
    o = size_px // 2 - box // 2
    out[o:o + box, o:o + box, o:o + box] = vol
    return out


def run_relion_project(map_path: str, star_path: str, out_root: str, angpix: float,
                       ctf: bool = True, pad_factor: int = 3) -> Tuple[str, str]:
    """Project ``map_path`` with ``relion_project`` at the poses/shifts/CTFs of ``star_path``.

    The map is zero-padded ``pad_factor`` x, projected (``--ctf`` when ``ctf``), and the central
    ``box`` window of every projection is written to ``out_root + ".mrcs"`` (voxel size set);
    ``out_root + ".star"`` is relion_project's STAR pointing at that stack. Relative stack
    paths in ``star_path`` don't matter (relion_project only reads the metadata). No noise.
    Returns ``(mrcs_path, star_path)``.
    """
    require_relion("relion_project")
    vol = mrcfile.read(map_path)
    box = vol.shape[-1]
    padded_size = int(pad_factor) * box
    work = out_root + "_padded"
    padded_map = work + "_map.mrc"
    with mrcfile.new(padded_map, overwrite=True) as mrc:
        mrc.set_data(pad_map(np.asarray(vol, dtype=np.float32), padded_size))
        mrc.voxel_size = angpix
    args = ["relion_project", "--i", os.path.abspath(padded_map), "--o", os.path.abspath(work),
            "--ang", os.path.abspath(star_path), "--angpix", str(angpix)]
    if ctf:
        args.append("--ctf")
    run_relion(args, cwd=os.path.dirname(os.path.abspath(out_root)))
    images = mrcfile.read(work + ".mrcs")
    o = padded_size // 2 - box // 2
    cropped = np.ascontiguousarray(images[:, o:o + box, o:o + box], dtype=np.float32)
    mrcs_path = out_root + ".mrcs"
    with mrcfile.new(mrcs_path, overwrite=True) as mrc:
        mrc.set_data(cropped)
        mrc.set_image_stack()
        mrc.voxel_size = angpix
    blocks = starfile.read(work + ".star", always_dict=True)
    parts = blocks["particles"]
    stack_name = os.path.basename(mrcs_path)
    parts["rlnImageName"] = [f"{i + 1:06d}@{stack_name}" for i in range(len(parts))]
    if "optics" in blocks:
        blocks["optics"]["rlnImageSize"] = box
    out_star = out_root + ".star"
    starfile.write(blocks, out_star)
    return mrcs_path, out_star
