"""Particle images from ``index@stack`` names, read lazily from memory-mapped MRC stacks.

``index`` is 1-based (RELION). A name without ``@`` is a single-image file. Relative stack
paths are resolved from ``particles.project_dir`` (RELION's project directory); absolute paths
are used as they are. Images are returned as stored: float32 ``[y, x]`` (MRC rows).

Example::

    with ImageSource(particles) as src:
        src.validate()
        images = src.read(np.arange(100))    # (100, box, box) float32
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, List, Tuple

import numpy as np

from ..errors import InputError
from ..particles import ParticleSet
from .mrc import HEADER_BYTES, PIXEL_SIZE_RTOL, MrcInfo, open_mmap, read_info


def split_image_names(names, star_path=None):
    """``index@stack`` names -> (indices (n,) int64 1-based, stacks (n,) str).

    InputError (field rlnImageName) for a name whose index is not a positive integer.
    """
    names = np.asarray(names).astype(str)
    indices = np.empty(names.size, dtype=np.int64)
    stacks = []
    for i, name in enumerate(names.tolist()):
        head, sep, tail = name.partition("@")
        if not sep:
            indices[i] = 1
            stacks.append(name)
            continue
        try:
            indices[i] = int(head)
        except ValueError:
            indices[i] = 0
        if indices[i] < 1 or not tail:
            raise InputError(f"image name must be index@stack with a 1-based index "
                             f"(row {i + 1})", file=star_path, field="rlnImageName", value=name)
        stacks.append(tail)
    return indices, np.asarray(stacks, dtype=str)


def _resolve(stack: str, project_dir: str) -> str:
    return stack if os.path.isabs(stack) else os.path.join(project_dir, stack)


def _stack_info(path: str, name: str, star_path) -> MrcInfo:
    if not os.path.exists(path):
        raise InputError(f"particle stack not found (referenced by {star_path or 'the input'})",
                         file=path, field="rlnImageName", value=name)
    return read_info(path, "particle stack")


def fill_missing_box(particles: ParticleSet) -> ParticleSet:
    """Return ``particles`` with every optics box of 0 read from its first stack's header.

    Groups whose first stack is missing or unreadable keep 0 (``ImageSource`` reports them).
    The input is not modified.
    """
    box = np.asarray(particles.optics.box_px, dtype=np.int64).copy()
    todo = np.flatnonzero(box == 0)
    if todo.size == 0:
        return particles
    group = np.asarray(particles.optics_group)
    for g in todo:
        members = np.flatnonzero(group == g)
        if members.size == 0:
            continue
        _, stacks = split_image_names(particles.image_names[members[:1]])
        path = _resolve(str(stacks[0]), particles.project_dir)
        try:
            info = read_info(path, "particle stack")
        except InputError:
            continue
        if info.shape[1] == info.shape[2]:
            box[g] = info.shape[2]
    return replace(particles, optics=replace(particles.optics, box_px=box))


class ImageSource:
    """Lazy reader of a :class:`ParticleSet`'s images (grouped by stack, large reads).

    Each stack's header is read once (its layout cached); no file stays open between reads.
    Usable as a context manager (``close`` is kept for callers that release resources).
    """

    def __init__(self, particles: ParticleSet):
        if (np.asarray(particles.optics.box_px) == 0).any():
            particles = fill_missing_box(particles)
        self.particles = particles
        self.star_path = (particles.source or {}).get("path")
        self.indices, stacks = split_image_names(particles.image_names, self.star_path)
        unique, self.stack_id = np.unique(stacks, return_inverse=True)
        self.stack_id = np.asarray(self.stack_id).reshape(-1)
        self.stack_names: List[str] = unique.tolist()
        self.stack_paths: List[str] = [_resolve(s, particles.project_dir) for s in unique]
        self.box_px = np.asarray(particles.box_px, dtype=np.int64)
        self._layouts: Dict[int, Tuple[int, np.dtype, Tuple[int, int, int]]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open between reads; kept for callers (and ``with`` blocks)."""

    def _first_row(self, s: int) -> int:
        return int(np.flatnonzero(self.stack_id == s)[0])

    def validate(self) -> None:
        """Check every stack before heavy work (InputError naming stack, field and value).

        Every stack exists and is a readable MRC file; a name without ``index@`` names a
        single-image file; every index is within its number of sections; the image side
        equals the optics box; the stack voxel size (when recorded, i.e. non-zero) agrees
        with the optics pixel size within 1 %.
        """
        order = np.argsort(self.stack_id, kind="stable")
        bounds = np.searchsorted(self.stack_id[order], np.arange(len(self.stack_paths) + 1))
        pixel = self.particles.pixel_size_A
        bare = np.char.find(np.asarray(self.particles.image_names).astype(str), "@") < 0
        for s, path in enumerate(self.stack_paths):
            rows = order[bounds[s]:bounds[s + 1]]
            first = int(rows[0])
            name = str(self.particles.image_names[first])
            info = _stack_info(path, name, self.star_path)
            n_sections, ny, nx = info.shape
            if n_sections > 1 and bare[rows].any():   # which of its images? never guess
                raise InputError(f"image name without index@ names a file of {n_sections} "
                                 "images; write index@stack so that each particle names its "
                                 "own image", file=path, field="rlnImageName",
                                 value=str(self.particles.image_names[rows[bare[rows]][0]]))
            idx = self.indices[rows]
            worst = int(np.argmax(idx))
            if idx[worst] > n_sections:
                raise InputError(f"image index beyond the {n_sections} sections of the stack",
                                 file=path, field="rlnImageName",
                                 value=str(self.particles.image_names[rows[worst]]))
            boxes = self.box_px[rows]
            wrong = np.flatnonzero((boxes != nx) | (boxes != ny))
            if ny != nx or wrong.size:
                expected = int(boxes[wrong[0]]) if wrong.size else nx
                field = "rlnImageSize" if expected > 0 else "nx/ny"
                raise InputError(f"stack images are {nx}x{ny} px but the optics group's image "
                                 f"size is {expected}", file=path, field=field, value=(nx, ny))
            voxel = info.voxel_size_A[0]
            if voxel > 0:
                px = pixel[rows]
                bad = np.flatnonzero(np.abs(voxel - px) > PIXEL_SIZE_RTOL * px)
                if bad.size:
                    raise InputError(f"stack voxel size differs from the optics pixel size "
                                     f"{px[bad[0]]:g} A by more than 1 %", file=path,
                                     field="voxel size", value=round(voxel, 4))

    def _layout(self, s: int) -> Tuple[int, np.dtype, Tuple[int, int, int]]:
        """(data offset in bytes, stored dtype, (sections, ny, nx)) of stack ``s``, from its
        header (read once; the file is not kept open)."""
        layout = self._layouts.get(s)
        if layout is not None:
            return layout
        path = self.stack_paths[s]
        if not os.path.exists(path):
            name = str(self.particles.image_names[self._first_row(s)])
            raise InputError("particle stack not found", file=path, field="rlnImageName",
                             value=name)
        handle = open_mmap(path)
        try:
            data = handle.data
            shape = tuple(int(v) for v in data.shape)
            offset = HEADER_BYTES + int(handle.header.nsymbt)
            dtype = data.dtype
        finally:
            handle.close()
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3:
            raise InputError("particle stack must hold 2D images (not a volume stack)",
                             file=path, field="nx/ny/nz", value=shape)
        layout = (offset, dtype, shape)
        self._layouts[s] = layout
        return layout

    def read(self, rows=None) -> np.ndarray:
        """Images of particles ``rows`` (default: all) as float32 (len(rows), box, box).

        Reads are grouped by stack, each stack in increasing index order, one read per run of
        consecutive images (no memory map: nothing stays open or mapped afterwards).
        InputError for an index beyond the stack, a wrong image size or a NaN/Inf pixel.
        """
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        rows = rows.reshape(-1)
        if rows.size == 0:
            return np.zeros((0, 0, 0), dtype=np.float32)
        boxes = np.unique(self.box_px[rows])
        if boxes.size != 1:
            raise ValueError(f"rows span several image sizes {boxes.tolist()}; read them "
                             "separately (one optics box per call)")
        box = int(boxes[0])
        sid = self.stack_id[rows]
        order = np.argsort(sid, kind="stable")
        sorted_sid = sid[order]
        cuts = np.flatnonzero(np.diff(sorted_sid)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [rows.size]])
        out = np.empty((rows.size, box, box), dtype=np.float32)
        for a, b in zip(starts.tolist(), ends.tolist()):
            s = int(sorted_sid[a])
            positions = order[a:b]
            idx0 = self.indices[rows[positions]] - 1            # 0-based sections
            offset, dtype, (n_sections, ny, nx) = self._layout(s)
            path = self.stack_paths[s]
            if ny != box or nx != box:
                raise InputError(f"stack images are {nx}x{ny} px, expected {box}", file=path,
                                 field="rlnImageSize", value=(nx, ny))
            if idx0.max() >= n_sections:
                k = int(np.argmax(idx0))
                raise InputError(f"image index beyond the {n_sections} sections of the stack",
                                 file=path, field="rlnImageName",
                                 value=str(self.particles.image_names[rows[positions[k]]]))
            by_index = np.argsort(idx0, kind="stable")
            _read_sections(path, offset, dtype, box, idx0[by_index], positions[by_index], out)
        return out


