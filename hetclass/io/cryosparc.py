"""CryoSPARC particle files: the public entry points.

* :func:`read_cs` -- ``.cs`` (+ passthrough files) -> :class:`~hetclass.particles.ParticleSet`
  (:mod:`hetclass.io.cryosparc_read` states every convention);
* :func:`write_cs`, :func:`write_cs_group`, :func:`write_class_subsets` -- results back as
  ``.cs`` (+ ``.csg`` for CryoSPARC's "Import Result Group") (:mod:`hetclass.io.cryosparc_write`);
* :func:`star_columns` -- the CryoSPARC-only columns a RELION STAR written from a ``.cs``
  carries (uid, class, micrograph coordinates);
* :func:`relion_stack_paths` -- RELION refuses ``.mrc`` stacks (only ``.mrcs``), so STAR files
  written from a ``.cs`` point at ``.mrcs`` symbolic links to CryoSPARC's ``.mrc`` stacks.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..particles import ParticleSet
from .cryosparc_read import (
    load_cs_array,
    merge_passthrough,
    missing_stacks,
    particles_from_dataset,
    read_cs,
    require_stacks,
)
from .cryosparc_write import UID_LABEL, cs_table, csg_text, uids_of, write_class_subsets, write_cs, write_cs_group

__all__ = ["read_cs", "load_cs_array", "merge_passthrough", "particles_from_dataset",
           "missing_stacks", "require_stacks", "UID_LABEL", "uids_of", "cs_table", "csg_text",
           "write_cs", "write_cs_group", "write_class_subsets", "star_columns",
           "relion_stack_paths"]


def star_columns(particles: ParticleSet) -> Dict[str, np.ndarray]:
    """Extra STAR columns for particles that came from CryoSPARC.

    ``rlnHetclassUid`` (the uid, so the STAR can go back to ``.cs``; RELION keeps unknown
    labels), ``rlnClassNumber`` (input class + 1, when the ``.cs`` had classes) and
    ``rlnCoordinateX/Y`` in pixels of the micrograph (x = x_frac * nx,
    y = (1 - y_frac) * ny, rounded, as pyem's csparc2star writes them). Empty for other sets.
    """
    src = particles.source or {}
    cols: Dict[str, np.ndarray] = {}
    uids = uids_of(particles)
    if uids is not None:
        cols[UID_LABEL] = uids
    if src.get("format") != "cs":
        return cols
    rows = np.asarray(src["rows"])
    ds = src["dataset"]
    if src.get("input_class") is not None:
        cols["rlnClassNumber"] = np.asarray(src["input_class"])[rows] + 1
    names = ds.dtype.names
    if all(f in names for f in ("location/center_x_frac", "location/center_y_frac",
                                "location/micrograph_shape")):
        shape = np.asarray(ds["location/micrograph_shape"])[rows].reshape(len(rows), -1)
        x = np.asarray(ds["location/center_x_frac"], dtype=np.float64)[rows] * shape[:, -1]
        y = (1 - np.asarray(ds["location/center_y_frac"], dtype=np.float64)[rows]) * shape[:, 0]
        cols["rlnCoordinateX"] = np.rint(x)
        cols["rlnCoordinateY"] = np.rint(y)
    return cols


def _display_path(path: str, start: str) -> str:
    """``path`` relative to ``start`` when it lies below it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, start)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def relion_stack_paths(particles: ParticleSet, link_dir: Optional[str] = None,
                       relative_to: Optional[str] = None) -> Tuple[ParticleSet, List[str]]:
    """Re-express stack paths for a STAR file, linking ``.mrc`` stacks as ``.mrcs``.

    RELION 3.1 refuses ``index@stack.mrc`` ("stacks of images in MRC-format should have
    extension .mrcs"). With ``link_dir``, each ``.mrc`` stack gets a symbolic link
    ``link_dir/<stack path>.mrcs`` to the real file (absolute target; made even when the
    stack does not exist yet) and the image names point at the links. Every stack path is
    written relative to ``relative_to`` (default: the working directory, where RELION and
    hetclass resolve STAR paths) when below it, else absolute; ``project_dir`` becomes
    ``relative_to``. Returns the new set and the links made.
    """
    start = os.path.abspath(relative_to or os.getcwd())
    names = np.asarray(particles.image_names).astype(str)
    parts = np.char.partition(names, "@")
    stacks, inverse = np.unique(parts[:, 2], return_inverse=True)
    new_stacks, links = [], []
    for stack in stacks:
        target = os.path.abspath(os.path.join(particles.project_dir, stack))
        if link_dir is None or not stack.lower().endswith(".mrc"):
            new_stacks.append(_display_path(target, start))
            continue
        rel = os.path.normpath(stack).lstrip(os.sep)
        if rel.startswith(os.pardir):
            rel = rel.replace(os.pardir + os.sep, "up" + os.sep)
        link = os.path.join(os.path.abspath(link_dir), rel[:-4] + ".mrcs")
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.islink(link):
            if os.readlink(link) != target:
                os.remove(link)   # our own link from an earlier conversion
        elif os.path.exists(link):
            raise InputError("cannot create the .mrcs link: a file of that name exists",
                             file=link)
        if not os.path.islink(link):
            os.symlink(target, link)
        links.append(link)
        new_stacks.append(_display_path(link, start))
    new_names = np.char.add(np.char.add(parts[:, 0], "@"),
                            np.asarray(new_stacks, dtype=str)[inverse.reshape(-1)])
    return replace(particles, image_names=new_names.astype(str), project_dir=start), links
