"""Read CryoSPARC particle ``.cs`` files into a :class:`hetclass.particles.ParticleSet`.

A ``.cs`` file is a 1-D structured array with one row per particle and fields named
``slot/field`` (``uid`` has no slot). Two containers exist: the classic NumPy ``.npy``
layout (magic ``\\x93NUMPY``, read with :func:`numpy.load`) and the newer CSDAT stream
(magic ``\\x95CSDAT``, read with cryosparc-tools, imported only when needed).

Conversions to hetclass's conventions (:mod:`hetclass.particles`), done here and only here:

* rotation: ``R = Rodrigues(alignments3D/pose)`` (active, right-handed, radians); RELION's
  matrix is ``A = R.T``;
* shift: ``shifts_A = alignments3D/shift * alignments3D/psize_A`` (same sign, no x/y swap;
  the alignment pixel size, NOT ``blob/psize_A``, which differs after down-sampling);
* CTF: ``df1_A``/``df2_A`` -> defocus U/V (no swap), ``df_angle_rad`` and
  ``phase_shift_rad`` -> degrees, ``bfactor`` -> B-factor, ``scale`` -> CTF scale;
* optics groups: one per ``ctf/exp_group_id`` (numbered 1..G in id order), with voltage,
  Cs, amplitude contrast, ``blob/psize_A`` and ``blob/shape[0]``;
* half sets: ``alignments3D/split`` 0/1 -> ``random_subset`` 1/2 (``None`` when every
  particle has the same split value: such a column carries no half-set information);
* images: ``"{blob/idx + 1:06d}@{blob/path}"`` (1-based, RELION style).

Multi-class results (3D classification / heterogeneous refinement) are recognised by
exact prefix: ``alignments3D_multi/*`` (CryoSPARC >= v4.5; arrays of shape (n, K, ...)) and
``alignments_class_{k}/*`` (<= v4.4; one block per class). When ``alignments3D/pose`` is
absent, each particle takes the pose, shift and split of its most probable class (largest
``class_posterior``), as pyem's csparc2star does. ``alignments3D/*`` wins when present.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..geometry import rotvec_to_matrix
from ..particles import Optics, ParticleSet

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
MAX_HEADER_BYTES = 1 << 30   # accept any header a real .cs can have (numpy's default: 10 kB)

REQUIRED_FIELDS = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A", "ctf/accel_kv",
                   "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A",
                   "ctf/df_angle_rad")
_CLASS_BLOCK = re.compile(r"^alignments_class_(\d+)/pose$")
MAX_POSE_RAD = 1000.0        # |rotation vector| beyond this is absurd (real ones are <= pi)


# ----------------------------------------------------------------------------- containers
def _np_load(path: str) -> np.ndarray:
    kwargs: Dict[str, Any] = {"allow_pickle": False}
    if "max_header_size" in inspect.signature(np.load).parameters:  # numpy >= 1.24
        kwargs["max_header_size"] = MAX_HEADER_BYTES
    return np.load(path, **kwargs)


def _check_csdat_structure(path: str) -> None:
    """Reject truncated CSDAT files before cryosparc-tools sees them.

    cryosparc-tools 5.0 leaves a half-built dataset behind when a load fails part-way, and
    freeing it later crashes the interpreter; so the layout is walked here first: magic,
    u32 header size, JSON header (``length``, ``dtype``), per field a u32 size and that many
    bytes, then a string heap of NUL-terminated strings (starting and ending with NUL).
    """
    import json

    size = os.path.getsize(path)

    def bad(why):
        return InputError(f"cannot read the CSDAT .cs file (truncated or corrupt?): {why}",
                          file=path)

    with open(path, "rb") as f:
        f.seek(len(CSDAT_MAGIC))
        raw = f.read(4)
        if len(raw) < 4:
            raise bad("no header")
        header_size = int.from_bytes(raw, "little")
        if 10 + header_size > size:
            raise bad("header runs past the end of the file")
        try:
            header = json.loads(f.read(header_size))
            length, dtype = int(header["length"]), list(header["dtype"])
        except Exception as exc:
            raise bad(f"unreadable header ({type(exc).__name__})") from None
        offset = 10 + header_size
        if length > 0:
            for field in dtype:
                f.seek(offset)
                raw = f.read(4)
                if len(raw) < 4:
                    raise bad(f"column {field[0]!r} missing")
                offset += 4 + int.from_bytes(raw, "little")
                if offset > size:
                    raise bad(f"column {field[0]!r} cut short")
        has_strings = any(str(field[1]).endswith("O") for field in dtype)
        if length > 0 and has_strings:
            f.seek(offset)
            heap = f.read()
            if len(heap) < 2 or heap[:1] != b"\0" or heap[-1:] != b"\0":
                raise bad("string heap cut short")


def _load_csdat(path: str) -> np.ndarray:
    _check_csdat_structure(path)
    try:
        from cryosparc.dataset import Dataset  # optional dependency, imported lazily
    except ImportError:
        raise InputError("this .cs file uses CryoSPARC's CSDAT container; reading it needs "
                         "cryosparc-tools (pip install cryosparc-tools)", file=path) from None
    try:
        records = Dataset.load(path).to_records(fixed=True)
    except Exception as exc:  # cryosparc-tools wraps every failure in DatasetLoadError
        cause = exc.__cause__ or exc
        raise InputError(f"cannot read the CSDAT .cs file (truncated or corrupt?): "
                         f"{type(cause).__name__}: {cause}", file=path) from None
    array = np.asarray(records).view(np.ndarray)
    return array.astype(np.dtype(array.dtype.descr), copy=False)


def load_cs_array(path) -> np.ndarray:
    """Read a ``.cs`` file (NumPy or CSDAT container) as a 1-D structured array.

    Raises InputError for missing, empty, truncated or non-``.cs`` files, and for arrays
    without a unique ``uid`` field. String fields are fixed-width bytes (``|S<n>``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError("file not found", file=path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == NUMPY_MAGIC:
        try:
            array = _np_load(path)
        except Exception as exc:
            raise InputError(f"cannot read the .cs file (truncated or corrupt?): "
                             f"{type(exc).__name__}: {exc}", file=path) from None
    elif magic == CSDAT_MAGIC:
        array = _load_csdat(path)
    else:
        raise InputError("not a CryoSPARC .cs file (neither a NumPy array nor a CSDAT "
                         "container)", file=path, field="magic bytes", value=magic)
    if array.ndim != 1 or array.dtype.names is None:
        raise InputError("not a CryoSPARC .cs file: expected a 1-D table with named fields",
                         file=path, field="shape", value=str(array.shape))
    if "uid" not in array.dtype.names:
        raise InputError("missing field: every CryoSPARC .cs table has a uid column",
                         file=path, field="uid")
    _require_unique_uids(array["uid"], path)
    return array


def _require_unique_uids(uids: np.ndarray, path: str) -> None:
    sorted_uids = np.sort(uids)
    dup = sorted_uids[1:][sorted_uids[1:] == sorted_uids[:-1]]
    if dup.size:
        raise InputError(f"{dup.size} duplicated uid(s); uids must identify particles "
                         f"uniquely", file=path, field="uid", value=int(dup[0]))


# ----------------------------------------------------------------------------- passthrough
def _lookup_uids(table_uids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each ``wanted`` uid in ``table_uids`` (unique), -1 where absent."""
    if len(table_uids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(table_uids, kind="stable")
    pos = np.minimum(np.searchsorted(table_uids, wanted, sorter=order), len(order) - 1)
    rows = order[pos].astype(np.int64)
    return np.where(table_uids[rows] == wanted, rows, -1)


def merge_passthrough(main: np.ndarray, main_path: str, passthrough: Sequence[str]
                      ) -> Tuple[np.ndarray, Dict[str, str]]:
    """Join passthrough tables onto ``main`` by ``uid`` (never by row order).

    Fields already in ``main`` (or in an earlier passthrough file) are kept from there.
    Every uid of ``main`` must be present in each passthrough file (extra uids there are
    ignored). Returns the merged array (rows in ``main``'s order) and, per field, the file
    it came from (needed to resolve ``>`` paths).
    """
    origin = {name: main_path for name in main.dtype.names}
    merged = main
    for pt_path in passthrough:
        pt_path = os.fspath(pt_path)
        table = load_cs_array(pt_path)
        new = [name for name in table.dtype.names if name not in origin]
        rows = _lookup_uids(table["uid"], merged["uid"])
        if np.any(rows < 0):
            missing = merged["uid"][rows < 0]
            raise InputError(f"passthrough file lacks {missing.size} of the {len(merged)} "
                             f"particle uids of {main_path} (is it from the same job?)",
                             file=pt_path, field="uid", value=int(missing[0]))
        if not new:
            continue
        descr = merged.dtype.descr + [d for d in table.dtype.descr if d[0] in new]
        out = np.empty(len(merged), dtype=np.dtype(descr))
        for name in merged.dtype.names:
            out[name] = merged[name]
        for name in new:
            out[name] = table[name][rows]
            origin[name] = pt_path
        merged = out
    return merged, origin


# ----------------------------------------------------------------------------- alignments
def select_alignments(ds: np.ndarray, path: str) -> Dict[str, np.ndarray]:
    """Pose, shift (px), alignment pixel size, split and class of each particle.

    Returns a dict with ``pose`` (n, 3) rad, ``shift_px`` (n, 2), ``psize_A`` (n,),
    ``split`` (n,) or None, ``cls`` (n,) 0-based or None, ``posterior`` (n,) or None,
    ``layout`` ("alignments3D" | "alignments3D_multi" | "alignments_class_N") and
    ``block`` (n,) index of the chosen class block (multi-class layouts) or None.
    """
    names = set(ds.dtype.names)
    n = len(ds)
    if "alignments3D/pose" in names:
        pre = "alignments3D/"
        _require(ds, path, [pre + "shift", pre + "psize_A"])
        return dict(pose=ds[pre + "pose"], shift_px=ds[pre + "shift"],
                    psize_A=ds[pre + "psize_A"], split=_get(ds, pre + "split"),
                    cls=_get(ds, pre + "class"), posterior=_get(ds, pre + "class_posterior"),
                    layout="alignments3D", block=None)
    if "alignments3D_multi/pose" in names:
        pre = "alignments3D_multi/"
        _require(ds, path, [pre + "shift", pre + "psize_A", pre + "class_posterior"])
        post = np.asarray(ds[pre + "class_posterior"]).reshape(n, -1)
        k = np.argmax(post, axis=1)
        idx = np.arange(n)
        pose = np.asarray(ds[pre + "pose"]).reshape(n, post.shape[1], 3)[idx, k]
        shift = np.asarray(ds[pre + "shift"]).reshape(n, post.shape[1], 2)[idx, k]
        psize = np.asarray(ds[pre + "psize_A"]).reshape(n, -1)
        psize = psize[idx, k] if psize.shape[1] > 1 else psize[:, 0]
        split = _get(ds, pre + "split")
        if split is not None:
            split = np.asarray(split).reshape(n, -1)
            split = split[idx, k] if split.shape[1] > 1 else split[:, 0]
        cls = _get(ds, pre + "class")
        cls = k if cls is None else np.asarray(cls).reshape(n, -1)[idx, k]
        return dict(pose=pose, shift_px=shift, psize_A=psize, split=split, cls=cls,
                    posterior=post[idx, k], layout="alignments3D_multi", block=k)
    blocks = sorted(int(m.group(1)) for m in map(_CLASS_BLOCK.match, ds.dtype.names) if m)
    if blocks:
        pres = [f"alignments_class_{b}/" for b in blocks]
        _require(ds, path, [p + f for p in pres for f in ("shift", "psize_A",
                                                            "class_posterior")])
        post = np.stack([ds[p + "class_posterior"] for p in pres], axis=1)
        k = np.argmax(post, axis=1)
        idx = np.arange(n)

        def pick(field):
            if any(p + field not in names for p in pres):
                return None
            return np.stack([ds[p + field] for p in pres], axis=1)[idx, k]

        cls = pick("class")
        return dict(pose=pick("pose"), shift_px=pick("shift"), psize_A=pick("psize_A"),
                    split=pick("split"), cls=np.asarray(blocks)[k] if cls is None else cls,
                    posterior=post[idx, k], layout="alignments_class_N", block=k)
    raise InputError("no 3D alignments: 3D classification needs particles with poses from a "
                     "3D refinement (e.g. Homogeneous or Non-uniform Refinement); export "
                     "that job's particles (and pass its passthrough file)",
                     file=path, field="alignments3D/pose")


def _get(ds: np.ndarray, name: str) -> Optional[np.ndarray]:
    return ds[name] if name in ds.dtype.names else None


def _require(ds: np.ndarray, path: str, fields: Sequence[str]) -> None:
    for name in fields:
        if name not in ds.dtype.names:
            raise InputError("missing required field (a passthrough file may be missing: "
                             "--passthrough)", file=path, field=name)


# ----------------------------------------------------------------------------- paths
def _decode(values: np.ndarray, path: Optional[str] = None, field: Optional[str] = None) -> np.ndarray:
    """Fixed-width bytes (or objects) -> array of str; InputError for bytes not UTF-8."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        try:
            return np.char.decode(values, "utf-8")
        except UnicodeDecodeError:
            for i, v in enumerate(values.tolist()):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(f"text of row {i + 1} is not UTF-8", file=path,
                                     field=field, value=v) from None
            raise
    return values.astype(str)


def guess_project_dir(cs_path: str, rel_paths: Sequence[str]) -> str:
    """Directory against which relative ``blob/path`` values resolve.

    Walks up from the ``.cs`` file's directory, then from the working directory, to the first
    folder holding any of the first three stacks. If none does, guesses CryoSPARC's layout
    ``PROJECT/J12/J12_particles.cs`` (project = parent of a ``J<number>`` folder), else the
    file's own directory.
    """
    start = os.path.dirname(os.path.abspath(cs_path))
    probe = list(rel_paths[:3])
    for d in (start, os.getcwd()):
        while True:
            if any(os.path.exists(os.path.join(d, p)) for p in probe):
                return d
            if os.path.dirname(d) == d:
                break
            d = os.path.dirname(d)
    return os.path.dirname(start) if re.fullmatch(r"J\d+", os.path.basename(start)) else start


def _stack_paths(ds: np.ndarray, origin: Dict[str, str], project_dir: Optional[str],
                 cs_path: str) -> Tuple[np.ndarray, str, List[str]]:
    """Stack path of each particle (relative to the returned project dir where possible),
    the project dir, and the resolved stacks that do not exist."""
    raw_unique, inverse = np.unique(_decode(ds["blob/path"], origin["blob/path"], "blob/path"),
                                    return_inverse=True)
    inverse = inverse.reshape(-1)
    if np.any(np.char.str_len(raw_unique.astype(str)) == 0):
        i = int(np.flatnonzero(inverse == 0)[0])
        raise InputError(f"empty stack path for particle uid {int(ds['uid'][i])}",
                         file=origin["blob/path"], field="blob/path", value="")
    exported = np.char.startswith(raw_unique.astype(str), ">")
    export_base = os.path.dirname(os.path.abspath(origin["blob/path"]))
    plain = [p for p, e in zip(raw_unique, exported) if not e]
    if project_dir is not None:
        base = os.path.abspath(project_dir)
    elif plain:
        base = guess_project_dir(cs_path, plain)
    else:
        base = export_base
    names = []
    for p, e in zip(raw_unique, exported):
        if e:  # '>' = relative to the exported file
            stripped = p[1:]
            names.append(stripped if base == export_base
                         else os.path.join(export_base, stripped))
        else:
            names.append(p)
    missing = sorted({os.path.join(base, q) for q in names
                      if not os.path.exists(os.path.join(base, q))})
    return np.asarray(names, dtype=object)[inverse].astype(str), base, missing


# ----------------------------------------------------------------------------- optics
def _tidy(x) -> float:
    """float32 -> the float64 with the same shortest decimal (1.3f -> 1.3, not 1.2999999)."""
    return float(str(x)) if isinstance(x, np.float32) else float(x)


def _build_optics(ds: np.ndarray, path: str) -> Tuple[Optics, np.ndarray]:
    """One optics group per distinct (exp_group_id, kV, Cs, amp. contrast, pixel size, box)."""
    n = len(ds)
    shape = np.asarray(ds["blob/shape"]).reshape(n, -1).astype(np.int64)
    if np.any(shape[:, 0] != shape[:, -1]):
        bad = int(np.flatnonzero(shape[:, 0] != shape[:, -1])[0])
        raise InputError("particle images must be square", file=path, field="blob/shape",
                         value=shape[bad].tolist())
    value_fields = ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "blob/psize_A")
    for f in value_fields + ("blob/shape",):
        values = shape[:, 0] if f == "blob/shape" else np.asarray(ds[f], dtype=np.float64)
        strict = f in ("blob/psize_A", "ctf/accel_kv", "blob/shape")
        bad = ~np.isfinite(values) | (values <= 0 if strict else values < 0)
        if np.any(bad):
            raise InputError("invalid value", file=path, field=f,
                             value=float(values[np.flatnonzero(bad)[0]]))
    group_id = (np.asarray(ds["ctf/exp_group_id"]).astype(np.int64)
                if "ctf/exp_group_id" in ds.dtype.names else np.zeros(n, np.int64))
    keys = np.rec.fromarrays([group_id] + [np.asarray(ds[f]) for f in value_fields]
                             + [shape[:, 0]])
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    gids = uniq["f0"].astype(np.int64)
    names = []
    for j, gid in enumerate(gids):
        shared = np.count_nonzero(gids == gid) > 1  # one exposure group, several optics
        names.append(f"opticsGroup{gid + 1}" + (f"_{j + 1}" if shared else ""))
    rows = [int(r) for r in first]
    optics = Optics(
        names=np.asarray(names),
        voltage_kV=np.array([_tidy(ds["ctf/accel_kv"][r]) for r in rows]),
        cs_mm=np.array([_tidy(ds["ctf/cs_mm"][r]) for r in rows]),
        amplitude_contrast=np.array([_tidy(ds["ctf/amp_contrast"][r]) for r in rows]),
        pixel_size_A=np.array([_tidy(ds["blob/psize_A"][r]) for r in rows]),
        box_px=shape[first, 0].astype(np.int64),
        relion_ids=np.arange(1, len(rows) + 1))
    return optics, inverse.reshape(-1).astype(np.int64)


# ----------------------------------------------------------------------------- reader
def particles_from_dataset(ds: np.ndarray, path: str, origin: Optional[Dict[str, str]] = None,
                           project_dir: Optional[str] = None) -> ParticleSet:
    """Convert a merged ``.cs`` table to a :class:`ParticleSet` (see the module docstring)."""
    origin = origin or {name: path for name in ds.dtype.names}
    if len(ds) == 0:
        raise InputError("the .cs file holds no particles", file=path, field="uid", value=0)
    ali = select_alignments(ds, path)
    _require(ds, path, REQUIRED_FIELDS)
    n = len(ds)
    pose = np.asarray(ali["pose"], dtype=np.float64).reshape(n, 3)
    shift_px = np.asarray(ali["shift_px"], dtype=np.float64).reshape(n, 2)
    psize = np.asarray(ali["psize_A"], dtype=np.float64).reshape(n)
    for name, arr in (("pose", pose), ("shift", shift_px), ("psize_A", psize)):
        bad = ~np.all(np.isfinite(arr.reshape(n, -1)), axis=1)
        if name == "psize_A":
            bad |= arr <= 0
        elif name == "pose":     # a rotation vector: its length is the angle (rad)
            bad |= ~(np.linalg.norm(np.nan_to_num(arr), axis=1) <= MAX_POSE_RAD)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"invalid alignment value for particle uid {int(ds['uid'][i])}",
                             file=path, field=f"{ali['layout']}/{name}",
                             value=arr[i].tolist())
    idx = np.asarray(ds["blob/idx"]).astype(np.int64)
    stacks, base, missing = _stack_paths(ds, origin, project_dir, path)
    image_names = np.char.add(np.char.add(np.char.zfill((idx + 1).astype(str), 6), "@"),
                              stacks.astype(str))
    optics, group = _build_optics(ds, path)

    def f64(name, scale=1.0, default=None):
        if name not in ds.dtype.names:
            return default
        return np.asarray(ds[name], dtype=np.float64) * scale

    split = ali["split"]
    subset = None
    if split is not None:
        split = np.asarray(split).astype(np.int64)
        if np.any((split < 0) | (split > 1)):
            i = int(np.flatnonzero((split < 0) | (split > 1))[0])
            raise InputError("half-set split must be 0 or 1", file=path,
                             field=f"{ali['layout']}/split", value=int(split[i]))
        if n < 2 or np.unique(split).size > 1:
            subset = split + 1
    mics = (_decode(ds["location/micrograph_path"], path, "location/micrograph_path")
            if "location/micrograph_path"
            in ds.dtype.names else None)
    if mics is not None:
        mics = np.array([m[1:] if m.startswith(">") else m for m in mics])
    source = {"format": "cs", "dataset": ds, "path": os.path.abspath(path),
              "rows": np.arange(n), "layout": ali["layout"], "block": ali["block"],
              "input_class": None if ali["cls"] is None else np.asarray(ali["cls"], np.int64),
              "input_posterior": ali["posterior"], "missing_stacks": missing,
              "field_origin": origin}
    return ParticleSet(
        image_names=image_names.astype(str), rotations=rotvec_to_matrix(pose).transpose(0, 2, 1),
        shifts_A=shift_px * psize[:, None],
        defocus_u_A=f64("ctf/df1_A"), defocus_v_A=f64("ctf/df2_A"),
        defocus_angle_deg=np.rad2deg(f64("ctf/df_angle_rad")),
        optics_group=group, optics=optics,
        phase_shift_deg=(None if "ctf/phase_shift_rad" not in ds.dtype.names
                         else np.rad2deg(f64("ctf/phase_shift_rad"))),
        ctf_bfactor_A2=f64("ctf/bfactor"), ctf_scale=f64("ctf/scale"),
        random_subset=subset, micrograph_names=mics, source=source, project_dir=base)


def read_cs(path, passthrough: Sequence[str] = (), project_dir: Optional[str] = None
            ) -> ParticleSet:
    """Read CryoSPARC particles (``.cs`` + optional passthrough ``.cs`` files).

    Parameters
    ----------
    path : the job's particle ``.cs`` (NumPy or CSDAT container; an exported single-file
        ``.cs`` with ``>`` paths works too).
    passthrough : further ``.cs`` files joined by ``uid`` (e.g. ``J12_passthrough_particles.cs``).
    project_dir : CryoSPARC project directory against which ``blob/path`` resolves
        (default: guessed, see :func:`guess_project_dir`). Missing stacks do not raise here:
        they are listed in ``source["missing_stacks"]`` (see :func:`missing_stacks`).

    Returns a :class:`ParticleSet` with ``source = {"format": "cs", "dataset": merged
    table, "rows": row of each particle in it, "path": ..., ...}`` so that
    :func:`hetclass.io.cryosparc_write.write_cs` can write untouched fields back bit-identically.

    Example::

        particles = read_cs("P3/J42/J42_particles.cs",
                            passthrough=["P3/J42/J42_passthrough_particles.cs"])
    """
    path = os.fspath(path)
    main = load_cs_array(path)
    merged, origin = merge_passthrough(main, path, list(passthrough))
    return particles_from_dataset(merged, path, origin, project_dir)


def missing_stacks(particles: ParticleSet) -> List[str]:
    """Resolved stack files of a set read by :func:`read_cs` that do not exist."""
    return list(particles.source.get("missing_stacks", []))


def require_stacks(particles: ParticleSet) -> None:
    """Raise InputError when stacks of a ``.cs`` set are missing (before reading images)."""
    missing = missing_stacks(particles)
    if missing:
        raise InputError(f"{len(missing)} particle stack(s) not found under "
                         f"{particles.project_dir}; pass the CryoSPARC project directory "
                         f"with --cs-project-dir", file=particles.source.get("path"),
                         field="blob/path", value=missing[0])
