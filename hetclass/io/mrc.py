"""MRC maps and stacks: read with checks, write atomically (via ``mrcfile``).

Arrays are indexed ``[z, y, x]`` (``[section, y, x]`` for stacks) as stored in MRC files.
Voxel sizes are in Angstrom; a voxel size of 0 in a header means "not recorded".
Every problem with a user's file raises :class:`hetclass.errors.InputError` naming the file,
the header field and the value.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import mrcfile
import numpy as np

from ..errors import InputError
from . import StrPath
from .atomic import atomic_path

HEADER_BYTES = 1024
PIXEL_SIZE_RTOL = 0.01   # relative voxel-size mismatch tolerated between a file and the optics
MAX_VOXEL_SIZE_A = 1e4   # a header voxel size beyond this (or not finite) is absurd


@dataclass(frozen=True)
class MrcInfo:
    """What hetclass needs from an MRC header.

    shape : (nz, ny, nx) -- nz = number of sections (images of a stack).
    voxel_size_A : (x, y, z) voxel size in Angstrom (0 = not recorded).
    dtype : NumPy dtype of the stored values (byte order included).
    is_stack : the header marks the file as an image stack (ispg 0 with nz > 1).
    """

    path: str
    shape: Tuple[int, int, int]
    voxel_size_A: Tuple[float, float, float]
    dtype: np.dtype
    is_stack: bool


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{what} not found", file=path)
    if not os.path.isfile(path):
        raise InputError(f"{what} is not a regular file", file=path)
    if os.path.getsize(path) == 0:
        raise InputError(f"{what} is empty", file=path, field="file size", value=0)


def _plausible_header(path: str) -> bool:
    """Whether the first 1024 bytes look like an MRC header in either byte order.

    Checked before a permissive open: a non-MRC file can declare a huge extended header
    that ``mrcfile`` would try to allocate.
    """
    raw = np.fromfile(path, dtype=np.uint8, count=HEADER_BYTES)
    if raw.size < HEADER_BYTES:
        return False
    size = os.path.getsize(path)
    for order in "<>":
        words = raw.view(order + "i4")
        nx, ny, nz, mode, nsymbt = (int(w) for w in (*words[:4], words[23]))
        if (min(nx, ny, nz) > 0 and max(nx, ny, nz) < 10**6 and mode in _KNOWN_MODES
                and 0 <= nsymbt <= size - HEADER_BYTES):
            return True
    return False


_KNOWN_MODES = (0, 1, 2, 3, 4, 6, 12, 101)


def _open(opener, path: str, **kw):
    """Open strictly; fall back to ``permissive=True`` only when the strict open fails and the
    header is plausible."""
    try:
        return opener(path, mode="r", permissive=False, **kw)
    except (ValueError, OSError) as strict_error:
        if not _plausible_header(path):
            raise InputError(f"not an MRC file ({strict_error})", file=path,
                             field="header") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                handle = opener(path, mode="r", permissive=True, **kw)
        except Exception:  # noqa: BLE001 - report the strict error, it is the clearer one
            raise InputError(f"not a readable MRC file ({strict_error})", file=path,
                             field="header") from None
        if handle.header is None or (not kw.get("header_only") and handle.data is None):
            handle.close()
            raise InputError(f"not a readable MRC file ({strict_error})", file=path,
                             field="header") from None
        return handle


def _voxel_size(mrc) -> Tuple[float, float, float]:
    """The header's voxel size (x, y, z) in A; zeros when the sampling (mx/my/mz) is not
    recorded, instead of mrcfile's 0/0."""
    h = mrc.header
    if min(int(h.mx), int(h.my), int(h.mz)) <= 0:
        return (0.0, 0.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vs = mrc.voxel_size
        return (float(vs.x), float(vs.y), float(vs.z))


def read_info(path: StrPath, what: str = "MRC file") -> MrcInfo:
    """Read and check an MRC header without touching the data.

    Checks: the file exists, the header parses, the data mode is a real-valued mode,
    the dimensions are positive and the file is long enough for the data it declares.
    """
    path = os.fspath(path)
    _require_file(path, what)
    try:
        with _open(mrcfile.open, path, header_only=True) as mrc:
            h = mrc.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            mode = int(h.mode)
            nsymbt = int(h.nsymbt)
            ispg = int(h.ispg)
            voxel = _voxel_size(mrc)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else: the file is not an MRC file
        raise InputError(f"not a readable MRC file ({exc})", file=path, field="header") from None
    if min(nx, ny, nz) <= 0:
        raise InputError("MRC header has a non-positive dimension", file=path,
                         field="nx/ny/nz", value=(nx, ny, nz))
    if not all(np.isfinite(v) and 0 <= v <= MAX_VOXEL_SIZE_A for v in voxel):
        raise InputError(f"MRC header voxel size is not a number in [0, {MAX_VOXEL_SIZE_A:g}] A",
                         file=path, field="voxel size", value=voxel)
    try:
        dtype = mrcfile.utils.dtype_from_mode(mode)
    except ValueError:
        raise InputError("unsupported MRC data mode", file=path, field="mode",
                         value=mode) from None
    if dtype.kind == "c":
        raise InputError("complex-valued MRC data are not supported", file=path,
                         field="mode", value=mode)
    expected = HEADER_BYTES + nsymbt + nx * ny * nz * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise InputError(f"MRC file is truncated: {actual} bytes, header needs {expected}",
                         file=path, field="data size", value=actual)
    return MrcInfo(path=path, shape=(nz, ny, nx), voxel_size_A=voxel,
                   dtype=dtype, is_stack=(ispg == 0 and nz > 1))


def open_mmap(path: StrPath) -> "mrcfile.mrcmemmap.MrcMemmap":
    """Memory-map an MRC file read-only (strict first, permissive only if needed)."""
    path = os.fspath(path)
    _require_file(path, "MRC file")
    return _open(mrcfile.mmap, path)


def read_map(path: StrPath) -> Tuple[np.ndarray, float]:
    """Read a cubic 3D map.

    Returns ``(array, voxel_size_A)``: ``array`` float32 of shape (n, n, n) indexed
    ``[z, y, x]``; ``voxel_size_A`` the header's x voxel size (0.0 when not recorded).
    InputError for a missing, empty, non-MRC, truncated or non-cubic file, or non-finite values.
    """
    path = os.fspath(path)
    info = read_info(path, "map")
    nz, ny, nx = info.shape
    if not (nx == ny == nz):
        raise InputError("map is not a cubic 3D volume", file=path, field="nx/ny/nz",
                         value=(nx, ny, nz))
    with _open(mrcfile.open, path) as mrc:
        data = np.asarray(mrc.data).reshape(nz, ny, nx).astype(np.float32, copy=True)
    bad = ~np.isfinite(data)
    if bad.any():
        z, y, x = np.argwhere(bad)[0]
        raise InputError(f"map contains a non-finite value at [z,y,x]=[{z},{y},{x}]",
                         file=path, field="data", value=float(data[z, y, x]))
    return data, info.voxel_size_A[0]


def _origin3(origin) -> Tuple[float, float, float]:
    o = np.broadcast_to(np.asarray(origin, dtype=np.float64), (3,))
    return float(o[0]), float(o[1]), float(o[2])


def write_map(path: StrPath, array: np.ndarray, voxel_size_A: float,
              origin: Union[float, Sequence[float]] = 0) -> None:
    """Write a 3D map (float32, ``[z, y, x]``) atomically.

    ``voxel_size_A`` is stored in the header; ``origin`` (Angstrom, scalar or (x, y, z)) goes
    to the header origin field.
    """
    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"write_map expects a 3D array, got shape {data.shape}")
    _write(path, data, voxel_size_A, stack=False, origin=origin)