def _runs(sections: np.ndarray, dest: np.ndarray):
    """Split sorted ``sections`` into runs of consecutive sections: (start, stop) pairs, and
    whether each run's destinations are consecutive too."""
    breaks = np.flatnonzero(np.diff(sections) != 1) + 1
    bounds = np.concatenate([[0], breaks, [sections.size]]).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield a, b, bool(b - a == 1 or np.all(np.diff(dest[a:b]) == 1))


def _read_sections(path: str, offset: int, dtype: np.dtype, box: int, sections: np.ndarray,
                   dest: np.ndarray, out: np.ndarray) -> None:
    """``out[dest[i]] = stack[sections[i]]`` as float32 (``sections`` sorted), one read per
    run of consecutive sections; InputError for a short file or a non-finite pixel."""
    frame = box * box * dtype.itemsize
    native = dtype == np.dtype(np.float32)
    with open(path, "rb", buffering=0) as fh:
        for a, b, consecutive in _runs(sections, dest):
            if native and consecutive:
                block = out[dest[a]:dest[a] + (b - a)]           # straight into the output
            else:
                block = np.empty((b - a, box, box), dtype=dtype)
            _read_into(fh, offset + int(sections[a]) * frame, block, path)
            finite = np.isfinite(block).reshape(b - a, -1).all(axis=1)
            if not finite.all():
                k = int(np.flatnonzero(~finite)[0])
                bad = block[k][~np.isfinite(block[k])][0]
                index = int(sections[a + k]) + 1
                raise InputError(f"image {index} of the stack contains a non-finite pixel",
                                 file=path, field=f"image {index}", value=float(bad))
            if not (native and consecutive):
                out[dest[a:b]] = block


def _read_into(fh, position: int, block: np.ndarray, path: str) -> None:
    """Fill ``block`` with the bytes of ``fh`` at ``position`` (the GIL is released while the
    operating system reads)."""
    view = memoryview(block.reshape(-1).view(np.uint8))  # type: ignore[arg-type]   # numpy stubs: ndarray is a buffer
    fh.seek(position)
    done = 0
    while done < view.nbytes:
        got = fh.readinto(view[done:])
        if not got:
            raise InputError("particle stack is shorter than its header says", file=path,
                             field="data size", value=position + done)
        done += got
