"""RELION STAR particle files (3.0 and 3.1+) <-> :class:`~hetclass.particles.ParticleSet`.

Parsing and formatting of STAR text are :mod:`hetclass.io.star_text`'s (quoted values,
duplicated columns, encodings); this module converts conventions once:

* RELION 3.1+: ``data_optics`` + ``data_particles``; origins in Angstrom
  (``rlnOriginXAngst/YAngst``); pixel size ``rlnImagePixelSize`` per optics group.
* RELION 3.0: one table; origins in pixels (``rlnOriginX/Y``); voltage, Cs, amplitude contrast and
  pixel size repeated per particle (``rlnImagePixelSize`` or
  ``rlnDetectorPixelSize`` [um] * 1e4 / ``rlnMagnification``). Optics groups are made from the
  unique (voltage, Cs, Q0, pixel size, box) combinations, numbered in order of first appearance.
* Euler angles go through :func:`hetclass.geometry.euler_to_matrix` / ``matrix_to_euler``.
* Without ``rlnImageSize`` the box is read from the header of the group's first stack when
  that stack can be opened (see :func:`hetclass.io.images.fill_missing_box`); otherwise it stays
  0 and :class:`~hetclass.io.images.ImageSource` fills or rejects it when the images are read.

Writers keep every input column and table as read when the particles came from a STAR file,
add/overwrite the requested extra columns, and prefix every block with ``# version 30001`` as
RELION 3.1 does. All output is atomic. :func:`check_writable` checks at load time that every
text value can be written back (a ``.cs`` path with a line break cannot).
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import pandas as pd

from ..errors import InputError
from ..geometry import euler_to_matrix, matrix_to_euler
from ..particles import Optics, ParticleSet
from . import StrPath
from .atomic import atomic_write_text
from .star_text import UnwritableValue, check_text_values, format_star, read_star_file

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
STRING_COLUMNS = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroupName", "rlnGroupName"]
# per-particle optics labels of the 3.0 layout (moved to data_optics in 3.1)
OPTICS_30_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                     "rlnMagnification", "rlnDetectorPixelSize", "rlnImagePixelSize",
                     "rlnImageSize", "rlnBeamTiltX", "rlnBeamTiltY")
VERSION_LINE = "# version 30001"
MAGNIFICATION_30 = 10000.0   # written to 3.0 files: rlnDetectorPixelSize [um] == A/px


# ----------------------------------------------------------------------------- reading
def _read_blocks(path: str) -> Dict[str, object]:
    if not os.path.exists(path):
        raise InputError("particle file not found", file=path)
    if not os.path.isfile(path):
        raise InputError("particle file is not a regular file", file=path)
    if os.path.getsize(path) == 0:
        raise InputError("particle file is empty", file=path, field="file size", value=0)
    blocks = read_star_file(path, STRING_COLUMNS)
    if not blocks:
        raise InputError("not a STAR file: no data_ block found", file=path)
    return blocks


def _pick_particle_table(blocks, path: str) -> Tuple[pd.DataFrame, Optional[pd.DataFrame], str]:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    optics = tables.get("optics")
    if "particles" in tables:
        name = "particles"
    else:
        with_names = [k for k, v in tables.items() if "rlnImageName" in v.columns]
        others = [k for k in tables if k != "optics"]
        if with_names:
            name = with_names[0]
        elif len(others) == 1:
            name = others[0]
        else:
            raise InputError("no particle table (data_particles or a table with rlnImageName)",
                             file=path, field="data_particles")
    table = tables[name]
    block = f"data_{name}"
    if len(table) == 0:
        raise InputError("particle table has no rows", file=path, field=block, value=0)
    if "rlnImageName" not in table.columns:
        raise InputError(f"{block} has no particle image names", file=path,
                         field="rlnImageName")
    return table.reset_index(drop=True), optics, block


def _numeric(df: pd.DataFrame, name: str, path: str, block: str) -> np.ndarray:
    """Column ``name`` as float64; InputError naming the first non-numeric/NaN/Inf value."""
    raw = df[name]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"invalid number in {block} row {i + 1} ({bad.size} bad rows)",
                         file=path, field=name, value=str(raw.iloc[i]))
    return values


def _angle(df: pd.DataFrame, name: str, path: str, block: str) -> np.ndarray:
    """Angle column in degrees; InputError for a non-number or an absurd magnitude."""
    from ..validate import MAX_ABS_ANGLE_DEG
    values = _numeric(df, name, path, block)
    bad = np.flatnonzero(np.abs(values) > MAX_ABS_ANGLE_DEG)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"angle beyond +-{MAX_ABS_ANGLE_DEG:g} degrees ({block} row {i + 1}, "
                         f"{bad.size} bad rows)", file=path, field=name, value=float(values[i]))
    return values


def _require(df: pd.DataFrame, names, path: str, block: str, why: str) -> None:
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise InputError(f"{block} lacks {', '.join(missing)}: {why}", file=path,
                         field=missing[0])


def _positive(values: np.ndarray, name: str, path: str, block: str, allow_zero=False):
    bad = np.flatnonzero(values < 0 if allow_zero else values <= 0)
    if bad.size:
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'} "
                         f"({block} row {int(bad[0]) + 1})", file=path, field=name,
                         value=float(values[bad[0]]))
    return values


def _pixel_size_A(df: pd.DataFrame, path: str, block: str) -> np.ndarray:
    if "rlnImagePixelSize" in df.columns:
        return _positive(_numeric(df, "rlnImagePixelSize", path, block),
                         "rlnImagePixelSize", path, block)
    if "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        det_um = _positive(_numeric(df, "rlnDetectorPixelSize", path, block),
                           "rlnDetectorPixelSize", path, block)
        mag = _positive(_numeric(df, "rlnMagnification", path, block),
                        "rlnMagnification", path, block)
        return det_um * 1e4 / mag
    raise InputError(f"{block} gives no pixel size (rlnImagePixelSize, or "
                     f"rlnDetectorPixelSize with rlnMagnification)", file=path,
                     field="rlnImagePixelSize")


def _acquisition(df: pd.DataFrame, path: str, block: str):
    """(voltage_kV, cs_mm, amplitude_contrast, pixel_size_A, box_px) columns of ``df``."""
    _require(df, ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"), path, block,
             "the acquisition parameters (voltage, Cs, amplitude contrast) are needed")
    voltage = _positive(_numeric(df, "rlnVoltage", path, block), "rlnVoltage", path, block)
    cs = _numeric(df, "rlnSphericalAberration", path, block)
    q0 = _numeric(df, "rlnAmplitudeContrast", path, block)
    bad = np.flatnonzero((q0 < 0) | (q0 >= 1))
    if bad.size:
        raise InputError(f"amplitude contrast must be a fraction in [0, 1) ({block} row "
                         f"{int(bad[0]) + 1})", file=path, field="rlnAmplitudeContrast",
                         value=float(q0[bad[0]]))
    pixel = _pixel_size_A(df, path, block)
    if "rlnImageSize" in df.columns:
        box = _positive(_numeric(df, "rlnImageSize", path, block), "rlnImageSize", path, block)
        box = np.rint(box).astype(np.int64)
    else:
        box = np.zeros(len(df), dtype=np.int64)
    return voltage, cs, q0, pixel, box


def _optics_31(optics_df: pd.DataFrame, particles: pd.DataFrame, path: str):
    block = "data_optics"
    if len(optics_df) == 0:
        raise InputError("data_optics has no rows", file=path, field=block, value=0)
    _require(optics_df, ("rlnOpticsGroup",), path, block, "optics groups must be numbered")
    voltage, cs, q0, pixel, box = _acquisition(optics_df, path, block)
    ids = np.rint(_numeric(optics_df, "rlnOpticsGroup", path, block)).astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError("optics group defined twice in data_optics", file=path,
                         field="rlnOpticsGroup", value=int(uniq[counts > 1][0]))
    if "rlnOpticsGroupName" in optics_df.columns:
        names = optics_df["rlnOpticsGroupName"].astype(str).to_numpy(dtype=object).astype(str)
    else:
        names = np.array([f"opticsGroup{i}" for i in ids])
    optics = Optics(names=names, voltage_kV=voltage, cs_mm=cs, amplitude_contrast=q0,
                    pixel_size_A=pixel, box_px=box, relion_ids=ids)
    if "rlnOpticsGroup" in particles.columns:
        pid = np.rint(_numeric(particles, "rlnOpticsGroup", path, "data_particles"))
        pid = pid.astype(np.int64)
    elif len(ids) == 1:
        pid = np.full(len(particles), ids[0], dtype=np.int64)
    else:
        raise InputError("data_particles lacks rlnOpticsGroup but data_optics has "
                         f"{len(ids)} groups", file=path, field="rlnOpticsGroup")
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids[order], pid), 0, len(ids) - 1)
    found = ids[order][pos] == pid
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise InputError(f"optics group used by data_particles row {i + 1} is absent from "
                         "data_optics", file=path, field="rlnOpticsGroup", value=int(pid[i]))
    return optics, order[pos].astype(np.int64)


def _optics_30(df: pd.DataFrame, path: str, block: str):
    voltage, cs, q0, pixel, box = _acquisition(df, path, block)
    keys = np.stack([voltage, cs, q0, pixel, box.astype(np.float64)], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    order = np.argsort(first)                 # groups numbered by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse].astype(np.int64)
    rows = first[order]
    ids = np.arange(1, rows.size + 1, dtype=np.int64)
    optics = Optics(names=np.array([f"opticsGroup{i}" for i in ids]), voltage_kV=voltage[rows],
                    cs_mm=cs[rows], amplitude_contrast=q0[rows], pixel_size_A=pixel[rows],
                    box_px=box[rows], relion_ids=ids)
    return optics, group


def _optional(df, name, path, block, default=None):
    return _numeric(df, name, path, block) if name in df.columns else default


def read_star(path: StrPath, project_dir: Optional[StrPath] = None) -> ParticleSet:
    """Read a RELION 3.0 or 3.1+ particle STAR file into a :class:`ParticleSet`.

    ``project_dir`` (default: the current directory) is where relative ``index@stack`` paths
    are resolved, as RELION resolves them from its project directory. Stored as an absolute
    path. ``source`` holds ``{"format": "star", "version": "3.1"|"3.0", "particles": DataFrame
    (all columns, row order kept), "optics": DataFrame or None, "path": str}``.

    Raises InputError (naming file, field, value) for a missing/empty/unreadable file, no
    particle table, missing image names, poses, CTF or acquisition parameters, bad numbers,
    non-positive pixel size, or an optics group absent from ``data_optics``.
    """
    path = os.fspath(path)
    blocks = _read_blocks(path)
    table, optics_df, block = _pick_particle_table(blocks, path)
    version = "3.1" if optics_df is not None else "3.0"
    _require(table, POSE_COLUMNS, path, block,
             "particles need known orientations; run a 3D refinement (aligned particles, "
             "e.g. Refine3D) first")
    _require(table, CTF_COLUMNS, path, block,
             "particles need CTF parameters; run CTF estimation (e.g. CtfFind) first")

    names = table["rlnImageName"].astype(str).to_numpy(dtype=object).astype(str)
    rot, tilt, psi = (_angle(table, c, path, block) for c in POSE_COLUMNS)
    du, dv, dang = (_numeric(table, c, path, block) for c in CTF_COLUMNS)
    if version == "3.1":
        optics, group = _optics_31(optics_df, table, path)
    else:
        optics, group = _optics_30(table, path, block)
    pixel = optics.pixel_size_A[group]
    n = len(table)
    if "rlnOriginXAngst" in table.columns or "rlnOriginYAngst" in table.columns:
        sx = _optional(table, "rlnOriginXAngst", path, block, np.zeros(n))
        sy = _optional(table, "rlnOriginYAngst", path, block, np.zeros(n))
    else:  # pixel origins (3.0 layout)
        sx = _optional(table, "rlnOriginX", path, block, np.zeros(n)) * pixel
        sy = _optional(table, "rlnOriginY", path, block, np.zeros(n)) * pixel
    subset = _optional(table, "rlnRandomSubset", path, block)
    if subset is not None:
        subset = np.rint(subset).astype(np.int64)
        bad = np.flatnonzero((subset < 0) | (subset > 2))
        if bad.size:
            raise InputError(f"random subset must be 1 or 2 ({block} row {int(bad[0]) + 1})",
                             file=path, field="rlnRandomSubset", value=int(subset[bad[0]]))
    micrographs = None
    if "rlnMicrographName" in table.columns:
        micrographs = table["rlnMicrographName"].astype(str).to_numpy(dtype=object).astype(str)

    particles = ParticleSet(
        image_names=names, rotations=euler_to_matrix(rot, tilt, psi),
        shifts_A=np.stack([sx, sy], axis=1), defocus_u_A=du, defocus_v_A=dv,
        defocus_angle_deg=dang, optics_group=group, optics=optics,
        phase_shift_deg=_optional(table, "rlnPhaseShift", path, block),
        ctf_bfactor_A2=_optional(table, "rlnCtfBfactor", path, block),
        ctf_scale=_optional(table, "rlnCtfScalefactor", path, block),
        random_subset=subset, micrograph_names=micrographs,
        source={"format": "star", "version": version, "particles": table,
                "optics": None if optics_df is None else optics_df.reset_index(drop=True),
                "path": path},
        project_dir=os.path.abspath(os.getcwd() if project_dir is None else project_dir))
    if (optics.box_px == 0).any():
        from .images import fill_missing_box  # lazy: images imports this package's modules
        particles = fill_missing_box(particles)
    return particles


# ----------------------------------------------------------------------------- writing
def _relion_ids(optics: Optics) -> np.ndarray:
    if optics.relion_ids is not None:
        return np.asarray(optics.relion_ids, dtype=np.int64)
    return np.arange(1, len(optics) + 1, dtype=np.int64)


def _optics_table(optics: Optics) -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroup": _relion_ids(optics),
        "rlnOpticsGroupName": np.asarray(optics.names).astype(str),
        "rlnAmplitudeContrast": np.asarray(optics.amplitude_contrast, dtype=np.float64),
        "rlnSphericalAberration": np.asarray(optics.cs_mm, dtype=np.float64),
        "rlnVoltage": np.asarray(optics.voltage_kV, dtype=np.float64),
        "rlnImagePixelSize": np.asarray(optics.pixel_size_A, dtype=np.float64),
        "rlnImageSize": np.asarray(optics.box_px, dtype=np.int64),
        "rlnImageDimensionality": np.full(len(optics), 2, dtype=np.int64),
    })


def _core_columns(p: ParticleSet) -> Dict[str, np.ndarray]:
    rot, tilt, psi = matrix_to_euler(p.rotations)
    cols = {"rlnImageName": np.asarray(p.image_names).astype(str)}
    if p.micrograph_names is not None:
        cols["rlnMicrographName"] = np.asarray(p.micrograph_names).astype(str)
    cols.update({
        "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnOriginXAngst": np.asarray(p.shifts_A[:, 0], dtype=np.float64),
        "rlnOriginYAngst": np.asarray(p.shifts_A[:, 1], dtype=np.float64),
        "rlnDefocusU": p.defocus_u_A, "rlnDefocusV": p.defocus_v_A,
        "rlnDefocusAngle": p.defocus_angle_deg,
        "rlnOpticsGroup": _relion_ids(p.optics)[np.asarray(p.optics_group)],
    })
    for name, values in (("rlnPhaseShift", p.phase_shift_deg),
                         ("rlnCtfBfactor", p.ctf_bfactor_A2),
                         ("rlnCtfScalefactor", p.ctf_scale),
                         ("rlnRandomSubset", p.random_subset)):
        if values is not None:
            cols[name] = np.asarray(values)
    return cols


def _to_30(particles_df: pd.DataFrame, p: ParticleSet) -> pd.DataFrame:
    """Single-table 3.0 layout: pixel origins, optics repeated per particle."""
    g = np.asarray(p.optics_group)
    pixel = p.optics.pixel_size_A[g]
    df = particles_df.drop(columns=[c for c in ("rlnOpticsGroup", "rlnOriginXAngst",
                                                "rlnOriginYAngst", "rlnImagePixelSize",
                                                "rlnImageSize") if c in particles_df.columns])
    df["rlnOriginX"] = np.asarray(p.shifts_A[:, 0]) / pixel
    df["rlnOriginY"] = np.asarray(p.shifts_A[:, 1]) / pixel
    df["rlnVoltage"] = p.optics.voltage_kV[g]
    df["rlnSphericalAberration"] = p.optics.cs_mm[g]
    df["rlnAmplitudeContrast"] = p.optics.amplitude_contrast[g]
    df["rlnMagnification"] = MAGNIFICATION_30
    df["rlnDetectorPixelSize"] = pixel * MAGNIFICATION_30 / 1e4
    return df


def particles_to_tables(particles: ParticleSet, extra_columns: Optional[Mapping] = None,
                        version: str = "3.1") -> Tuple[Optional[pd.DataFrame], pd.DataFrame]:
    """``(optics_df, particles_df)`` ready to write; ``optics_df`` is None for ``version="3.0"``.

    Particles read from a STAR file keep every input column and table as read (values and row
    order); converting between 3.0 and 3.1 replaces only the columns whose layout differs
    (origins, optics labels; 3.0 beam tilt is not carried to 3.1). Other particles (e.g. from
    CryoSPARC) get columns built from the internal representation. ``extra_columns`` maps a
    RELION label (``"rlnClassNumber"`` or ``"_rlnClassNumber"``) to (n,) values, added or
    overwritten.
    """
    if version not in ("3.1", "3.0"):
        raise ValueError(f"version must be '3.1' or '3.0', got {version!r}")
    n = len(particles)
    src = particles.source or {}
    table = src.get("particles")
    from_star = (src.get("format") == "star" and isinstance(table, pd.DataFrame)
                 and len(table) == n)
    if from_star:
        assert table is not None
        df = table.reset_index(drop=True).copy()
        src_version = src.get("version", "3.1")
        src_optics = src.get("optics")
        if src_version == "3.0" and version == "3.1":
            df = df.drop(columns=[c for c in OPTICS_30_COLUMNS + ("rlnOriginX", "rlnOriginY")
                                  if c in df.columns])
            core = _core_columns(particles)
            for c in ("rlnOpticsGroup", "rlnOriginXAngst", "rlnOriginYAngst"):
                df[c] = core[c]
        if version == "3.1":
            optics_df = (src_optics.reset_index(drop=True).copy()
                         if src_version == "3.1" and isinstance(src_optics, pd.DataFrame)
                         else _optics_table(particles.optics))
            full = _optics_table(particles.optics)
            for c in ("rlnImageSize", "rlnImageDimensionality"):  # RELION 3.1 needs both
                if c not in optics_df.columns and len(full) == len(optics_df) \
                        and (particles.optics.box_px > 0).all():
                    optics_df[c] = full[c].to_numpy()
        else:
            optics_df = None
            if src_version == "3.1":
                df = _to_30(df, particles)
    else:
        df = pd.DataFrame(_core_columns(particles))
        optics_df = _optics_table(particles.optics) if version == "3.1" else None
        if version == "3.0":
            df = _to_30(df, particles)
    for name, values in (extra_columns or {}).items():
        label = str(name).lstrip("_")
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"extra column {label}: expected shape ({n},), got {values.shape}")
        df[label] = values.astype(np.int64) if values.dtype == bool else values
    return optics_df, df


def write_star_blocks(path: StrPath, blocks: Mapping[str, Union[pd.DataFrame, Mapping]],
                      version_header: bool = True) -> None:
    """Write STAR blocks atomically: DataFrames as loops, dicts as key-value blocks.

    Block names may be given with or without ``data_``. With ``version_header`` every block is
    preceded by ``# version 30001`` (RELION 3.1 style); without it (3.0 files) no version line.
    """
    try:
        text = format_star(blocks, version_header)
    except UnwritableValue as exc:   # check_writable at load time keeps this from happening
        raise ValueError(f"{path}: a value cannot be written to a STAR file: {exc}") from None
    atomic_write_text(path, text)


def check_writable(particles: ParticleSet) -> None:
    """InputError (naming file, column and value) unless every text value that a STAR file
    written from ``particles`` would carry can be written: image and micrograph names,
    optics group names and the text columns of the STAR tables read."""
    src = particles.source or {}
    path = src.get("path")
    cs = src.get("format") == "cs"
    check_text_values(np.asarray(particles.image_names).astype(str), path,
                      "blob/path" if cs else "rlnImageName", "particle")
    if particles.micrograph_names is not None:
        check_text_values(np.asarray(particles.micrograph_names).astype(str), path,
                          "location/micrograph_path" if cs else "rlnMicrographName", "particle")
    check_text_values(np.asarray(particles.optics.names).astype(str), path,
                      "rlnOpticsGroupName", "optics group")
    for key in ("particles", "optics"):
        table = src.get(key) if src.get("format") == "star" else None
        if isinstance(table, pd.DataFrame):
            for c in table.columns:
                if table[c].dtype.kind == "O":   # text (object or pandas string)
                    check_text_values(table[c].tolist(), path, c)


def write_particles_star(path: StrPath, particles: ParticleSet, extra_columns: Optional[Mapping] = None,
                         version: str = "3.1") -> None:
    """Write ``particles`` as a RELION particle STAR file (3.1: optics + particles; 3.0: one
    table), atomically. See :func:`particles_to_tables` for the columns."""
    optics_df, df = particles_to_tables(particles, extra_columns, version)
    if version == "3.1":
        write_star_blocks(path, {"optics": optics_df, "particles": df}, version_header=True)
    else:
        write_star_blocks(path, {"": df}, version_header=False)
