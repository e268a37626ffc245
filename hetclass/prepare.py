"""Data preparation: read every image once, preprocess (Fourier crop, mask, CTF) into a
store in RAM or on disk, reuse a preprocessed cache (:mod:`hetclass.fourier_store`), and plan
memory (:func:`hetclass.workspace.plan_memory`). The result, :class:`PreparedData`, is what
:func:`hetclass.engine.fit` classifies; the engine re-exports :func:`prepare`.

>>> prepared = prepare(particles, ClassifyOptions(classes=4))      # doctest: +SKIP
>>> prepared.data.cache_info                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import seeds
from .allocator import reuse_freed_memory
from .comm import SerialComm, shard_rows
from .em_step import shell_onehot
from .errors import InputError
from .fourier import cpu_workers, resize_volume
from .masks import soft_sphere
from .options import ClassifyOptions
from .particles import ParticleSet
from .preprocess import (
    MASK_EDGE_PX,
    FourierData,
    fill_store,
    fourier_data,
    image_window_radius_px,
    mask_radius_px,
    setup_preprocess,
)
from .progress import AbortCheck, Progress
from .workspace import Workspace, plan_memory


@dataclass
class PreparedData:
    """A dataset read and preprocessed once; shared by replicates."""

    particles: ParticleSet
    data: FourierData
    workspace: Workspace
    solvent_mask: np.ndarray          # (b, b, b) float32 at the cropped box
    focus_mask: Optional[np.ndarray]  # (b, b, b) float32 or None
    references: Optional[np.ndarray]  # (R, b, b, b) float32 or None
    data_power: np.ndarray            # (G, S) mean |X|^2 per optics group and shell
    ctf_power: np.ndarray             # (S,) mean CTF^2 per shell

    @property
    def pixel_size_A(self) -> float:
        return self.data.plan.crop_pixel_size_A


def validate_options(options: ClassifyOptions, n_particles: int) -> None:
    k = options.classes
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError("number of classes must be an integer >= 1", field="--classes", value=k)
    if k > n_particles:
        raise InputError(f"more classes than particles ({n_particles})", field="--classes", value=k)
    if options.max_iter < 1:
        raise InputError("must be >= 1", field="--max-iter", value=options.max_iter)
    if not isinstance(options.n_init, (int, np.integer)) or options.n_init < 1:
        raise InputError("must be an integer >= 1", field="--starts", value=options.n_init)
    if not options.tau2_fudge > 0:
        raise InputError("must be > 0", field="--tau2-fudge", value=options.tau2_fudge)
    if options.convergence_pct < 0:
        raise InputError("must be >= 0", field="--convergence", value=options.convergence_pct)
    if options.device not in ("cpu", "gpu", "auto"):
        raise InputError("must be cpu, gpu or auto", field="--device", value=options.device)
    if options.init not in ("random", "ref"):
        raise InputError("must be 'random' or 'ref'", field="--init", value=options.init)


def _load_mask(path: str, particles: ParticleSet, crop_box: int) -> np.ndarray:
    from .io.mrc import check_map_matches, read_map
    vol, _ = read_map(path)
    check_map_matches(path, vol, int(particles.box_px[0]), float(particles.pixel_size_A[0]))
    vol = np.clip(vol, 0.0, 1.0) if vol.max() <= 1.0 + 1e-3 else vol / vol.max()
    return np.clip(resize_volume(vol, crop_box), 0.0, 1.0).astype(np.float32)


def _data_power(ws: Workspace, comm):
    """Mean |X|^2 per optics group and shell (G, S) and mean CTF^2 per shell (S,), over every
    rank's particles; read batch by batch (the data may stream from disk)."""
    data = ws.data
    onehot = shell_onehot(data.coeffs.shell, ws.n_shells)
    counts = np.maximum(onehot.sum(0), 1)

    def local_sums():
        sums = np.zeros((data.n_groups, ws.n_shells))
        n_group = np.zeros(data.n_groups)
        ctf_sum = np.zeros(ws.n_shells)
        for bi in range(len(ws.batches)):
            x, c, grp = ws.batch_arrays(bi)
            power = (x.real ** 2 + x.imag ** 2) @ onehot      # (n, S) float32
            for g in np.unique(grp):
                sel = grp == g
                sums[g] += power[sel].sum(0, dtype=np.float64)
                n_group[g] += sel.sum()
            ctf_sum += ((c ** 2) @ onehot).sum(0, dtype=np.float64)
        return sums, n_group, ctf_sum

    sums, n_group, ctf_sum = comm.checked(local_sums)
    sums, n_group = comm.allreduce(sums), comm.allreduce(n_group)
    ctf_sum = comm.allreduce(ctf_sum)
    power = np.where(n_group[:, None] > 0, sums / np.maximum(n_group, 1)[:, None], 0.0) / counts
    ctf2 = ctf_sum / max(float(n_group.sum()), 1.0) / counts
    power[power <= 0] = max(float(power[power > 0].min()) if (power > 0).any() else 1.0, 1e-12)
    return power, np.maximum(ctf2, 1e-6)


