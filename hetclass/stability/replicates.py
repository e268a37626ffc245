"""Replicate classifications through the engine: one ``prepare()``, many ``fit()``.

Randomness: one ``np.random.SeedSequence(seed)``; ``spawn(R)`` gives one child per
replicate (the same children for every K of a scan, so replicate r of K=2 and of K=3 see the
same particle subset). The child seeds the replicate's EM; its sub-stream
``SeedSequence(child.entropy, spawn_key=child.spawn_key + (1,))`` draws the replicate's
subset (``subsample``, clusterboot-style: each replicate classifies a random fraction of
the particles, and agreement is scored on the particles present in both replicates).

Replicates run concurrently in a thread pool: the engine's heavy NumPy/SciPy array work
releases the GIL and the per-dataset :class:`hetclass.engine.PreparedData` (images,
operators) is shared read-only, so threads scale without copying the data.

Example::

    prepared = engine.prepare(particles, options)
    run = run_replicates(prepared, options, k=3, n_replicates=5, seed=0, subsample=0.8)
    run.labels          # (5, n) int, -1 where a particle was left out of a replicate
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from ..errors import AbortRequested, InputError

SeedLike = Union[int, np.random.SeedSequence]


@dataclass
class ReplicateRun:
    """R replicate classifications with the same K.

    ``rows`` (n,) the particle indices (into the prepared data) the run covers; every
    per-particle array below is indexed like ``rows``. ``labels`` (R, n) int 0-based, -1
    where a particle was not in the replicate's subsample; ``posteriors`` (R, n, K) float32,
    0 where absent; ``maps`` (R, K, b, b, b) float32 class maps at the engine's cropped
    box and ``pixel_size_A``; ``half_maps`` (R, 2, K, b, b, b) float32; ``fsc`` (R, K, n_shells); ``resolution_A`` (R, K);
    ``histories`` per replicate the engine's per-iteration statistics (class fractions,
    changed %, ...); ``seconds`` (R,) wall time of each fit.
    """

    k: int
    rows: np.ndarray
    labels: np.ndarray
    posteriors: np.ndarray
    maps: np.ndarray
    half_maps: np.ndarray
    fsc: np.ndarray
    resolution_A: np.ndarray
    histories: List[List[dict]]
    seconds: np.ndarray
    pixel_size_A: float
    subsample: Optional[float]

    @property
    def n_replicates(self) -> int:
        return int(self.labels.shape[0])


def as_seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is None or int(seed) < 0:
        raise InputError("seed must be an integer >= 0", field="--seed", value=seed)
    return np.random.SeedSequence(int(seed))


def replicate_seeds(seed: SeedLike, n_replicates: int) -> List[np.random.SeedSequence]:
    """The R replicate children of the root ``SeedSequence`` (stateless: same every call)."""
    root = as_seed_sequence(seed)
    return [np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + (r,),
                                   pool_size=root.pool_size) for r in range(n_replicates)]


def analysis_seed(seed: SeedLike) -> np.random.SeedSequence:
    """Stream for the analysis (PAC pair sampling), apart from every replicate child."""
    root = as_seed_sequence(seed)
    return np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + (2 ** 31,),
                                  pool_size=root.pool_size)


def subsample_rows(child: np.random.SeedSequence, n: int, fraction: Optional[float]) -> np.ndarray:
    """Sorted positions (into 0..n-1) kept by one replicate: ``round(fraction * n)`` drawn
    without replacement, or all when ``fraction`` is None or 1."""
    if fraction is None or fraction >= 1.0:
        return np.arange(n)
    stream = np.random.SeedSequence(child.entropy, spawn_key=child.spawn_key + (1,),
                                    pool_size=child.pool_size)
    m = max(2, int(round(fraction * n)))
    return np.sort(np.random.default_rng(stream).choice(n, size=min(m, n), replace=False))


def validate_replicate_args(n_replicates: int, subsample: Optional[float]) -> None:
    if not isinstance(n_replicates, (int, np.integer)) or n_replicates < 2:
        raise InputError("stability needs at least 2 replicates", field="--replicates",
                         value=n_replicates)
    if subsample is not None and not (0.0 < subsample <= 1.0):
        raise InputError("must be a fraction in (0, 1]", field="--subsample", value=subsample)


def default_workers(n_replicates: int, workers: Optional[int] = None) -> int:
    """Concurrent replicates: ``workers`` if given, else one per core (at most R)."""
    if workers is None or workers < 1:
        workers = os.cpu_count() or 1
    return int(max(1, min(workers, n_replicates)))


def run_replicates(prepared, options, k: int, n_replicates: int = 5, seed: SeedLike = 0,
                   subsample: Optional[float] = None, rows: Optional[Sequence[int]] = None,
                   workers: Optional[int] = None, progress: Optional[Callable] = None,
                   abort_check: Optional[Callable] = None, fit: Optional[Callable] = None
                   ) -> ReplicateRun:
    """Classify ``rows`` (default every particle) ``n_replicates`` times with K = ``k``.

    ``prepared`` comes from :func:`hetclass.engine.prepare` (done once per dataset);
    ``options`` a :class:`hetclass.pipeline.ClassifyOptions` (its ``classes`` is replaced by
    ``k`` and its ``seed`` by the replicate seeds). ``progress`` receives the engine's
    events with ``replicate`` and ``k`` added, plus ``("replicate", k, replicate, done,
    total, seconds)`` when a replicate finishes; calls are serialised by a lock.
    ``abort_check`` is polled by every replicate; the first :class:`AbortRequested` stops
    the others at their next check and is re-raised. ``fit`` overrides the engine's
    ``fit`` (tests).
    """
    validate_replicate_args(n_replicates, subsample)
    if fit is None:
        from ..engine import fit
    n_total = prepared.data.n_total
    base = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64)
    n = base.size
    if k < 1 or k > n:
        raise InputError(f"number of classes must be between 1 and the {n} particles",
                         field="--classes", value=k)
    children = replicate_seeds(seed, n_replicates)
    keep = [subsample_rows(c, n, subsample) for c in children]
    opts = replace(options, classes=int(k))
    lock = threading.Lock()
    stop = threading.Event()
    done = [0]

    def make_progress(r):
        def forward(event, **info):
            if progress is not None:
                with lock:
                    progress(event, replicate=r, k=k, **info)
        return forward

    def check():
        if stop.is_set():
            raise AbortRequested("another replicate was stopped")
        if abort_check is not None:
            try:
                abort_check()
            except AbortRequested:
                stop.set()
                raise

    def one(r):
        t0 = time.perf_counter()
        res = fit(prepared, opts, seed=children[r], rows=base[keep[r]],
                  progress=make_progress(r), abort_check=check)
        seconds = time.perf_counter() - t0
        if progress is not None:
            with lock:
                done[0] += 1
                progress("replicate", k=k, replicate=r, done=done[0], total=n_replicates,
                         seconds=seconds)
        return res, seconds

    n_workers = default_workers(n_replicates, workers)
    if n_workers == 1:
        results = [one(r) for r in range(n_replicates)]
    else:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="replicate") as pool:
            futures = [pool.submit(one, r) for r in range(n_replicates)]
            try:
                results = [f.result() for f in futures]
            except BaseException:
                stop.set()
                raise

    labels = np.full((n_replicates, n), -1, dtype=np.int64)
    post = np.zeros((n_replicates, n, k), dtype=np.float32)
    for r, (res, _) in enumerate(results):
        labels[r, keep[r]] = np.asarray(res.labels, dtype=np.int64)
        post[r, keep[r]] = np.asarray(res.posteriors, dtype=np.float32)
    first = results[0][0]
    return ReplicateRun(
        k=int(k), rows=base, labels=labels, posteriors=post,
        maps=np.stack([np.asarray(res.maps, dtype=np.float32) for res, _ in results]),
        half_maps=np.stack([np.asarray(res.half_maps, dtype=np.float32) for res, _ in results]),
        fsc=np.stack([np.asarray(res.fsc) for res, _ in results]),
        resolution_A=np.stack([np.asarray(res.resolution_A, dtype=np.float64) for res, _ in results]),
        histories=[list(res.stats) for res, _ in results],
        seconds=np.array([s for _, s in results]), pixel_size_A=float(first.pixel_size_A),
        subsample=subsample)


def consensus_maps(run: ReplicateRun, perms: np.ndarray):
    """Mean over replicates of the class maps and half maps, in consensus class numbering.

    Returns ``(maps (K, b, b, b), half_maps (2, K, b, b, b))`` float32. ``perms`` (R, K)
    from :func:`hetclass.stability.matching.align_replicates`: class j of replicate r is
    consensus class ``perms[r, j]``.
    """
    maps = np.zeros(run.maps.shape[1:], dtype=np.float64)
    halves = np.zeros(run.half_maps.shape[1:], dtype=np.float64)
    for r in range(run.n_replicates):
        maps[perms[r]] += run.maps[r]
        halves[:, perms[r]] += run.half_maps[r]
    return ((maps / run.n_replicates).astype(np.float32),
            (halves / run.n_replicates).astype(np.float32))


def parse_k_range(text: Union[str, int, Sequence[int]]) -> List[int]:
    """``"4"`` -> [4]; ``"2-5"`` -> [2, 3, 4, 5]; a list stays a sorted list. InputError
    naming ``--classes`` otherwise."""
    if isinstance(text, (int, np.integer)):
        values = [int(text)]
    elif isinstance(text, str):
        s = text.strip()
        try:
            if "-" in s:
                lo, hi = (int(v) for v in s.split("-", 1))
                values = list(range(lo, hi + 1))
            else:
                values = [int(s)]
        except ValueError:
            raise InputError("expected K or KMIN-KMAX, e.g. 4 or 2-6", field="--classes",
                             value=text) from None
    else:
        values = sorted({int(v) for v in text})
    if not values or min(values) < 1:
        raise InputError("expected K or KMIN-KMAX with 1 <= KMIN <= KMAX", field="--classes",
                         value=text)
    return values
