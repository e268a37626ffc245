"""Time and memory of a run before it starts (``hetclass plan``, and the estimate the RELION
External job and the Scipion protocol log at start).

Cost model (seconds; ``n`` particles, ``M`` coefficients per particle after cropping, ``K``
classes, one process with ``threads`` E-step threads)::

    preprocess  = n * max(read_s_per_image, prep_s_per_image / prep_speedup(cores))
    iteration   = n * M * (estep_s_per_coef + K * estep_s_per_coef_class) / speedup
                                                               (threads, MPI ranks)
                  + fixed_s + K * fixed_s_per_class           (M-step, link, ...: per grid)
                  + n * M * build_s_per_coef                   (only when operators are not cached)
                  + n * M * 12 B / stream_GB_per_s             (only when the data stream from disk)
    fit(K)      = iterations(K) * iteration                    (refinement on all particles)
                  + (starts + moves) * (explore_iterations + 2) * iteration(min(n, explore_max))
                                       (exploration: hard starts on a subset, each with its
                                        initial reconstruction -- made from the subset too --
                                        and held-out score; with
                                        K >= 3 each merge-and-split move counts as one more)
    classify    = startup + preprocess + fit(K) + n * output_s_per_particle
    stability   = preprocess + sum over K >= 2 of R * fit(K) * replicate_factor
                               / replicate_parallelism
    exhaustive  = preprocess + per tree level R * (fit(2) [+ fit(3)]) * replicate_factor
                               / replicate_parallelism
                  (replicate_factor: one-start replicates measured against this model,
                   :data:`hetclass.cost_reference.REPLICATE_COST_FACTOR`)

The per-unit rates (:class:`Rates`) come from a probe on the user's own data
(:func:`hetclass.plan_probe.probe_rates`: a few hundred images preprocessed, a few EM
iterations timed) or, without a probe, from the reference machine of
:mod:`hetclass.cost_reference`; the iteration counts, thread and rank efficiencies come from
the reference (``benchmarks/bench_scale.py --fit-model`` refits them after an engine change).
Memory comes from :func:`hetclass.workspace.plan_memory`, the bound the engine itself obeys.
MPI ranks on ``P`` cores divide the per-particle terms by ``P * rank_efficiency(P)``; every
rank repeats the per-grid terms. One GPU is a model (an assumed E-step throughput), never a
measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

from . import cost_reference as ref
from .fourier_store import BYTES_PER_COEFFICIENT

GB = 2.0 ** 30


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work on one machine, for one crop (``n_coefficients``)."""

    read_s_per_image: float          # reading one image (in order, one thread)
    prep_s_per_image: float          # crop + CTF of one image, one thread
    prep_efficiency: float           # cropping speedup per doubling of threads, / 2
    estep_s_per_coef: float          # per particle and coefficient per iteration (K-free
                                     # part), one thread
    estep_s_per_coef_class: float    # per particle, coefficient and class per iteration,
                                     # one thread
    fixed_s: float                   # per iteration, independent of n (M-step and the like)
    fixed_s_per_class: float
    build_s_per_coef: float          # building the slice operator, per particle-coefficient
    thread_efficiency: float         # E-step speedup per doubling of --threads, / 2
    source: str                      # where they come from (probe / reference)


@dataclass(frozen=True)
class Workload:
    """What the particle file and the options imply (no image read)."""

    n_particles: int
    box_px: int
    pixel_size_A: float
    crop_box_px: int
    n_coefficients: int
    target_res_A: float


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_GB: float
    gpus: int = 0


@dataclass
class Estimate:
    """One run configuration: typical and worst-case (``--max-iter`` everywhere) time."""

    what: str
    options: str
    seconds: float
    seconds_max: float
    peak_GB: float
    fits_memory: bool
    note: str = ""


def workload_for(n_particles: int, box_px: int, pixel_size_A: float,
                 target_res_A: Optional[float] = None) -> Workload:
    """Crop box and coefficient count of a data set (as preprocessing would choose them)."""
    from .fourier import coefficient_set
    from .preprocess import plan_crop
    crop = plan_crop(int(box_px), float(pixel_size_A), target_res_A)
    m = coefficient_set(crop.crop_box_px, crop.data_shell).size
    return Workload(int(n_particles), int(box_px), float(pixel_size_A), crop.crop_box_px,
                    int(m), crop.target_res_A)


