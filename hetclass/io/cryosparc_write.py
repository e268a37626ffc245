"""Write results back in CryoSPARC's formats: ``.cs`` tables and ``.csg`` group files.

Particles read from a ``.cs`` (:func:`hetclass.io.cryosparc_read.read_cs`) keep their table in
``source["dataset"]``; every row written here is that row, bit for bit, with only
``alignments3D/class`` (u4, 0-based) and ``alignments3D/class_posterior`` (f4) set. When the
input had only multi-class alignments (``alignments_class_N`` / ``alignments3D_multi``),
``alignments3D/{pose,shift,psize_A,split}`` are added from the class block whose pose was used.

Particles read from a STAR file can go back only when they carry CryoSPARC uids (the
``rlnHetclassUid`` column that ``hetclass convert`` writes): their table is then built from
the internal representation (rotation vector ``= rotvec(A.T)``, shifts in pixels of the
stored images). Without uids a CryoSPARC job could not relate the rows to its particles, so
:class:`InputError` is raised.

Output tables are NumPy ``.cs`` files (``np.save``; readable by ``np.load`` and by
cryosparc-tools ``Dataset.load``), written atomically. A ``.csg`` file next to each lists the
slots with ``metafile: '>name.cs'`` (relative to the ``.csg``) so that CryoSPARC's
"Import Result Group" job can take it.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import replace
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..geometry import matrix_to_rotvec
from ..particles import ParticleSet
from .atomic import atomic_save_npy, atomic_write_text

UID_LABEL = "rlnHetclassUid"        # STAR column carrying CryoSPARC uids (RELION keeps it)
CSG_VERSION = "v4.4.1"              # format version written by CryoSPARC's own exports
_MULTI_SLOT = re.compile(r"^alignments_class_\d+$")


# ----------------------------------------------------------------------------- uids
def uids_of(particles: ParticleSet) -> Optional[np.ndarray]:
    """(n,) uint64 CryoSPARC uids of the particles, or None when they have none."""
    src = particles.source or {}
    if src.get("format") == "cs" and src.get("dataset") is not None:
        return np.asarray(src["dataset"]["uid"])[np.asarray(src["rows"])]
    table = src.get("particles")
    if table is None or not hasattr(table, "columns") or UID_LABEL not in table.columns \
            or len(table) != len(particles):
        return None
    return _parse_uids(table[UID_LABEL], src.get("path"))


def _parse_uids(column, path) -> np.ndarray:
    values = np.asarray(column)
    if values.dtype.kind in "iu":
        if values.dtype.kind == "i" and np.any(values < 0):
            raise InputError("uids must be non-negative integers", file=path, field=UID_LABEL,
                             value=int(values[values < 0][0]))
        return values.astype(np.uint64)
    out = np.empty(len(values), dtype=np.uint64)
    for i, v in enumerate(values):
        try:
            text = str(v).strip()
            if not text.isdigit():
                raise ValueError(text)
            out[i] = int(text)
        except (ValueError, OverflowError):
            raise InputError("not a CryoSPARC uid (an unsigned 64-bit integer)", file=path,
                             field=UID_LABEL, value=str(v)) from None
    return out


# ----------------------------------------------------------------------------- tables
def _set_fields(table: np.ndarray, values: Mapping[str, Tuple[str, np.ndarray]]) -> np.ndarray:
    """Copy of ``table`` with fields set to ``values`` (name -> (dtype, array)).

    Existing fields keep their position (their dtype is replaced only if it differs); new
    fields are appended. Every other field is copied unchanged.
    """
    descr, seen = [], set()
    for d in table.dtype.descr:
        name = d[0]
        if name in values:
            dtype = np.dtype(values[name][0])
            shape = np.asarray(values[name][1]).shape[1:]
            descr.append((name, dtype.str, shape) if shape else (name, dtype.str))
            seen.add(name)
        else:
            descr.append(d)
    for name, (dtype, arr) in values.items():
        if name not in seen:
            shape = np.asarray(arr).shape[1:]
            descr.append((name, np.dtype(dtype).str, shape) if shape
                         else (name, np.dtype(dtype).str))
    out = np.empty(len(table), dtype=np.dtype(descr))
    for name in table.dtype.names:
        if name not in values:
            out[name] = table[name]
    for name, (dtype, arr) in values.items():
        out[name] = np.asarray(arr).astype(dtype)
    return out


def table_from_particles(particles: ParticleSet, uids: np.ndarray) -> np.ndarray:
    """A CryoSPARC particle table built from the internal representation.

    Used for particles without a ``.cs`` table (e.g. read from a STAR file with uids).
    ``blob/path`` is the stack path as named in ``image_names``; shifts are written in pixels
    of the stored images with ``alignments3D/psize_A = blob/psize_A``.
    """
    n = len(particles)
    names = np.asarray(particles.image_names).astype(str)
    parts = np.char.partition(names, "@")
    idx = parts[:, 0].astype(np.int64) - 1
    paths = np.char.encode(parts[:, 2], "utf-8")
    pixel = particles.pixel_size_A
    box = particles.box_px
    ids = (np.asarray(particles.optics.relion_ids) if particles.optics.relion_ids is not None
           else np.arange(1, len(particles.optics) + 1))[particles.optics_group] - 1
    subset = particles.subsets()
    fields = {
        "uid": ("<u8", uids),
        "blob/path": (f"S{max(1, paths.dtype.itemsize)}", paths),
        "blob/idx": ("<u4", idx),
        "blob/shape": ("<u4", np.stack([box, box], axis=1)),
        "blob/psize_A": ("<f4", pixel),
        "ctf/type": ("S9", np.full(n, b"imported")),
        "ctf/exp_group_id": ("<u4", np.maximum(ids, 0)),
        "ctf/accel_kv": ("<f4", particles.optics.voltage_kV[particles.optics_group]),
        "ctf/cs_mm": ("<f4", particles.optics.cs_mm[particles.optics_group]),
        "ctf/amp_contrast": ("<f4", particles.optics.amplitude_contrast[particles.optics_group]),
        "ctf/df1_A": ("<f4", particles.defocus_u_A),
        "ctf/df2_A": ("<f4", particles.defocus_v_A),
        "ctf/df_angle_rad": ("<f4", np.deg2rad(particles.defocus_angle_deg)),
        "ctf/phase_shift_rad": ("<f4", np.deg2rad(particles.phase_shift())),
        "ctf/scale": ("<f4", particles.scale()),
        "ctf/bfactor": ("<f4", particles.bfactor()),
        "alignments3D/split": ("<u4", np.where(subset == 2, 1, 0)),
        "alignments3D/shift": ("<f4", particles.shifts_A / pixel[:, None]),
        "alignments3D/pose": ("<f4", matrix_to_rotvec(
            np.asarray(particles.rotations).transpose(0, 2, 1))),
        "alignments3D/psize_A": ("<f4", pixel),
    }
    if particles.micrograph_names is not None:
        mics = np.char.encode(np.asarray(particles.micrograph_names).astype(str), "utf-8")
        fields["location/micrograph_path"] = (f"S{max(1, mics.dtype.itemsize)}", mics)
    empty = np.empty(n, dtype=[("uid", "<u8")])
    empty["uid"] = uids
    return _set_fields(empty, fields)


def _base_table(particles: ParticleSet) -> np.ndarray:
    src = particles.source or {}
    if src.get("format") == "cs" and src.get("dataset") is not None:
        table = np.asarray(src["dataset"])[np.asarray(src["rows"])]
        if src.get("layout") != "alignments3D" and src.get("block") is not None:
            table = _add_chosen_alignments(table, src, np.asarray(src["rows"]))
        return table
    uids = uids_of(particles)
    if uids is None:
        raise InputError(
            f"these particles have no CryoSPARC uids, so a .cs file could not be related to "
            f"CryoSPARC's particles; only particles read from a .cs (or a STAR written by "
            f"'hetclass convert' from a .cs, which has a {UID_LABEL} column) can be written "
            f"as .cs; import a STAR into CryoSPARC with 'Import Particle Stack' instead",
            file=src.get("path"), field=UID_LABEL)
    return table_from_particles(particles, uids)


def _add_chosen_alignments(table: np.ndarray, src: Mapping, rows: np.ndarray) -> np.ndarray:
    """alignments3D/{pose,shift,psize_A,split} from the class block whose pose was used."""
    ds, block = src["dataset"], np.asarray(src["block"])[rows]
    n, idx = len(table), np.arange(len(table))
    out = {}
    for field, dtype in (("pose", "<f4"), ("shift", "<f4"), ("psize_A", "<f4"),
                         ("split", "<u4")):
        if src["layout"] == "alignments3D_multi":
            name = f"alignments3D_multi/{field}"
            if name not in ds.dtype.names:
                continue
            arr = np.asarray(ds[name])[rows].reshape(n, -1, *{"pose": (3,), "shift": (2,)}
                                                        .get(field, ()))
            arr = arr[idx, block] if arr.shape[1] > 1 else arr[:, 0]
        else:
            blocks = sorted({int(m.group(1)) for m in
                             map(re.compile(r"^alignments_class_(\d+)/pose$").match,
                                 ds.dtype.names) if m})
            names = [f"alignments_class_{b}/{field}" for b in blocks]
            if any(nm not in ds.dtype.names for nm in names):
                continue
            arr = np.stack([np.asarray(ds[nm])[rows] for nm in names], axis=1)[idx, block]
        out[f"alignments3D/{field}"] = (dtype, arr)
    return _set_fields(table, out)


def cs_table(particles: ParticleSet, labels: Optional[np.ndarray] = None,
             posteriors: Optional[np.ndarray] = None, rows=None) -> np.ndarray:
    """The structured array :func:`write_cs` writes (see there for the arguments)."""
    table = _base_table(particles)
    n = len(particles)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape != (n,) or np.any(labels < 0):
            raise ValueError(f"labels must be (n,) = ({n},) non-negative class indices")
        if posteriors is None:
            post = np.ones(n)
        else:
            posteriors = np.asarray(posteriors, dtype=np.float64)
            if posteriors.ndim == 2 and posteriors.shape[0] == n:
                post = posteriors[np.arange(n), labels]
            elif posteriors.shape == (n,):
                post = posteriors
            else:
                raise ValueError(f"posteriors must be (n, K) or (n,), got {posteriors.shape}")
        table = _set_fields(table, {"alignments3D/class": ("<u4", labels),
                                    "alignments3D/class_posterior": ("<f4", post)})
    if rows is not None:
        table = table[np.asarray(rows)]
    return table


def write_cs(path, particles: ParticleSet, labels: Optional[np.ndarray] = None,
             posteriors: Optional[np.ndarray] = None, rows=None) -> str:
    """Write particles as a NumPy ``.cs`` file (atomically); returns the path.

    Parameters
    ----------
    particles : a set from :func:`read_cs` (any subset via ``take`` keeps the link to its
        table) or from a STAR file with a ``rlnHetclassUid`` column.
    labels : (n,) 0-based class of each particle -> ``alignments3D/class`` (u4); None leaves
        the class fields as they are.
    posteriors : (n, K) class probabilities or (n,) probability of the assigned class ->
        ``alignments3D/class_posterior`` (f4); 1.0 when None and labels are given.
    rows : indices or boolean mask into the n particles: write only these rows.
    """
    table = cs_table(particles, labels, posteriors, rows)
    atomic_save_npy(os.fspath(path), table)
    return os.fspath(path)


# ----------------------------------------------------------------------------- .csg groups
def _slots(table: np.ndarray) -> Sequence[str]:
    slots = []
    for name in table.dtype.names:
        if "/" in name:
            slot = name.split("/", 1)[0]
            if slot not in slots:
                slots.append(slot)
    return slots


def _quote(text: str) -> str:
    return "'" + " ".join(str(text).split()).replace("'", "''") + "'"


def csg_text(cs_name: str, table: np.ndarray, title: str, description: str = "") -> str:
    """Text of a ``.csg`` group file for a particle ``.cs`` named ``cs_name`` (same folder)."""
    lines = [f"created: {datetime.datetime.now().isoformat(sep=' ')}",
             "group:",
             f"  description: {_quote(description or title)}",
             "  name: particles",
             f"  title: {_quote(title)}",
             "  type: particle",
             "results:"]
    for slot in _slots(table):
        kind = "alignments3D" if _MULTI_SLOT.match(slot) else slot
        lines += [f"  {slot}:",
                  f"    metafile: {_quote('>' + cs_name)}",
                  f"    num_items: {len(table)}",
                  f"    type: particle.{kind}"]
    lines.append(f"version: {CSG_VERSION}")
    return "\n".join(lines) + "\n"


def write_cs_group(path, particles: ParticleSet, labels=None, posteriors=None, rows=None,
                   title: str = "hetclass particles", description: str = "") -> Tuple[str, str]:
    """Write ``path`` (``.cs``) and the matching ``.csg`` next to it; returns both paths."""
    path = os.fspath(path)
    table = cs_table(particles, labels, posteriors, rows)
    atomic_save_npy(path, table)
    csg = os.path.splitext(path)[0] + ".csg"
    atomic_write_text(csg, csg_text(os.path.basename(path), table, title, description))
    return path, csg


def write_class_subsets(out_dir, particles: ParticleSet, labels: np.ndarray,
                        posteriors: Optional[np.ndarray] = None, prefix: str = "run",
                        subsets: Optional[Mapping[str, np.ndarray]] = None,
                        n_classes: Optional[int] = None) -> Dict[str, Tuple[str, str]]:
    """Per-class (and named) particle subsets as ``.cs`` + ``.csg`` pairs in ``out_dir``.

    Writes ``{prefix}_particles.cs`` (all particles), ``{prefix}_class{k:03d}_particles.cs``
    for each non-empty class k = 1..K, and ``{prefix}_{name}_particles.cs`` for each entry of
    ``subsets`` (name -> boolean mask or row indices, e.g. ``{"stable_core": mask}``), each
    with its ``.csg``. Every file carries the class fields of ``labels``/``posteriors``.
    Returns name -> (cs path, csg path), names ``"all"``, ``"class001"``, ..., and the
    ``subsets`` keys.
    """
    out_dir = os.fspath(out_dir)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    k_total = int(n_classes or (np.asarray(posteriors).shape[1] if posteriors is not None
                                and np.ndim(posteriors) == 2 else labels.max() + 1))
    written = {}
    table = cs_table(particles, labels, posteriors)   # build once, then slice
    full = replace(particles, source={"format": "cs", "dataset": table,
                                      "rows": np.arange(len(table)), "layout": "alignments3D",
                                      "block": None, "path": particles.source.get("path")})

    def emit(key, rows, title):
        path = os.path.join(out_dir, f"{prefix}_{key}_particles.cs" if key != "all"
                            else f"{prefix}_particles.cs")
        written[key] = write_cs_group(path, full, rows=rows, title=title,
                                      description=f"{title} (hetclass, {len(rows)} particles)")

    emit("all", np.arange(len(labels)), "All particles, classified by hetclass")
    for k in range(k_total):
        rows = np.flatnonzero(labels == k)
        if rows.size:
            emit(f"class{k + 1:03d}", rows, f"hetclass class {k + 1}")
    for name, sel in (subsets or {}).items():
        sel = np.asarray(sel)
        rows = np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64)
        emit(str(name), rows, f"hetclass {name}")
    return written