def prepare(particles: ParticleSet, options: ClassifyOptions, progress: Optional[Progress] = None,
            abort_check: Optional[AbortCheck] = None,
            read_images: Optional[Callable[[np.ndarray], np.ndarray]] = None,
            comm: Optional[SerialComm] = None, concurrent_fits: int = 1) -> PreparedData:
    """Validate, read every image once and preprocess (Fourier crop, mask, CTF).

    With an MPI ``comm`` (:mod:`hetclass.comm`) each rank reads and preprocesses only its
    shard of the particles; errors on any rank are raised on every rank.

    ``options.cache_dir``: the cropped data are written once into this cache directory
    (:mod:`hetclass.fourier_store`) and reused, without reading any image, by later runs
    with the same inputs. ``options.max_memory_GB`` bounds this process's host memory
    (:func:`hetclass.workspace.plan_memory`): batch sizes, operator caching, and whether the
    data stay in RAM or stream from the cache (a temporary one, removed at the end, when no
    ``cache_dir`` is given). ``concurrent_fits``: how many ``fit`` calls will run at once
    in threads (replicates), each with its own maps and batch arrays within the budget.
    ``prepared.data.cache_info`` says what was done. The process's allocator keeps freed
    memory for reuse (:mod:`hetclass.allocator`; a memory bound's plan makes room for it).
    """
    comm = SerialComm() if comm is None else comm
    reuse_freed_memory()       # faster batches; a memory bound plans room for it
    prepared = _prepare(particles, options, progress, abort_check, read_images, comm,
                        concurrent_fits)
    prepared.data_power, prepared.ctf_power = _data_power(prepared.workspace, comm)
    return prepared


def _prepare(particles, options, progress, abort_check, read_images, comm,
             concurrent_fits=1) -> PreparedData:
    source = None
    try:
        setup, read, source, memory = comm.checked(_setup, particles, options, read_images,
                                                   comm, concurrent_fits)
        store, info = _make_store(setup, particles, options, memory, read, progress,
                                  abort_check, comm)
    finally:
        if source is not None:
            source.close()
    return comm.checked(_finish_prepare, particles, options, setup, store, info, memory, comm)


def _setup(particles, options, read_images, comm, concurrent_fits):
    """Checks, crop plan, half sets and memory plan (before any image is read)."""
    validate_options(options, len(particles))
    source = None
    if read_images is None:
        if particles.source.get("format") == "cs":
            from .io.cryosparc import require_stacks
            require_stacks(particles)
        from .io.images import ImageSource
        source = ImageSource(particles)
        try:
            source.validate()
        except BaseException:
            source.close()
            raise
        read_images = source.read      # maps nothing: no unmapping needed under a memory bound
    root = seeds.root(options.seed)      # an int seed: a fresh sequence to spawn from
    shard = shard_rows(len(particles), comm.size, comm.rank)
    setup = setup_preprocess(particles, options.target_res_A, options.particle_diameter_A,
                             root.spawn(1)[0], rows=shard)
    memory = plan_memory(options.max_memory_GB, setup.rows.size, setup.n_total,
                         setup.coeffs.size, options.classes, setup.plan.crop_box_px,
                         setup.plan.box_px, batch_size=options.batch_size,
                         concurrent=max(1, int(concurrent_fits)) * _batches_in_flight(options),
                         preprocess_threads=cpu_workers())
    return setup, read_images, source, memory


def _batches_in_flight(options) -> int:
    """Batches one fit holds at once: 1, or threads + 1 with ``--threads`` > 1."""
    threads = max(1, int(options.threads or 1))
    return 1 if threads == 1 else threads + 1


def _shard_range(setup) -> tuple:
    rows = setup.rows
    if rows.size and not np.array_equal(rows, np.arange(rows[0], rows[-1] + 1)):
        raise ValueError("a cache part needs a contiguous shard of particles")
    return (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)


def _make_store(setup, particles, options, memory, read_images, progress, abort_check, comm):
    """The store of this rank's data (in RAM or on disk) and a dict saying how it was made."""
    from . import fourier_store as fs
    n, m = setup.rows.size, setup.coeffs.size

    def fill(sink):
        fill_store(setup, particles, read_images, sink, memory.preprocess_batch, progress,
                   abort_check, memory.preprocess_threads)

    info = {"cache": "none", "data_in_memory": bool(memory.data_in_memory)}
    if memory.budget_bytes is not None:
        info["memory_plan_MB"] = memory.summary()
    if options.cache_dir is None:
        if memory.data_in_memory:
            store = fs.MemoryStore.empty(n, m)
            comm.checked(fill, store)
            return store, info
        info["cache"] = "temporary"
        return comm.checked(_temporary_store, setup, fill), info
    return _cache_dir_store(setup, particles, options, memory, fill, progress, comm, info)


