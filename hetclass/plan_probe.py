"""A few-second probe of the cost model's rates (:class:`hetclass.plan.Rates`) on the user's
own particles and machine.

1. ``n_probe`` images (default 256, in 4 runs of consecutive particles spread over the file,
   as a run reads them) are read (seconds per image) and cropped with one thread and with
   every core (seconds per image, efficiency of the threads);
2. the slice operators of 4096 particles are built: seconds per particle-coefficient;
3. four EM iterations of ``engine.fit`` run on 256 and on 4096 particles (the probe images
   repeated) at two class counts; the shortest time between iteration events is one
   iteration (the least disturbed by other work on the machine); E-step passes alone (no
   M-step) are timed at the same four (n, K) points. The passes' differences between the two
   sizes give the per-particle-coefficient(-class) rates, the iterations minus that part the
   per-iteration fixed costs (M-step) of the model of :mod:`hetclass.plan` (:func:`_solve`);
   with several threads the largest point's passes run once more on one thread for the
   threads' speedup.

Nothing is written; the particles are not modified.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import Callable, Optional, Sequence

import numpy as np

from .plan import Rates

PROBE_SIZES = (256, 4096)
PROBE_ITERATIONS = 4


def probe_rows(n_total: int, n_probe: int = 256, runs: int = 4) -> np.ndarray:
    """``n_probe`` row indices in ``runs`` blocks of consecutive particles, evenly spread."""
    n_probe = int(min(n_probe, n_total))
    runs = max(1, min(runs, n_probe))
    size = -(-n_probe // runs)
    starts = np.linspace(0, max(n_total - size, 0), runs).astype(np.int64)
    rows = np.unique(np.concatenate([np.arange(s, min(s + size, n_total)) for s in starts]))
    return rows[:n_probe]


def _iteration_seconds(prepared, options, k: int, threads: int, state=None) -> float:
    """Shortest wall time of EM iterations 2..PROBE_ITERATIONS of one fit's refinement
    (from a random start, ``state`` if given: exploration would add its subset and split
    iterations, whose spacing is not one iteration over all the particles, and minutes)."""
    from .engine import fit, initial_state
    stamps = []

    def progress(event, **info):
        if event == "iteration":
            stamps.append(time.perf_counter())
    opts = replace(options, classes=int(k), max_iter=PROBE_ITERATIONS, convergence_pct=0.0,
                   threads=threads, seed=0)
    with warnings.catch_warnings():     # repeated probe images may empty a class: harmless
        warnings.simplefilter("ignore")
        fit(prepared, opts, progress=progress,
            state=initial_state(prepared, opts, 0) if state is None else state)
    return float(np.min(np.diff(stamps))) if len(stamps) > 1 else float("nan")


def _build_seconds(rotations: np.ndarray, coeffs, batch: int = 1024, repeats: int = 3) -> float:
    """Seconds per particle-coefficient to build a slice operator of one ``batch`` (the
    probe's rotations repeated), the fastest of ``repeats`` builds after a warm-up: the first
    build of a process pays for fresh memory (6x the rate of later ones on a 2-core VM)."""
    from .projector import slice_operator
    rot = rotations[np.resize(np.arange(len(rotations)), batch)]
    slice_operator(rot, coeffs, 2)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        slice_operator(rot, coeffs, 2)
        times.append(time.perf_counter() - t0)
    return float(min(times)) / (batch * coeffs.size)


def _pass_seconds(prepared, state, threads: int, repeats: int = 2) -> float:
    """Fastest of ``repeats`` E-step passes (after a warm-up) over ``prepared``'s particles
    against ``state``'s references on ``threads`` threads, in batches small enough that every
    thread has four: the per-particle work alone, without the M-step that
    :func:`_iteration_seconds` also times."""
    from .em import run_pass
    from .workspace import Workspace
    data = prepared.data
    k = state.refs.shape[1]
    batch = max(64, len(data) // (4 * max(threads, 1)))
    ws = Workspace(data, k, pad=prepared.workspace.pad, batch_size=batch, threads=threads)
    active = np.ones(len(data), bool)
    log_prior = np.log(np.full(k, 1.0 / k))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        run_pass(ws, state.refs, state.sigma2, log_prior, active, False)
        times.append(time.perf_counter() - t0)
    return float(min(times[1:]))


def _pass_efficiency(prepared, options, k: int, threads: int, state=None,
                     many: Optional[float] = None) -> float:
    """Per-doubling efficiency of ``threads`` E-step threads: the same passes timed on one
    thread and on ``threads`` (:func:`_pass_seconds`; ``many``: those on ``threads``,
    already timed against ``state``), ``(speedup / threads) ** (1 / log2(threads))``,
    within [0.3, 1]."""
    from .engine import initial_state
    if state is None:
        state = initial_state(prepared, replace(options, classes=int(k)), 0)
    one = _pass_seconds(prepared, state, 1)
    if many is None:
        many = _pass_seconds(prepared, state, threads)
    speedup = one / max(many, 1e-9)
    return float(np.clip((speedup / threads) ** (1.0 / np.log2(threads)), 0.3, 1.0))


def _solve(points, m: int):
    """``(a, b, c, d)`` of ``t = n*m*(a + b*k) + c + d*k`` from (n, k, iteration s, E-step
    pass s) points at two sizes and two class counts.

    The per-particle rates come from the E-step *passes* alone (the difference between the
    two sizes at each K: the pass's own fixed part, the references' transforms, cancels),
    the per-iteration fixed costs from the iterations minus that per-particle part. Solving
    the four iteration times for all four unknowns at once (as before) amplified the
    M-step's scatter into the per-particle rate: 31 to 192 ns per particle-coefficient in
    five probes of one data set. Negative values (noise) are clipped to zero.
    """
    sizes = sorted({p[0] for p in points})
    ks = sorted({p[1] for p in points})
    t_it = {(n, k): t for n, k, t, _ in points}
    t_pass = {(n, k): t for n, k, _, t in points}
    small, big = sizes[0], sizes[-1]
    rate = {k: (t_pass[big, k] - t_pass[small, k]) / max((big - small) * m, 1) for k in ks}
    lo, hi = ks[0], ks[-1]
    b = max((rate[hi] - rate[lo]) / (hi - lo), 0.0) if hi > lo else 0.0
    a = max(float(np.mean([rate[k] - b * k for k in ks])), 0.0)
    fixed = {k: float(np.mean([t_it[n, k] - n * m * (a + b * k) for n in sizes])) for k in ks}
    d = max((fixed[hi] - fixed[lo]) / (hi - lo), 0.0) if hi > lo else 0.0
    c = max(float(np.mean([fixed[k] - d * k for k in ks])), 0.0)
    return np.array([a, b, c, d])


def _preprocess_rates(sub, rows, options, read_images):
    """(read s/image, crop s/image on one thread, cropping efficiency per doubling of
    threads, the PreprocessSetup, the images) of the probe particles."""
    from .fourier import cpu_workers
    from .fourier_store import MemoryStore
    from .preprocess import fill_store, setup_preprocess
    t0 = time.perf_counter()
    if read_images is None:
        from .io.images import ImageSource
        with ImageSource(sub) as src:
            images = src.read()
    else:
        images = np.asarray(read_images(rows), dtype=np.float32)
    read = (time.perf_counter() - t0) / len(rows)
    setup = setup_preprocess(sub, options.target_res_A, options.particle_diameter_A,
                             np.random.SeedSequence(0))
    seconds = {}
    cores = cpu_workers()
    for threads in sorted({1, cores}):
        store = MemoryStore.empty(len(rows), setup.coeffs.size)
        t0 = time.perf_counter()
        fill_store(setup, sub, lambda r: images[r], store, batch_size=64, threads=threads)
        seconds[threads] = time.perf_counter() - t0
    efficiency = 1.0
    if cores > 1:
        speedup = seconds[1] / max(seconds[cores], 1e-9)
        efficiency = float(np.clip((speedup / cores) ** (1.0 / np.log2(cores)), 0.3, 1.0))
    return float(read), float(seconds[1] / len(rows)), efficiency, setup, images


def probe_rates(particles, options, threads: int = 1, n_probe: int = 256,
                classes: Sequence[int] = (2, 4), read_images: Optional[Callable] = None,
                log: Optional[Callable[[str], None]] = None) -> Rates:
    """Measure :class:`Rates` for ``particles`` with ``options`` (target resolution, mask) on
    this machine; the EM runs with ``threads`` threads. ``read_images(rows)`` replaces the
    image reader (tests)."""
    from .allocator import reuse_freed_memory
    from .engine import initial_state, prepare

    # the allocator as every run sets it (hetclass.prepare): operator builds measured on
    # fresh memory ran 1.6x slower than the run's (120k set: 109 against ~65 ns per coefficient)
    reuse_freed_memory()
    rows = probe_rows(len(particles), n_probe)
    sub = particles.take(rows)
    read, crop, prep_efficiency, setup, images = _preprocess_rates(sub, rows, options,
                                                                   read_images)
    m = setup.coeffs.size
    build = _build_seconds(np.asarray(sub.rotations), setup.coeffs)
    ks = sorted(set(int(k) for k in classes)) or [2]
    if len(ks) == 1:
        ks = [ks[0], ks[0] + 2]
    points = []
    base = replace(options, max_memory_GB=None, cache_dir=None, device="cpu",
                   classes=max(ks), threads=threads)
    for n in PROBE_SIZES:
        part = sub.take(np.resize(np.arange(len(rows)), n))
        prepared = prepare(part, base,
                           read_images=lambda r: images[np.asarray(r) % len(rows)])
        for k in (ks[0], ks[-1]):
            state = initial_state(prepared, replace(base, classes=k), 0)
            points.append((n, k, _iteration_seconds(prepared, base, k, threads, state),
                           _pass_seconds(prepared, state, threads)))
            if log is not None:
                log(f"probe: {n} particles, K={k}: {points[-1][2]:.2f} s per iteration, "
                    f"{points[-1][3]:.2f} s per E-step pass")
    coef = _solve(points, m)
    efficiency = 1.0
    if threads > 1:
        # the E-step passes of the largest point on one thread and on ``threads``: the
        # iterations' difference (fitted per-particle part against one more iteration on one
        # thread) read 0.6 per doubling on 2 cores where whole passes run 1.9x faster
        efficiency = _pass_efficiency(prepared, base, ks[-1], threads, state,
                                      many=points[-1][3])
    # one-thread per-particle rates: undo the measured speedup of ``threads``
    speedup = threads * efficiency ** np.log2(threads) if threads > 1 else 1.0
    a, b, c, d = coef
    return Rates(read_s_per_image=read, prep_s_per_image=crop, prep_efficiency=prep_efficiency,
                 estep_s_per_coef=float(a * speedup),
                 estep_s_per_coef_class=float(b * speedup), fixed_s=float(c),
                 fixed_s_per_class=float(d), build_s_per_coef=float(build),
                 thread_efficiency=float(efficiency),
                 source=f"probe on {len(rows)} of these particles, this machine, "
                        f"{threads} thread(s)")