def local_machine() -> Machine:
    """Cores this process may use, physical memory, GPUs CuPy sees (0 without CuPy)."""
    import os

    from .fourier import cpu_workers
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    gpus = 0
    try:
        import cupy
        gpus = int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy or no driver: no GPU
        gpus = 0
    return Machine(cpu_workers(), float(memory), gpus)


def iterations(k: int, max_iter: int) -> float:
    """Typical EM iterations at ``k`` classes on the reference data (capped by max_iter)."""
    table = {int(key): float(v) for key, v in ref.ITERATIONS.items()}
    if k in table:
        typical = table[k]
    else:
        known = sorted(table)
        below = max([x for x in known if x <= k], default=known[0])
        above = min([x for x in known if x >= k], default=known[-1])
        typical = table[below] if above == below else (
            table[below] + (table[above] - table[below]) * (k - below) / (above - below))
    return float(min(typical, max_iter))


def thread_speedup(rates: Rates, threads: int) -> float:
    """E-step speedup of ``threads`` threads in one process (``2 * efficiency`` per doubling)."""
    t = max(1, int(threads))
    return float(t * rates.thread_efficiency ** math.log2(t))


def rank_efficiency(ranks: int) -> float:
    """Parallel efficiency of ``ranks`` MPI ranks: the reference's per doubling."""
    return float(ref.RANK_EFFICIENCY_PER_DOUBLING ** math.log2(max(ranks, 1)))


def iteration_seconds(rates: Rates, wl: Workload, k: int, n: Optional[int] = None,
                      in_memory: bool = True, operators_cached: float = 1.0,
                      ranks: int = 1, threads: int = 1) -> float:
    """One EM iteration over ``n`` particles (default all) with ``ranks`` MPI ranks of
    ``threads`` threads each; ``operators_cached``: the fraction of slice operators kept."""
    n = wl.n_particles if n is None else int(n)
    m = wl.n_coefficients
    per_particle = n * m * (rates.estep_s_per_coef + k * rates.estep_s_per_coef_class)
    per_particle += n * m * rates.build_s_per_coef * (1.0 - min(max(operators_cached, 0.0), 1.0))
    if not in_memory:
        per_particle += n * m * BYTES_PER_COEFFICIENT / (ref.STREAM_GB_PER_S * GB)
    per_particle /= thread_speedup(rates, threads) * max(ranks, 1) * rank_efficiency(ranks)
    return per_particle + rates.fixed_s + k * rates.fixed_s_per_class


def preprocess_seconds(rates: Rates, wl: Workload, cores: int) -> float:
    """Reading (one thread) and cropping (a thread per core) every image, at the same time:
    the slower of the two."""
    workers = max(1, int(cores))
    speedup = workers * rates.prep_efficiency ** math.log2(workers)
    return wl.n_particles * max(rates.read_s_per_image, rates.prep_s_per_image / speedup)


@dataclass(frozen=True)
class RunShape:
    """How a run is launched: memory bound, cache, ranks, threads, device."""

    max_memory_GB: Optional[float] = None
    cache: bool = False
    ranks: int = 1
    threads: int = 1
    gpu: bool = False

    def options(self) -> str:
        parts = []
        if self.ranks > 1:
            parts.append(f"mpirun -n {self.ranks}")
        if self.gpu:
            parts.append("--device gpu")
        parts.append(f"--threads {self.threads}")
        if self.max_memory_GB is not None:
            parts.append(f"--max-memory {self.max_memory_GB:g}")
        if self.cache:
            parts.append("--cache DIR")
        return " ".join(parts)


