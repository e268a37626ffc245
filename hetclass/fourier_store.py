"""Where the preprocessed particle arrays live: in RAM, or in a cropped Fourier cache on disk.

Every particle has ``M`` complex64 data coefficients and ``M`` float32 CTF values (12 bytes
per coefficient). A *store* holds them for one rank's particles (``FourierData.rows``) and
answers ``read(local_rows) -> (data (n, M) complex64, ctf (n, M) float32)``:

* :class:`MemoryStore`: two arrays in the local row order (the default).
* :class:`DiskStore`: rows read on demand with positional file reads (``os.preadv``) into
  fresh buffers, never memory-mapped, so the process's resident memory holds only the rows
  asked for (the operating system's page cache is not counted against it).

Cache directory (``--cache DIR``)::

    DIR/HETCLASS_FOURIER_CACHE           marker: this directory belongs to hetclass
    DIR/fourier-<key>/manifest.json      complete cache: fingerprint, parts, sizes
    DIR/fourier-<key>/part-0000.c64      rows of part 0, complex64, row-major (n_p, M)
    DIR/fourier-<key>/part-0000.f32      CTF of the same rows, float32 (n_p, M)
    DIR/.partial-<host>-<pid>-<token>/   a build in progress (never read)

A build writes into a ``.partial-*`` directory, writes the manifest last and renames the
directory to ``fourier-<key>``, so an interrupted build never looks complete. ``<key>`` is a
hash of the fingerprint (:func:`cache_fingerprint`: everything the cropped data depend on);
a later run with the same fingerprint reuses the cache, any other builds a new one and
removes the stale ones.

Layout: part ``p`` covers the global particle range ``[lo, hi)`` (under MPI one part per
rank of the building run); inside it, the half-set-1 particles come first, then half set 2,
each in input order. That is the order :class:`hetclass.workspace.Workspace` cuts batches
in, so a batch of any rank count is one contiguous slab per part it touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .io.atomic import atomic_write_text

FORMAT_VERSION = 2          # bump when the preprocessing or the file layout changes (2: by shell)
MARKER = "HETCLASS_FOURIER_CACHE"
MANIFEST = "manifest.json"
DATA_DTYPE = np.dtype(np.complex64)
CTF_DTYPE = np.dtype(np.float32)
BYTES_PER_COEFFICIENT = DATA_DTYPE.itemsize + CTF_DTYPE.itemsize   # 12
_BINARY = getattr(os, "O_BINARY", 0)


# ----- stores --------------------------------------------------------------------------------
class MemoryStore:
    """``data`` (n, M) complex64 and ``ctf`` (n, M) float32 in RAM, local row order."""

    in_memory = True
    path: Optional[str] = None

    def __init__(self, data: np.ndarray, ctf: np.ndarray):
        self.data = data
        self.ctf = ctf

    @classmethod
    def empty(cls, n: int, m: int) -> "MemoryStore":
        return cls(np.empty((n, m), DATA_DTYPE), np.empty((n, m), CTF_DTYPE))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.ctf.nbytes)

    def write(self, local_rows: np.ndarray, data: np.ndarray, ctf: np.ndarray) -> None:
        self.data[local_rows] = data
        self.ctf[local_rows] = ctf

    def read(self, local_rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return self.data[local_rows], self.ctf[local_rows]

    def close(self) -> None:
        pass


def _runs(part: np.ndarray, pos: np.ndarray):
    """(start, stop) index ranges over which ``part`` is constant and ``pos`` steps by 1."""
    if part.size == 0:
        return []
    brk = np.flatnonzero((np.diff(part) != 0) | (np.diff(pos) != 1)) + 1
    starts = np.concatenate([[0], brk])
    stops = np.concatenate([brk, [part.size]])
    return list(zip(starts.tolist(), stops.tolist()))


def _pread_into(fd: int, buf: np.ndarray, offset: int, lock: threading.Lock) -> None:
    view = memoryview(buf.reshape(-1).view(np.uint8))  # type: ignore[arg-type]   # numpy stubs: ndarray is a buffer
    done = 0
    while done < view.nbytes:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:   # no positional reads (Windows): seek + read under a lock
            with lock:
                os.lseek(fd, offset + done, os.SEEK_SET)
                chunk = os.read(fd, view.nbytes - done)
            view[done:done + len(chunk)] = chunk
            got = len(chunk)
        if got <= 0:
            raise OSError(f"cache file ended early at byte {offset + done}")
        done += got


def _pwrite_from(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(buf).reshape(-1).view(np.uint8))  # type: ignore[arg-type]   # numpy stubs: ndarray is a buffer
    done = 0
    while done < view.nbytes:
        if hasattr(os, "pwrite"):
            got = os.pwrite(fd, view[done:], offset + done)
        else:
            os.lseek(fd, offset + done, os.SEEK_SET)
            got = os.write(fd, view[done:])
        done += got


def part_layout(lo: int, hi: int, subset: np.ndarray) -> np.ndarray:
    """Global indices of part ``[lo, hi)`` in file order: half set 1, then 2, input order."""
    sub = np.asarray(subset[lo:hi])
    return np.concatenate([np.flatnonzero(sub == 1), np.flatnonzero(sub != 1)]) + int(lo)


def _file_positions(lo: int, hi: int, subset: np.ndarray) -> np.ndarray:
    """(hi - lo,) int64: position in the part's files of global particle ``lo + i``."""
    layout = part_layout(lo, hi, subset)
    where = np.empty(layout.size, dtype=np.int64)
    where[layout - lo] = np.arange(layout.size)
    return where


