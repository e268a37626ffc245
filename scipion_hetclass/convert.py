"""Scipion particle sets <-> hetclass :class:`~hetclass.particles.ParticleSet`.

The one place where Scipion's alignment convention meets hetclass's (= RELION's).

Convention
----------
hetclass stores, per particle, RELION's Euler matrix ``A`` (volume -> image coordinates) and
the shift ``s_A = (rlnOriginXAngst, rlnOriginYAngst)`` in Angstrom. Scipion stores a projection
alignment as a 4x4 :class:`pwem.objects.Transform` ``T`` with shifts in **pixels** that is the
**inverse** of RELION's: with ``s = (s_A / pixel_size_A, 0)``::

    T = inverse([[A, -s],      =  [[A.T, A.T @ s],
                 [0,  1]])          [0,   1      ]]

so ``A = inverse(T)[:3, :3]`` and ``s = -inverse(T)[:3, 3]``. scipion-em-relion's converter
(``matrixFromGeometry(..., inverseTransform=True)``) builds the same ``T``; the tests check it.
A z shift (never produced by RELION for 2D particles) is dropped.

Images: Scipion locations are ``(index, filename)`` with a 1-based index (0 for a single-image
file) and filenames relative to the project; ``.mrcs``/``.mrc`` stacks and ``:mrcs`` suffixes are
accepted. CTF: Scipion's ``defocusU/V`` (A), ``defocusAngle`` (deg) and ``phaseShift`` (deg) are
RELION's values; B-factor and scale come from the relion plugin's ``_rlnCtfBfactor`` /
``_rlnCtfScalefactor`` attributes when present, half sets from ``_rlnRandomSubset``.

The numeric functions need only numpy; :func:`particles_from_set` and :func:`write_set` import
pwem when called.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from hetclass.errors import InputError
from hetclass.particles import Optics, ParticleSet

#: Largest |A.T A - I| accepted for a rotation taken from a Scipion transform.
ROTATION_TOL = 1e-4

_SUFFIXES = (":mrcs", ":mrc", ":spi", ":img")


# ----- numeric conversion (numpy only) -------------------------------------------------------
def relion_to_scipion_matrices(rotations, shifts_A, pixel_size_A) -> np.ndarray:
    """RELION ``A`` (n, 3, 3) and shifts (n, 2) in A -> Scipion transforms (n, 4, 4) float64.

    ``pixel_size_A``: scalar or (n,). Returns ``[[A.T, A.T @ s], [0, 1]]`` with
    ``s = (shift_x, shift_y, 0) / pixel_size_A`` in pixels (module docstring).
    """
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = rot.shape[0]
    shifts = np.asarray(shifts_A, dtype=np.float64).reshape(n, 2)
    pixel = np.broadcast_to(np.asarray(pixel_size_A, dtype=np.float64), (n,))
    s_px = np.zeros((n, 3))
    s_px[:, :2] = shifts / pixel[:, None]
    rot_t = np.transpose(rot, (0, 2, 1))
    out = np.zeros((n, 4, 4))
    out[:, :3, :3] = rot_t
    out[:, :3, 3] = np.einsum("nij,nj->ni", rot_t, s_px)
    out[:, 3, 3] = 1.0
    return out


def scipion_to_relion(matrices, pixel_size_A, source: Optional[str] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Scipion transforms (n, 4, 4) -> (RELION ``A`` (n, 3, 3), shifts (n, 2) in A).

    Inverse of :func:`relion_to_scipion_matrices`. ``source`` names the set in errors.
    InputError (field ``_transform``) when a matrix is not a proper rotation (mirrored, scaled
    or singular): hetclass needs 3D projection alignments.
    """
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 4, 4)
    n = m.shape[0]
    if n == 0:
        return np.zeros((0, 3, 3)), np.zeros((0, 2))
    rot_t = m[:, :3, :3]
    rot = np.transpose(rot_t, (0, 2, 1))
    err = np.abs(np.einsum("nji,njk->nik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad = np.flatnonzero(~np.isfinite(err) | (err > ROTATION_TOL) | (det < 0))
    if bad.size:
        raise InputError(f"{bad.size} particle transform(s) are not proper rotations (first: "
                         f"row {int(bad[0]) + 1}); hetclass needs 3D projection alignments",
                         file=source, field="_transform", value=m[bad[0]].round(4).tolist())
    pixel = np.broadcast_to(np.asarray(pixel_size_A, dtype=np.float64), (n,))
    s_px = np.einsum("nij,nj->ni", rot, m[:, :3, 3])      # s = A @ t, since t = A.T @ s
    return rot, s_px[:, :2] * pixel[:, None]


def image_name(index: int, filename: str, project_dir: str) -> str:
    """Scipion location -> hetclass ``index@stack`` (1-based, absolute stack path).

    Index 0 (Scipion's NO_INDEX: a single-image file) becomes the plain path, which hetclass
    reads as image 1. A ``:mrcs``-style format suffix is removed.
    """
    fn = str(filename)
    for suffix in _SUFFIXES:
        if fn.endswith(suffix):
            fn = fn[: -len(suffix)]
            break
    if not os.path.isabs(fn):
        fn = os.path.normpath(os.path.join(project_dir, fn))
    index = int(index or 0)
    return fn if index == 0 else f"{index}@{fn}"


def split_image_name(name: str) -> Tuple[int, str]:
    """hetclass ``index@stack`` -> Scipion ``(index, filename)`` (plain path -> index 1)."""
    head, sep, tail = str(name).partition("@")
    return (int(head), tail) if sep else (1, head)


# ----- Scipion objects (pwem imported on use) ------------------------------------------------
def _attr(obj, name):
    """Value of an optional Scipion attribute (``_rlnRandomSubset`` ...) or None."""
    value = getattr(obj, name, None)
    return None if value is None or not hasattr(value, "get") else value.get()


def particles_from_set(part_set, project_dir: Optional[str] = None
                       ) -> Tuple[ParticleSet, np.ndarray]:
    """Read a Scipion ``SetOfParticles`` into ``(ParticleSet, ids)``.

    ``ids`` (n,) int64 are the Scipion object ids in the order of the ParticleSet (ascending),
    the key for writing labels back; disabled particles are left out. ``project_dir`` resolves relative
    image paths (default: the current directory, i.e. the Scipion project while a protocol runs). One optics group
    from the set's acquisition and sampling rate. InputError when the set has no particles, a
    particle lacks a CTF or a 3D alignment.
    """
    project_dir = os.path.abspath(project_dir or os.getcwd())
    source = part_set.getFileName()
    pixel = float(part_set.getSamplingRate() or 0)
    if not pixel > 0:
        raise InputError("the particle set has no sampling rate", file=source,
                         field="_samplingRate", value=part_set.getSamplingRate())
    acq = part_set.getAcquisition()
    dim = part_set.getDim()
    ids, names, mats, ctf_rows, subset, bfac, scale = [], [], [], [], [], [], []
    for p in part_set.iterItems(orderBy="id"):
        if not p.isEnabled():
            continue
        pid = int(p.getObjId())
        ids.append(pid)
        index, filename = p.getLocation()
        names.append(image_name(index, filename, project_dir))
        t = p.getTransform()
        if t is None or t.getMatrix() is None:
            raise InputError("particle has no 3D alignment", file=source, field="_transform",
                             value=pid)
        mats.append(np.asarray(t.getMatrix(), dtype=np.float64))
        ctf = p.getCTF()
        if ctf is None or ctf.getDefocusU() is None:
            raise InputError("particle has no CTF", file=source, field="_ctfModel", value=pid)
        du = ctf.getDefocusU()
        dv = ctf.getDefocusV()
        ctf_rows.append((du, du if dv is None else dv, ctf.getDefocusAngle() or 0.0,
                         ctf.getPhaseShift() or 0.0))
        subset.append(_attr(p, "_rlnRandomSubset"))
        bfac.append(_attr(p, "_rlnCtfBfactor"))
        scale.append(_attr(p, "_rlnCtfScalefactor"))
    n = len(ids)
    if n == 0:
        raise InputError("the particle set is empty", file=source, field="size", value=0)
    rotations, shifts_A = scipion_to_relion(np.stack(mats), pixel, source=source)
    ctf = np.asarray(ctf_rows, dtype=np.float64)

    def optional(values, dtype):
        return None if any(v is None for v in values) else np.asarray(values, dtype=dtype)

    optics = Optics(
        names=np.array(["opticsGroup1"]), voltage_kV=np.array([float(acq.getVoltage() or 300.0)]),
        cs_mm=np.array([float(acq.getSphericalAberration() or 0.0)]),
        amplitude_contrast=np.array([float(acq.getAmplitudeContrast() or 0.1)]),
        pixel_size_A=np.array([pixel]), box_px=np.array([int(dim[0]) if dim else 0]))
    phase = ctf[:, 3]
    particles = ParticleSet(
        image_names=np.asarray(names, dtype=str), rotations=rotations, shifts_A=shifts_A,
        defocus_u_A=ctf[:, 0], defocus_v_A=ctf[:, 1], defocus_angle_deg=ctf[:, 2],
        optics_group=np.zeros(n, dtype=np.int64), optics=optics,
        phase_shift_deg=phase if np.any(phase != 0) else None,
        ctf_bfactor_A2=optional(bfac, np.float64), ctf_scale=optional(scale, np.float64),
        random_subset=optional(subset, np.int64),
        source={"format": "scipion", "path": source}, project_dir=project_dir)
    return particles, np.asarray(ids, dtype=np.int64)


def fill_set(part_set, particles: ParticleSet, ids: Optional[Sequence[int]] = None) -> None:
    """Append ``particles`` to an empty Scipion ``SetOfParticles`` (inverse of
    :func:`particles_from_set`).

    Sets the acquisition, sampling rate, dimensions, CTF and projection alignment; images keep
    their stack files (absolute paths; ``particles.project_dir`` resolves relative ones).
    ``ids``: Scipion object ids (default 1..n; any distinct positive integers). A Scipion set
    has one sampling rate, box and acquisition: InputError when the optics groups differ in them.
    """
    from pwem.objects import Acquisition, CTFModel, Particle, Transform

    n = len(particles)
    o = particles.optics
    for name, values in (("pixel_size_A", o.pixel_size_A), ("box_px", o.box_px),
                         ("voltage_kV", o.voltage_kV), ("cs_mm", o.cs_mm),
                         ("amplitude_contrast", o.amplitude_contrast)):
        if np.unique(np.asarray(values)[np.unique(particles.optics_group)]).size > 1:
            raise InputError("a Scipion set holds one optics setting; the optics groups differ",
                             field=name, value=np.asarray(values).tolist())
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,) or np.unique(ids).size != n or (ids < 1).any():
        raise InputError("particle ids must be n distinct positive integers", field="ids",
                         value=ids[:5].tolist())
    g = int(particles.optics_group[0]) if n else 0
    pixel = float(o.pixel_size_A[g])
    acq = Acquisition()
    acq.setVoltage(float(o.voltage_kV[g]))
    acq.setSphericalAberration(float(o.cs_mm[g]))
    acq.setAmplitudeContrast(float(o.amplitude_contrast[g]))
    acq.setMagnification(10000.0)
    part_set.setAcquisition(acq)
    part_set.setSamplingRate(pixel)
    part_set.setHasCTF(True)
    part_set.setAlignmentProj()
    box = int(o.box_px[g])
    if box > 0:
        part_set.setDim((box, box, 1))
    mats = relion_to_scipion_matrices(particles.rotations, particles.shifts_A, pixel)
    phase = particles.phase_shift()
    subsets = particles.random_subset
    project_dir = os.path.abspath(particles.project_dir)
    for i in range(n):
        index, stack = split_image_name(particles.image_names[i])
        if not os.path.isabs(stack):
            stack = os.path.normpath(os.path.join(project_dir, stack))
        p = Particle()
        p.setObjId(int(ids[i]))
        p.setLocation(index, stack)
        p.setSamplingRate(pixel)
        p.setAcquisition(acq)
        p.setCTF(CTFModel(defocusU=float(particles.defocus_u_A[i]),
                          defocusV=float(particles.defocus_v_A[i]),
                          defocusAngle=float(particles.defocus_angle_deg[i]),
                          phaseShift=float(phase[i])))
        p.setTransform(Transform(mats[i]))
        if subsets is not None:
            from pyworkflow.object import Integer
            p._rlnRandomSubset = Integer(int(subsets[i]))
        part_set.append(p)


def write_set(sqlite_path, particles: ParticleSet, ids: Optional[Sequence[int]] = None) -> str:
    """Write ``particles`` as a Scipion ``SetOfParticles`` sqlite file (e.g. for
    ``ProtImportParticles``, import from Scipion); returns the path. Written under a
    temporary name and renamed, so an existing file is replaced whole or not at all."""
    from pwem.objects import SetOfParticles

    sqlite_path = os.path.abspath(os.fspath(sqlite_path))
    folder, base = os.path.split(sqlite_path)
    tmp = os.path.join(folder, f".{base}.tmp{os.getpid()}.sqlite")
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        part_set = SetOfParticles(filename=tmp)
        fill_set(part_set, particles, ids)
        part_set.write()
        part_set.close()
        os.replace(tmp, sqlite_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return sqlite_path