def memory_plan(wl: Workload, k: int, shape: RunShape, concurrent_fits: int = 1):
    """:class:`hetclass.workspace.MemoryPlan` of one rank, and its expected peak in bytes."""
    from .workspace import DEFAULT_CACHE_BYTES, OPERATOR_BYTES_PER_COEF, plan_memory
    n_local = -(-wl.n_particles // max(shape.ranks, 1))
    in_flight = 1 if shape.threads <= 1 else shape.threads + 1
    budget = shape.max_memory_GB if shape.max_memory_GB is not None else 1e6
    plan = plan_memory(budget, n_local, wl.n_particles, wl.n_coefficients, k, wl.crop_box_px,
                       wl.box_px, concurrent=concurrent_fits * in_flight,
                       base_bytes=ref.BASE_RSS_BYTES, preprocess_threads=shape.threads)
    ops = n_local * wl.n_coefficients * OPERATOR_BYTES_PER_COEF
    if shape.max_memory_GB is None:
        plan.operator_cache_bytes = DEFAULT_CACHE_BYTES
        # + one more batch working set: without a bound the allocator keeps freed work
        # arrays for reuse (hetclass.allocator)
        peak = (plan.fixed_bytes + plan.data_bytes + 2 * plan.batch_bytes
                + min(ops, DEFAULT_CACHE_BYTES))
    else:
        assert plan.budget_bytes is not None       # a budget was given
        # two batch working sets, as the plan reserves: freed arrays are kept for reuse
        peak = min(plan.budget_bytes, plan.fixed_bytes + 2 * plan.batch_bytes
                   + (plan.data_bytes if plan.data_in_memory else 0)
                   + (plan.operator_cache_bytes or 0))
    return plan, float(peak)


def _replicate_starts() -> int:
    """Exploration starts of one stability replicate (imported here, not at module level:
    the stability package pulls in scipy.stats, which a classify run never needs)."""
    from .stability.analysis import REPLICATE_STARTS
    return REPLICATE_STARTS


def fit_seconds(rates: Rates, wl: Workload, k: int, shape: RunShape, max_iter: int,
                concurrent_fits: int = 1, n: Optional[int] = None, starts: int = 3):
    """(typical, worst) seconds of one classification's EM (``starts`` exploration starts,
    then refinement), and the memory plan it assumes."""
    from .workspace import OPERATOR_BYTES_PER_COEF
    plan, peak = memory_plan(wl, k, shape, concurrent_fits)
    n_local = -(-wl.n_particles // max(shape.ranks, 1))
    ops = n_local * wl.n_coefficients * OPERATOR_BYTES_PER_COEF
    cached = min(1.0, (plan.operator_cache_bytes or 0) / max(ops, 1))
    if shape.gpu:
        m = wl.n_coefficients
        n_all = wl.n_particles if n is None else n
        it = n_all * m * k / ref.GPU_EVALS_PER_S + rates.fixed_s + k * rates.fixed_s_per_class
    else:
        it = iteration_seconds(rates, wl, k, n, plan.data_in_memory, cached, shape.ranks,
                               shape.threads)
    explore = 0.0
    explore_worst = 0.0
    if starts > 0 and k > 1:
        from .explore import EXPLORE_ITER, explore_size
        n_all = wl.n_particles if n is None else int(n)
        n_explore = min(n_all, explore_size(k))
        it_explore = it if n_explore == n_all else (
            iteration_seconds(rates, wl, k, n_explore, plan.data_in_memory, cached, shape.ranks,
                              shape.threads) if not shape.gpu else it * n_explore / n_all)
        from .split_merge import n_moves
        # a merge-and-split move refines like one more start (its split is on one class)
        runs = starts + n_moves(k)
        explore = runs * (min(EXPLORE_ITER, ref.EXPLORE_ITERATIONS) + 2) * it_explore
        explore_worst = runs * (EXPLORE_ITER + 2) * it_explore
    return (iterations(k, max_iter) * it + explore, max_iter * it + explore_worst,
            plan, peak)


def classify_estimate(rates: Rates, wl: Workload, k: int, shape: RunShape, machine: Machine,
                      max_iter: int = 25) -> Estimate:
    prep = preprocess_seconds(rates, wl, machine.cores)
    typical, worst, plan, peak = fit_seconds(rates, wl, k, shape, max_iter)
    out = ref.STARTUP_S + wl.n_particles * ref.OUTPUT_S_PER_PARTICLE
    total_peak = peak * max(shape.ranks, 1)
    note = "" if plan.data_in_memory else "data stream from the cache on disk"
    if shape.gpu:
        note = "GPU: modelled, not measured"
    return Estimate(f"classify K={k}", shape.options(), prep + typical + out,
                    prep + worst + out, total_peak / GB, total_peak <= machine.memory_GB * GB,
                    note)


def replicate_parallelism(shape: RunShape, machine: Machine, n_tasks: int,
                          jobs: Optional[int] = None) -> float:
    """Replicates effectively running at once (threads of one process share the cores)."""
    jobs = min(jobs or machine.cores, n_tasks)
    fit_cores = max(1, shape.threads) * max(1, shape.ranks)
    at_once = max(1.0, min(float(jobs), machine.cores / fit_cores))
    return max(1.0, at_once * ref.REPLICATE_EFFICIENCY)


def stability_estimate(rates: Rates, wl: Workload, k_values: Sequence[int], replicates: int,
                       shape: RunShape, machine: Machine, max_iter: int = 25,
                       jobs: Optional[int] = None, subsample: Optional[float] = None
                       ) -> Estimate:
    ks = [int(k) for k in k_values if int(k) >= 2]
    n = int(wl.n_particles * (subsample or 1.0))
    par = replicate_parallelism(shape, machine, replicates, jobs)
    concurrent = max(1, min(int(round(par)), replicates))
    typical = worst = 0.0
    peak = 0.0
    for k in ks:
        t, w, plan, p = fit_seconds(rates, wl, k, shape, max_iter, concurrent, n,
                                     starts=_replicate_starts())
        typical += replicates * t * ref.REPLICATE_COST_FACTOR / par
        worst += replicates * w * ref.REPLICATE_COST_FACTOR / par
        peak = max(peak, p)
    prep = preprocess_seconds(rates, wl, machine.cores)
    out = ref.STARTUP_S + wl.n_particles * ref.OUTPUT_S_PER_PARTICLE * 2
    label = f"stability K={min(k_values)}-{max(k_values)} R={replicates}"
    return Estimate(label, shape.options(), prep + typical + out, prep + worst + out,
                    peak * max(shape.ranks, 1) / GB,
                    peak * max(shape.ranks, 1) <= machine.memory_GB * GB,
                    f"{concurrent} replicate(s) at once")


def exhaustive_estimate(rates: Rates, wl: Workload, replicates: int, max_depth: int,
                        shape: RunShape, machine: Machine, max_iter: int = 25,
                        jobs: Optional[int] = None) -> Estimate:
    """Each tree level classifies (at most) all particles R times at K = 2, and at K = 3
    where K = 2 is not reproducible; the typical case counts K = 2 only on every level, the
    worst K = 2 and 3 at max_iter."""
    par = replicate_parallelism(shape, machine, replicates, jobs)
    concurrent = max(1, min(int(round(par)), replicates))
    t2, w2, _, peak = fit_seconds(rates, wl, 2, shape, max_iter, concurrent,
                                  starts=_replicate_starts())
    _, w3, _, peak3 = fit_seconds(rates, wl, 3, shape, max_iter, concurrent,
                                  starts=_replicate_starts())
    prep = preprocess_seconds(rates, wl, machine.cores)
    factor = ref.REPLICATE_COST_FACTOR
    typical = prep + max_depth * replicates * t2 * factor / par
    worst = prep + max_depth * replicates * (w2 + w3) * factor / par
    peak = max(peak, peak3) * max(shape.ranks, 1)
    return Estimate(f"exhaustive depth<={max_depth} R={replicates}", shape.options(), typical,
                    worst, peak / GB, peak <= machine.memory_GB * GB,
                    "every level classifies all particles")


def shapes_for(machine: Machine, wl: Workload, threads: Optional[int] = None) -> List[RunShape]:
    """Launch configurations worth comparing on ``machine``: in RAM; memory bounds with a
    cache (a quarter and a half of the memory); MPI ranks over the cores; one GPU."""
    t = max(1, int(threads or machine.cores))
    out = [RunShape(threads=t)]
    for fraction in (0.5, 0.25):
        bound = max(1.0, math.floor(machine.memory_GB * fraction))
        out.append(RunShape(max_memory_GB=bound, cache=True, threads=t))
    if machine.cores > 2:
        out.append(RunShape(ranks=machine.cores, threads=1, cache=True,
                            max_memory_GB=max(1.0, math.floor(machine.memory_GB * 0.8
                                                              / machine.cores))))
    if machine.gpus:
        out.append(RunShape(gpu=True, threads=t, cache=True))
    return out


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60:02d} min"