def _write_part(setup, fill: Callable, directory: str, index: int, sync: bool):
    """Preprocess this rank's shard with ``fill`` into cache part ``index`` of ``directory``;
    its record (:class:`hetclass.fourier_store.PartWriter`), None for an empty shard."""
    from . import fourier_store as fs
    if setup.rows.size == 0:
        return None
    if not os.path.isdir(directory):
        raise InputError("cache directory not found on this rank's host; under MPI the "
                         "cache must be on a file system every rank sees",
                         file=directory, field="--cache")
    lo, hi = _shard_range(setup)
    writer = fs.PartWriter(directory, index, lo, hi, setup.subset, setup.coeffs.size)
    try:
        fill(writer)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(sync)


def _temporary_store(setup, fill: Callable):
    """This rank's own on-disk store in a temporary directory, removed when the store closes."""
    import shutil
    import tempfile

    from . import fourier_store as fs
    build = tempfile.mkdtemp(prefix="hetclass-cache-")
    try:
        part = _write_part(setup, fill, build, 0, False)
        return fs.DiskStore(build, [part] if part else [], setup.coeffs.size, setup.rows,
                            setup.subset, temporary=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _cache_dir_store(setup, particles, options, memory, fill: Callable, progress, comm, info: dict):
    """The store from ``options.cache_dir``: the cached data of these inputs, or built there
    now (every rank writes its part, rank 0 commits). Updates ``info``."""
    from . import fourier_store as fs

    def look():
        cache = fs.CacheDir(options.cache_dir)
        fingerprint = fs.cache_fingerprint(particles, setup.plan, setup.coeffs,
                                           image_window_radius_px(setup.plan), MASK_EDGE_PX,
                                           setup.subset)
        manifest = cache.find(fingerprint)
        return cache, fingerprint, manifest, None if manifest else cache.begin()

    cache, fingerprint, manifest, build = comm.checked(
        look if comm.is_root else lambda: (None,) * 4)
    manifest, build = comm.bcast_obj((manifest, build))
    info.update(cache="reused", cache_dir=os.path.abspath(options.cache_dir))
    if manifest is None:
        manifest, build_s = _build_cache(setup, fill, cache, fingerprint, build, comm)
        info.update(cache="built", cache_build_s=build_s)
    elif progress is not None:
        progress("message", text=f"reusing the preprocessed data in {manifest['path']}")
    info.update(cache_path=manifest["path"], cache_MB=float(manifest["bytes"]) / 2 ** 20)

    def open_store():
        store = fs.open_cache(manifest, setup.rows, setup.subset)
        return fs.load_into_memory(store) if memory.data_in_memory else store
    return comm.checked(open_store), info


def _build_cache(setup, fill: Callable, cache, fingerprint, build, comm):
    """Write every rank's part into the cache entry ``build`` and commit it on rank 0;
    ``(manifest, seconds)`` on every rank. The entry is abandoned on any error."""
    from . import fourier_store as fs
    t0 = time.time()
    try:
        part = comm.checked(_write_part, setup, fill, build, comm.rank, True)
        parts = [p for p in comm.allgather_obj(part) if p]
        manifest = comm.checked(
            (lambda: cache.commit(build, fingerprint, parts, time.time() - t0))
            if comm.is_root else lambda: None)
    except BaseException:
        if comm.is_root:
            fs.CacheDir.abandon(build)
        raise
    manifest = comm.bcast_obj(manifest)
    return manifest, float(time.time() - t0)


def _finish_prepare(particles, options, setup, store, info, memory, comm) -> PreparedData:
    data = fourier_data(setup, particles, store, cache_info=info)
    b = data.plan.crop_box_px
    solvent = (soft_sphere(b, mask_radius_px(data.diameter_A, data.plan), MASK_EDGE_PX)
               if options.solvent_mask is None
               else _load_mask(options.solvent_mask, particles, b))
    focus = None if options.focus_mask is None else _load_mask(options.focus_mask, particles, b)
    refs = None
    if options.references:
        from .io.mrc import check_map_matches, read_map
        loaded = []
        for path in options.references:
            vol, _ = read_map(path)
            check_map_matches(path, vol, int(particles.box_px[0]), float(particles.pixel_size_A[0]))
            loaded.append(resize_volume(vol, b))
        if len(loaded) not in (1, options.classes):
            raise InputError(f"give one reference or exactly {options.classes}",
                             field="--ref", value=len(loaded))
        refs = np.stack(loaded)
    ws = Workspace(data, max(options.classes, 2), batch_size=memory.batch_size,
                   cache_bytes=memory.operator_cache_bytes, comm=comm,
                   threads=options.threads)
    if options.device != "cpu":
        from .gpu import attach  # None for "auto" without a usable GPU
        ws.device_pass = attach(ws, options.device, classes=options.classes)
    # data_power and ctf_power: filled by prepare() once every rank has its store
    return PreparedData(particles, data, ws, solvent, focus, refs, np.zeros((0, 0)), np.zeros(0))
