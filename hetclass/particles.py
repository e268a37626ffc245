"""The one internal particle representation.

Every input format (RELION 3.0/3.1 STAR, CryoSPARC .cs, Scipion sets) converts to a
:class:`ParticleSet` at the edge, and back from it. Conventions, stated once:

* **Rotation** ``rotations[i]`` is RELION's Euler matrix ``A(rot, tilt, psi)`` (ZYZ,
  ``A[0,0] = cos psi cos tilt cos rot - sin psi sin rot``, ``A[2,2] = cos tilt``). It maps
  volume coordinates to image coordinates. The 2D Fourier transform of the particle's
  projection is the central slice of the volume's 3D transform taken at
  ``A.T @ (kx, ky, 0)``. Vectors are ``(x, y, z)`` columns; arrays of maps are indexed
  ``[z, y, x]`` as in MRC files.
* **Shift** ``shifts_A[i] = (x, y)`` is RELION's ``(rlnOriginXAngst, rlnOriginYAngst)`` in
  Angstrom: translating the image by ``+shifts_A / pixel_size_A`` pixels centres the particle.
* **CTF** defoci in Angstrom (underfocus positive), astigmatism angle and phase shift in
  degrees, B-factor in A^2, voltage in kV, spherical aberration in mm, amplitude contrast as
  a fraction -- RELION's parameterisation (see :mod:`hetclass.ctf`).
* **Half sets** ``random_subset`` is 1 or 2 (RELION's rlnRandomSubset), 0 when unknown.
* **Optics groups** ``optics_group[i]`` is a 0-based row of :class:`Optics`.

The original tables are kept (``source``) so writers can pass every input column through.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

import numpy as np


@dataclass
class Optics:
    """Per optics group acquisition parameters (arrays of length n_groups)."""

    names: np.ndarray            # (g,) str, e.g. "opticsGroup1"
    voltage_kV: np.ndarray       # (g,) float64
    cs_mm: np.ndarray            # (g,) float64
    amplitude_contrast: np.ndarray  # (g,) float64 fraction
    pixel_size_A: np.ndarray     # (g,) float64, pixel size of the stored images
    box_px: np.ndarray           # (g,) int64, image side length in pixels
    relion_ids: Optional[np.ndarray] = None  # (g,) int, rlnOpticsGroup numbers as read (1-based)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, rows: np.ndarray) -> "Optics":
        rows = np.asarray(rows)
        return Optics(
            names=self.names[rows], voltage_kV=self.voltage_kV[rows], cs_mm=self.cs_mm[rows],
            amplitude_contrast=self.amplitude_contrast[rows],
            pixel_size_A=self.pixel_size_A[rows], box_px=self.box_px[rows],
            relion_ids=None if self.relion_ids is None else self.relion_ids[rows])


@dataclass
class ParticleSet:
    """Aligned particles with CTF, in hetclass's internal conventions (module docstring).

    All per-particle arrays have length ``n``. ``source`` holds whatever the reader wants to
    pass through to writers (e.g. ``{"format": "star", "particles": DataFrame,
    "optics": DataFrame, "version": "3.1"}``); the core never interprets it.
    """

    image_names: np.ndarray        # (n,) str "index@stack" with a 1-based index (RELION style)
    rotations: np.ndarray          # (n, 3, 3) float64, RELION A matrices
    shifts_A: np.ndarray           # (n, 2) float64
    defocus_u_A: np.ndarray        # (n,) float64
    defocus_v_A: np.ndarray        # (n,) float64
    defocus_angle_deg: np.ndarray  # (n,) float64
    optics_group: np.ndarray       # (n,) int64, 0-based row of ``optics``
    optics: Optics
    phase_shift_deg: Optional[np.ndarray] = None   # (n,) or None (= 0)
    ctf_bfactor_A2: Optional[np.ndarray] = None    # (n,) or None (= 0)
    ctf_scale: Optional[np.ndarray] = None         # (n,) or None (= 1)
    random_subset: Optional[np.ndarray] = None     # (n,) int 0/1/2 or None
    micrograph_names: Optional[np.ndarray] = None  # (n,) str or None
    source: Dict[str, Any] = field(default_factory=dict)
    project_dir: str = "."                         # where relative stack paths are resolved

    def __len__(self) -> int:
        return int(self.rotations.shape[0])

    # ----- derived per-particle values -----------------------------------------------
    @property
    def pixel_size_A(self) -> np.ndarray:
        """(n,) pixel size of each particle's stored image."""
        return self.optics.pixel_size_A[self.optics_group]

    @property
    def box_px(self) -> np.ndarray:
        return self.optics.box_px[self.optics_group]

    def phase_shift(self) -> np.ndarray:
        return np.zeros(len(self)) if self.phase_shift_deg is None else self.phase_shift_deg

    def bfactor(self) -> np.ndarray:
        return np.zeros(len(self)) if self.ctf_bfactor_A2 is None else self.ctf_bfactor_A2

    def scale(self) -> np.ndarray:
        return np.ones(len(self)) if self.ctf_scale is None else self.ctf_scale

    def subsets(self) -> np.ndarray:
        return (np.zeros(len(self), dtype=np.int64) if self.random_subset is None
                else np.asarray(self.random_subset, dtype=np.int64))

    def take(self, rows: np.ndarray) -> "ParticleSet":
        """A new set with the particles ``rows`` (integer indices or a boolean mask).

        The passthrough tables in ``source`` are subset too when they are pandas tables
        whose length equals ``len(self)`` (key ``"particles"``).
        """
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)

        def sub(a):
            return None if a is None else np.asarray(a)[rows]

        source = dict(self.source)
        table = source.get("particles")
        if table is not None and hasattr(table, "iloc") and len(table) == len(self):
            source["particles"] = table.iloc[rows].reset_index(drop=True)
        extra = source.get("rows")
        if extra is not None and len(extra) == len(self):
            source["rows"] = np.asarray(extra)[rows]
        return replace(
            self, image_names=sub(self.image_names), rotations=sub(self.rotations),
            shifts_A=sub(self.shifts_A), defocus_u_A=sub(self.defocus_u_A),
            defocus_v_A=sub(self.defocus_v_A), defocus_angle_deg=sub(self.defocus_angle_deg),
            optics_group=sub(self.optics_group), phase_shift_deg=sub(self.phase_shift_deg),
            ctf_bfactor_A2=sub(self.ctf_bfactor_A2), ctf_scale=sub(self.ctf_scale),
            random_subset=sub(self.random_subset), micrograph_names=sub(self.micrograph_names),
            source=source)
