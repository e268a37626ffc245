"""Independent classifications run side by side, and kept on disk for ``--continue``.

A *task* is one ``engine.fit`` (a replicate, a null classification, a sub-classification of
a class, a tree node's replicate), named by a string key (``"k3_r2"``, ``"null1_all"``, ...).
:func:`run_tasks` runs a list of them: in a thread pool without MPI (the engine's NumPy work
releases the GIL; the prepared data are shared read-only), or spread over MPI rank groups
(task i on group ``i mod G``) with every result gathered on every rank. Each task's seed is
fixed by its key, so results do not depend on the order tasks run in or on the grouping.

:class:`WorkCache` keeps every finished task in ``<out>/work/<key>.npz`` (written atomically
by world rank 0). A run continued with ``--continue`` loads the finished tasks instead of
running them again; loaded arrays are the saved bytes, so a run killed at any point and
continued ends with the same result as one that was never interrupted. The folder's
``manifest.json`` records what the work was made from (particle set, options, seed,
replicates); continuing with anything else is refused with one line. The folder is removed
once the run's outputs are written.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AbortRequested, InputError
from ..io.atomic import atomic_path, atomic_write_json

WORK_DIR = "work"
MANIFEST = "manifest.json"
_ARRAYS = ("labels", "posteriors", "maps", "half_maps", "fsc", "resolution_A", "sigma2",
           "position", "separation")

@dataclass
class FitSummary:
    """What the analysis keeps of one engine ``EMResult`` (picklable, global arrays; what a
    :class:`WorkCache` saves). Shapes as in :class:`hetclass.engine.EMResult`: ``labels``
    (n,) int64, ``posteriors`` (n, K) float32, ``maps`` (K, b, b, b) and ``half_maps``
    (2, K, b, b, b) float32, ``fsc`` (K, S), ``resolution_A`` (K,) float64, ``stats`` the
    per-iteration statistics, ``pixel_size_A`` of the maps. Set by some stages only:
    ``sigma2`` (G, S) the fitted noise (null), ``position`` / ``separation`` the split
    positions of a within-class fit (:func:`hetclass.stability.distinguish.split_positions`);
    ``resolution_status`` (K,) :data:`hetclass.fsc.RESOLUTION_MEASURED` etc. of
    ``resolution_A`` where the maps were rebuilt (not kept by the cache).
    """

    labels: np.ndarray
    posteriors: np.ndarray
    maps: np.ndarray
    half_maps: np.ndarray
    fsc: np.ndarray
    resolution_A: np.ndarray
    stats: list
    pixel_size_A: float
    sigma2: Optional[np.ndarray] = None
    position: Optional[np.ndarray] = None
    separation: Optional[np.ndarray] = None
    resolution_status: Optional[list] = None   # per class, where known (not saved)


TaskResult = Tuple[FitSummary, float]


def compact(res) -> FitSummary:
    """What the analysis needs of one engine ``EMResult`` (picklable, global arrays)."""
    return FitSummary(
        labels=np.asarray(res.labels, dtype=np.int64),
        posteriors=np.asarray(res.posteriors, dtype=np.float32),
        maps=np.asarray(res.maps, dtype=np.float32),
        half_maps=np.asarray(res.half_maps, dtype=np.float32),
        fsc=np.asarray(res.fsc), resolution_A=np.asarray(res.resolution_A, dtype=np.float64),
        stats=list(res.stats), pixel_size_A=float(res.pixel_size_A))


class WorkCache:
    """Finished tasks of one run in ``<out_dir>/work`` (see the module docstring).

    ``identity`` (JSON-ready) says what the work is made from; ``resume`` False starts a new
    folder (an old one is removed), True keeps the tasks of a matching one. Only ``writer``
    processes (world rank 0) touch the disk; the others get nothing from :meth:`get`.
    """

    def __init__(self, out_dir: str, identity: dict, resume: bool, writer: bool = True):
        self.path = os.path.join(os.fspath(out_dir), WORK_DIR)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.writer = bool(writer)
        if not self.writer:
            return
        manifest = os.path.join(self.path, MANIFEST)
        if resume and os.path.isfile(manifest):
            self._check(manifest)
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path, exist_ok=True)
        atomic_write_json(manifest, self.identity)

    def _check(self, manifest: str) -> None:
        try:
            with open(manifest, encoding="utf-8") as fh:
                saved = json.load(fh)
        except (OSError, ValueError):
            raise InputError("unreadable record of the interrupted run; use --overwrite",
                             file=manifest) from None
        if saved == self.identity:
            return
        key = next((k for k in sorted(set(saved) | set(self.identity))
                    if saved.get(k) != self.identity.get(k)), "options")
        raise InputError(f"the interrupted run used another {key}; continue with its inputs "
                         "and options, or use --overwrite", file=manifest, field=key)

    def _file(self, key: str) -> str:
        return os.path.join(self.path, f"{key}.npz")

    def get(self, key: str) -> Optional[TaskResult]:
        """The saved result of task ``key``, or None."""
        if not self.writer or not os.path.isfile(self._file(key)):
            return None
        try:
            with np.load(self._file(key)) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(bytes(arrays.pop("_meta")).decode())
        except Exception:     # a damaged file (disk full at the time): run the task again
            return None
        res = FitSummary(**arrays, stats=meta["stats"], pixel_size_A=meta["pixel_size_A"])
        return res, float(meta["seconds"])

    def put(self, key: str, result: TaskResult) -> None:
        if not self.writer:
            return
        res, seconds = result
        arrays = {k: getattr(res, k) for k in _ARRAYS if getattr(res, k, None) is not None}
        meta = {"stats": res.stats, "pixel_size_A": res.pixel_size_A, "seconds": seconds}
        arrays["_meta"] = np.frombuffer(json.dumps(meta, default=float).encode(), np.uint8)
        with atomic_path(self._file(key)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def remove(self) -> None:
        if self.writer:
            shutil.rmtree(self.path, ignore_errors=True)


def default_workers(n_tasks: int, workers: Optional[int] = None) -> int:
    """Concurrent tasks: ``workers`` if given, else one per core (at most ``n_tasks``)."""
    if workers is None or workers < 1:
        workers = os.cpu_count() or 1
    return int(max(1, min(workers, n_tasks)))


def run_tasks(keys: Sequence[str], one: Callable[[str, Callable], TaskResult],
              workers: Optional[int] = None, groups=None, cache: Optional[WorkCache] = None,
              on_done: Optional[Callable[[str, float, bool], None]] = None,
              abort_check: Optional[Callable] = None) -> Dict[str, TaskResult]:
    """Run ``one(key, check)`` for every key; ``{key: (result, seconds)}`` on every rank.

    ``check`` is the abort check to hand to the engine: the first
    :class:`~hetclass.errors.AbortRequested` stops the other tasks at their next check and is
    re-raised. ``on_done(key, seconds, loaded)`` after each task (under MPI on world rank 0,
    for every task, once the results are gathered). Tasks found in ``cache`` are not run.
    """
    keys = list(keys)
    mpi = groups is not None and groups.is_mpi
    found = _from_cache(keys, cache, groups if mpi else None)
    todo = [k for k in keys if k not in found]
    mine = [k for i, k in enumerate(todo) if not mpi or i % groups.count == groups.index]
    lock, stop = threading.Lock(), threading.Event()
    root = not mpi or groups.world.is_root

    check = _shared_check(stop, abort_check)

    def done(key, result, loaded):
        if cache is not None and root and not loaded:
            cache.put(key, result)
        if on_done is not None and root:
            on_done(key, result[1], loaded)

    for key in keys:
        if key in found:
            done(key, found[key], True)

    def task(key):
        t0 = time.perf_counter()
        res = one(key, check)
        result = (res, time.perf_counter() - t0)
        if not mpi:
            with lock:
                done(key, result, False)
        return result

    local, error = {}, None
    try:
        local = _run_local(mine, task, _local_workers(mine, workers, groups if mpi else None), stop)
    except Exception as exc:
        if not mpi:
            raise
        error = exc
    if not mpi:
        return {**found, **local}
    results = _gather(groups, found, local, error)
    for key in todo:
        done(key, results[key], False)
    return results


def _shared_check(stop: threading.Event, abort_check: Optional[Callable]) -> Callable[[], None]:
    """The abort check of every task: raises once ``stop`` is set, and sets it when
    ``abort_check`` raises :class:`~hetclass.errors.AbortRequested`."""
    def check() -> None:
        if stop.is_set():
            raise AbortRequested("another classification was stopped")
        if abort_check is not None:
            try:
                abort_check()
            except AbortRequested:
                stop.set()
                raise
    return check


def _local_workers(mine: List[str], workers: Optional[int], groups=None) -> int:
    """Threads for this rank's tasks ``mine``: one when its group (``groups`` under MPI) is
    itself an MPI communicator, else :func:`default_workers`."""
    serial_group = groups is None or not getattr(groups.group, "is_mpi", False)
    return default_workers(len(mine), workers) if serial_group and mine else 1


def _from_cache(keys: List[str], cache: Optional[WorkCache], groups=None) -> Dict[str, TaskResult]:
    """The tasks of ``keys`` already in ``cache``; under MPI (``groups``) world rank 0's view."""
    if cache is None:
        return {}
    found = {k: r for k in keys for r in [cache.get(k)] if r is not None}
    if groups is not None:
        found = groups.world.bcast_obj(found)
    return found


def _gather(groups, found: Dict[str, TaskResult], local: Dict[str, TaskResult],
            error: Optional[BaseException]) -> Dict[str, TaskResult]:
    """Every rank's results (each group's root sends its own) merged into ``found``; an error on
    any rank is raised on every rank."""
    groups.world.check(error)
    send = local if groups.group.is_root else {}
    results = dict(found)
    for part in groups.world.allgather_obj(send):
        results.update(part)
    return results


def _run_local(keys: List[str], task: Callable, n_workers: int,
               stop: threading.Event) -> Dict[str, TaskResult]:
    if n_workers == 1:
        return {k: task(k) for k in keys}
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="hetclass-task") as pool:
        futures = [pool.submit(task, k) for k in keys]
        try:
            return {k: f.result() for k, f in zip(keys, futures)}
        except BaseException:
            stop.set()
            raise