def _locate(parts: Sequence[Dict], rows: np.ndarray, subset: np.ndarray):
    """(part (n,) int32, position in the part's file (n,) int64) of global ``rows``."""
    los = np.array([p["lo"] for p in parts], dtype=np.int64)
    part = (np.searchsorted(los, rows, side="right") - 1).astype(np.int32)
    pos = np.empty(rows.size, dtype=np.int64)
    for p in np.unique(part):
        info, here = parts[int(p)], part == p
        if not info["lo"] <= rows[here].min() <= rows[here].max() < info["hi"]:
            raise ValueError("rows outside the cache's particle ranges")
        pos[here] = _file_positions(info["lo"], info["hi"], subset)[rows[here] - info["lo"]]
    return part, pos


def _bad_part_file(directory: str, parts: Sequence[Dict], m: int) -> Optional[str]:
    """Path of the first part file in ``directory`` that is missing or of the wrong size
    (``rows * m`` items), or None when all are complete."""
    for p in parts:
        for name, item in ((p["data"], DATA_DTYPE), (p["ctf"], CTF_DTYPE)):
            path = os.path.join(directory, name)
            try:
                if os.path.getsize(path) != p["rows"] * m * item.itemsize:
                    return path
            except OSError:
                return path
    return None


class DiskStore:
    """Rows of a cache's part files, read on demand (thread-safe; files held open).

    ``rows`` (n,) are the global indices of this rank's particles (local row ``i`` is global
    particle ``rows[i]``); ``subset`` (n_total,) the global half sets that fix the layout.
    ``temporary`` removes the directory when the store is closed (on POSIX the files are
    unlinked at once: they vanish when the process ends, even if it is killed).
    """

    in_memory = False

    def __init__(self, directory: str, parts: Sequence[Dict], m: int, rows: np.ndarray,
                 subset: np.ndarray, temporary: bool = False):
        self.path = directory
        self.m = int(m)
        self.parts = list(parts)
        self._lock = threading.Lock()
        self._fds: List[Tuple[int, int]] = []
        try:
            for p in self.parts:
                fd_x = os.open(os.path.join(directory, p["data"]), os.O_RDONLY | _BINARY)
                self._fds.append((fd_x, -1))
                fd_c = os.open(os.path.join(directory, p["ctf"]), os.O_RDONLY | _BINARY)
                self._fds[-1] = (fd_x, fd_c)
        except OSError as exc:
            self.close()
            raise InputError(f"cache file missing or unreadable ({exc.strerror}); under MPI "
                             "the cache must be on a file system every rank sees",
                             file=directory, field="--cache") from None
        self._part, self._pos = _locate(self.parts, np.asarray(rows, dtype=np.int64), subset)
        self.n = int(np.asarray(rows).size)
        self.temporary = bool(temporary)
        if self.temporary and os.name == "posix":
            shutil.rmtree(directory, ignore_errors=True)

    @property
    def nbytes(self) -> int:
        return self.n * self.m * BYTES_PER_COEFFICIENT

    def read(self, local_rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The rows ``local_rows`` in that order (read as contiguous runs of file order)."""
        local_rows = np.asarray(local_rows, dtype=np.int64).reshape(-1)
        if np.any(np.diff(local_rows) < 0):     # read in file order, then reorder
            order = np.argsort(local_rows, kind="stable")
            data, ctf = self.read(local_rows[order])
            back = np.argsort(order)
            return data[back], ctf[back]
        n = local_rows.size
        data = np.empty((n, self.m), DATA_DTYPE)
        ctf = np.empty((n, self.m), CTF_DTYPE)
        part, pos = self._part[local_rows], self._pos[local_rows]
        for start, stop in _runs(part, pos):
            fd_x, fd_c = self._fds[int(part[start])]
            first = int(pos[start])
            _pread_into(fd_x, data[start:stop], first * self.m * DATA_DTYPE.itemsize, self._lock)
            _pread_into(fd_c, ctf[start:stop], first * self.m * CTF_DTYPE.itemsize, self._lock)
        return data, ctf

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for pair in fds:
            for fd in pair:
                if fd >= 0:
                    os.close(fd)
        if getattr(self, "temporary", False) and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def load_into_memory(store: DiskStore, chunk_rows: int = 4096) -> MemoryStore:
    """Every local row of ``store`` in a :class:`MemoryStore` (local order); closes ``store``."""
    out = MemoryStore.empty(store.n, store.m)
    for start in range(0, store.n, chunk_rows):
        rows = np.arange(start, min(store.n, start + chunk_rows))
        out.data[rows], out.ctf[rows] = store.read(rows)
    store.close()
    return out


class PartWriter:
    """Writes the rows of one part (global range ``[lo, hi)``) into ``directory``."""

    def __init__(self, directory: str, index: int, lo: int, hi: int, subset: np.ndarray, m: int):
        self.info: Dict[str, Any] = {"index": int(index), "lo": int(lo), "hi": int(hi),
                     "data": f"part-{index:04d}.c64", "ctf": f"part-{index:04d}.f32",
                     "rows": int(hi - lo)}
        self.m = int(m)
        self._where = _file_positions(int(lo), int(hi), subset)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY
        self._fd_x = os.open(os.path.join(directory, self.info["data"]), flags, 0o644)
        self._fd_c = os.open(os.path.join(directory, self.info["ctf"]), flags, 0o644)
        os.ftruncate(self._fd_x, (hi - lo) * self.m * DATA_DTYPE.itemsize)
        os.ftruncate(self._fd_c, (hi - lo) * self.m * CTF_DTYPE.itemsize)

    def write(self, offsets: np.ndarray, data: np.ndarray, ctf: np.ndarray) -> None:
        """Global particles ``lo + offsets`` (n,) of this part (the local rows of a rank whose
        shard is the part): data (n, M) complex64, ctf (n, M) float32."""
        pos = self._where[np.asarray(offsets, dtype=np.int64)]
        for start, stop in _runs(np.zeros(pos.size, np.int32), pos):
            first = int(pos[start])
            _pwrite_from(self._fd_x, data[start:stop].astype(DATA_DTYPE, copy=False),
                         first * self.m * DATA_DTYPE.itemsize)
            _pwrite_from(self._fd_c, ctf[start:stop].astype(CTF_DTYPE, copy=False),
                         first * self.m * CTF_DTYPE.itemsize)

    def finish(self, sync: bool = True) -> Dict:
        """Close (after flushing to disk when ``sync``); returns the part's manifest entry."""
        for fd in (self._fd_x, self._fd_c):
            if sync:
                os.fsync(fd)
            os.close(fd)
        self._fd_x = self._fd_c = -1
        return dict(self.info)

    def abort(self) -> None:
        for fd in (self._fd_x, self._fd_c):
            if fd >= 0:
                os.close(fd)
        self._fd_x = self._fd_c = -1


# ----- fingerprint ---------------------------------------------------------------------------
def _hash_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.asarray(a)
        if a.dtype.kind in "OUS":
            h.update("\n".join(map(str, a.reshape(-1).tolist())).encode("utf-8"))
        else:
            a = np.ascontiguousarray(a)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        h.update(b"|")
    return h.hexdigest()


def _stack_stats(particles) -> str:
    """Hash of (resolved path, size, mtime) of every image stack the particles use."""
    from .io.images import _resolve, split_image_names
    _, stacks = split_image_names(particles.image_names)
    h = hashlib.sha256()
    for s in np.unique(stacks).tolist():
        path = os.path.abspath(_resolve(s, particles.project_dir))
        try:
            st = os.stat(path)
            h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8"))
        except OSError:
            h.update(f"{path}\tmissing\n".encode("utf-8"))
    return h.hexdigest()


def cache_fingerprint(particles, plan, coeffs, window_radius_px: float, mask_edge_px: float,
                      subset: np.ndarray) -> Dict:
    """Everything the cropped data and the cache's layout depend on (JSON-able dict).

    Particle metadata (image names, shifts, CTF parameters, optics), the image stacks' paths,
    sizes and modification times, the crop plan (box, pixel size, cropped box, shells), the
    image window (radius, edge), the half sets (they fix the layout) and the format version.
    """
    o = particles.optics
    from . import __version__
    return {
        "format": FORMAT_VERSION, "hetclass": __version__,
        "dtype": [DATA_DTYPE.str, CTF_DTYPE.str],
        "n_particles": int(len(particles)), "n_coefficients": int(coeffs.size),
        "box_px": int(plan.box_px), "pixel_size_A": float(plan.pixel_size_A),
        "crop_box_px": int(plan.crop_box_px), "data_shell": int(plan.data_shell),
        "target_shell": int(plan.target_shell),
        "window_radius_px": float(window_radius_px), "mask_edge_px": float(mask_edge_px),
        "metadata_sha256": _hash_arrays(
            particles.image_names, particles.shifts_A, particles.defocus_u_A,
            particles.defocus_v_A, particles.defocus_angle_deg, particles.phase_shift(),
            particles.bfactor(), particles.scale(), particles.optics_group, o.voltage_kV,
            o.cs_mm, o.amplitude_contrast, o.pixel_size_A, o.box_px),
        "subset_sha256": _hash_arrays(np.asarray(subset, dtype=np.int64)),
        "stacks_sha256": _stack_stats(particles),
    }


def fingerprint_key(fingerprint: Dict) -> str:
    text = json.dumps(fingerprint, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


# ----- cache directory -----------------------------------------------------------------------
class CacheDir:
    """A ``--cache`` directory (created when missing; see the module docstring).

    InputError (field ``--cache``) when the path is a file, or a non-empty directory that
    hetclass did not create (no marker file): it is never written into.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise InputError("cache path exists and is not a directory", file=self.path,
                             field="--cache")
        marker = os.path.join(self.path, MARKER)
        if os.path.isdir(self.path) and os.listdir(self.path) and not os.path.exists(marker):
            raise InputError("directory exists and is not a hetclass cache (no "
                             f"{MARKER} file); give a new or empty directory",
                             file=self.path, field="--cache")
        try:
            os.makedirs(self.path, exist_ok=True)
            if not os.path.exists(marker):
                with open(marker, "w", encoding="utf-8") as fh:
                    fh.write("Cropped Fourier cache of hetclass; safe to delete.\n")
        except OSError as exc:
            raise InputError(f"cannot create the cache directory ({exc.strerror})",
                             file=self.path, field="--cache") from None

    def find(self, fingerprint: Dict) -> Optional[Dict]:
        """The manifest of a complete cache with exactly this fingerprint, or None."""
        directory = os.path.join(self.path, "fourier-" + fingerprint_key(fingerprint))
        try:
            with open(os.path.join(directory, MANIFEST), encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (OSError, ValueError):
            return None
        if manifest.get("fingerprint") != fingerprint:
            return None
        m = int(fingerprint["n_coefficients"])
        if _bad_part_file(directory, manifest.get("parts", []), m) is not None:
            return None
        if sum(p["rows"] for p in manifest.get("parts", [])) != fingerprint["n_particles"]:
            return None
        manifest["path"] = directory
        return manifest

    def begin(self) -> str:
        """A new, empty build directory (``.partial-*``); leftovers of dead builds go."""
        self._remove_dead_partials()
        token = f".partial-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        build = os.path.join(self.path, token)
        os.makedirs(build)
        return build

    def commit(self, build: str, fingerprint: Dict, parts: Sequence[Dict],
               seconds: float) -> Dict:
        """Write the manifest into ``build`` and rename it to the final name (atomic);
        remove stale caches of other fingerprints. Returns the manifest."""
        key = fingerprint_key(fingerprint)
        parts = sorted(parts, key=lambda p: p["lo"])
        m = int(fingerprint["n_coefficients"])
        bad = _bad_part_file(build, parts, m)   # every rank's part arrived (a shared file system)
        if bad is not None:
            raise InputError("a rank's cache part is missing; under MPI the cache "
                             "must be on a file system every rank sees",
                             file=bad, field="--cache")
        manifest = {"fingerprint": fingerprint, "key": key, "parts": parts,
                    "bytes": int(sum(p["rows"] for p in parts) * m * BYTES_PER_COEFFICIENT),
                    "build_seconds": float(seconds)}
        atomic_write_text(os.path.join(build, MANIFEST), json.dumps(manifest, indent=1))
        final = os.path.join(self.path, "fourier-" + key)
        if os.path.isdir(final):   # a stale or concurrently built copy: ours replaces it
            shutil.rmtree(final, ignore_errors=True)
        os.rename(build, final)
        for name in os.listdir(self.path):
            if name.startswith("fourier-") and name != "fourier-" + key:
                shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
        manifest["path"] = final
        return manifest

    @staticmethod
    def abandon(build: str) -> None:
        """Remove an unfinished build directory."""
        shutil.rmtree(build, ignore_errors=True)

    def _remove_dead_partials(self) -> None:
        host = socket.gethostname()
        for name in os.listdir(self.path):
            if not name.startswith(f".partial-{host}-"):
                continue
            try:
                pid = int(name[len(f".partial-{host}-"):].split("-")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
            except (ValueError, OSError):
                pass


def open_cache(manifest: Dict, rows: np.ndarray, subset: np.ndarray) -> DiskStore:
    """A :class:`DiskStore` over a complete cache (``manifest`` from :meth:`CacheDir.find`)."""
    return DiskStore(manifest["path"], manifest["parts"],
                     manifest["fingerprint"]["n_coefficients"], rows, subset)