def _write(path, data: np.ndarray, voxel_size_A: float, stack: bool, origin=0) -> None:
    """Atomic float32 MRC write: a volume or an image stack, fixed header label."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if stack:
                mrc.set_image_stack()
            else:
                mrc.set_volume()
                mrc.header.origin = _origin3(origin)
            mrc.voxel_size = float(voxel_size_A)
            mrc.update_header_stats()
            _fixed_label(mrc)


def _fixed_label(mrc) -> None:
    """Replace mrcfile's timestamped label so the same data give the same bytes."""
    mrc.header.label[0] = b"hetclass"
    mrc.header.nlabl = 1


def write_stack(path: StrPath, images: np.ndarray, pixel_size_A: float) -> None:
    """Write an image stack (n, ny, nx) as float32 MRC (``.mrcs``) atomically."""
    data = np.ascontiguousarray(images, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"write_stack expects (n, ny, nx), got shape {data.shape}")
    _write(path, data, pixel_size_A, stack=True)


def check_map_matches(path: StrPath, array: np.ndarray, box_px: int, pixel_size_A: float,
                      voxel_size_A: Optional[float] = None) -> None:
    """InputError unless ``array`` (read from ``path``) is (box, box, box) at ``pixel_size_A``.

    Used for references and masks. ``voxel_size_A`` is the header value (re-read from
    ``path`` when not given); 0 (not recorded) is accepted, anything else must agree with
    ``pixel_size_A`` within 1 %.
    """
    path = os.fspath(path)
    shape = tuple(int(s) for s in np.shape(array))
    box = int(box_px)
    if shape != (box, box, box):
        raise InputError(f"map size does not match the particles' box of {box} px",
                         file=path, field="nx/ny/nz", value=shape)
    if voxel_size_A is None:
        voxel_size_A = read_info(path, "map").voxel_size_A[0]
    voxel = float(voxel_size_A)
    if voxel > 0 and abs(voxel - pixel_size_A) > PIXEL_SIZE_RTOL * pixel_size_A:
        raise InputError(f"map voxel size does not match the particles' pixel size of "
                         f"{pixel_size_A:g} A", file=path, field="voxel size",
                         value=round(voxel, 4))
