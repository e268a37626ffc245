"""The plan as text: what a run will cost, for ``hetclass plan`` and for the front ends
(RELION External job, Scipion protocol), which log :func:`log_estimate` at start.

>>> lines = plan_lines(particles, options, "classify", [4])        # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from .errors import InputError
from .options import OPTIONS
from .plan import (
    Estimate,
    Machine,
    Rates,
    RunShape,
    Workload,
    classify_estimate,
    exhaustive_estimate,
    format_duration,
    iterations,
    local_machine,
    shapes_for,
    stability_estimate,
    workload_for,
)

MODES = ("classify", "stability", "exhaustive")


@dataclass
class PlanRequest:
    """What to estimate: the mode, K values and replicate settings of the run."""

    mode: str = "classify"
    k_values: Sequence[int] = (OPTIONS["classes"].default,)
    replicates: int = OPTIONS["replicates"].default
    max_depth: int = OPTIONS["max_depth"].default
    jobs: Optional[int] = None
    subsample: Optional[float] = None


def parse_duration_s(text: str) -> float:
    """``"3h"``, ``"2h30m"``, ``"90min"``, ``"45 m"`` or seconds -> seconds."""
    value = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(hours?|h|minutes?|min|m|seconds?|sec|s)", value)
    if not parts or "".join(a + b for a, b in parts) != value:
        raise InputError("a duration such as 3h, 2h30m or 90min", field="--budget", value=text)
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(a) * scale[b[0]] for a, b in parts)


def reference_rates(wl: Workload, threads: int) -> Rates:
    """Rates of the reference machine (:mod:`hetclass.cost_reference`) for this crop."""
    from . import cost_reference as ref
    r = ref.RATES
    return Rates(read_s_per_image=r["read_s_per_pixel"] * wl.box_px ** 2,
                 prep_s_per_image=r["prep_s_per_pixel"] * wl.box_px ** 2,
                 prep_efficiency=ref.PREP_EFFICIENCY_PER_DOUBLING,
                 estep_s_per_coef=r["estep_s_per_coef"],
                 estep_s_per_coef_class=r["estep_s_per_coef_class"],
                 fixed_s=r["fixed_s_per_voxel"] * (2 * wl.crop_box_px) ** 3,
                 fixed_s_per_class=r["fixed_s_per_voxel_class"] * (2 * wl.crop_box_px) ** 3,
                 build_s_per_coef=r["build_s_per_coef"],
                 thread_efficiency=r["thread_efficiency"],
                 source=f"reference machine ({ref.SOURCE}), not this one")


def estimates(rates: Rates, wl: Workload, machine: Machine, request: PlanRequest,
              shapes: Sequence[RunShape], max_iter: int) -> List[Estimate]:
    out = []
    for shape in shapes:
        try:
            if request.mode == "classify":
                out += [classify_estimate(rates, wl, k, shape, machine, max_iter)
                        for k in request.k_values]
            elif request.mode == "stability":
                out.append(stability_estimate(rates, wl, request.k_values, request.replicates,
                                              shape, machine, max_iter, request.jobs,
                                              request.subsample))
            else:
                out.append(exhaustive_estimate(rates, wl, request.replicates, request.max_depth,
                                               shape, machine, max_iter, request.jobs))
        except InputError:      # a memory bound below the minimum: not an option here
            continue
    return out


def table_lines(rows: Sequence[Estimate]) -> List[str]:
    head = ("run", "options", "typical", "at most", "peak memory", "")
    cells = [(e.what, e.options, format_duration(e.seconds), format_duration(e.seconds_max),
              f"{e.peak_GB:.1f} GB" + ("" if e.fits_memory else " (too much)"), e.note)
             for e in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in [head] + cells]


def header_lines(wl: Workload, machine: Machine, rates: Rates, request: PlanRequest,
                 max_iter: int) -> List[str]:
    its = ", ".join(f"K={k}: {iterations(k, max_iter):.0f}" for k in
                    sorted(set([k for k in request.k_values if k >= 2] or [2])))
    gpu = f"{machine.gpus} GPU(s)" if machine.gpus else "no GPU"
    return [
        f"{wl.n_particles} particles, box {wl.box_px} px at {wl.pixel_size_A:.3f} A/px: "
        f"cropped to {wl.crop_box_px} px (target {wl.target_res_A:.1f} A), "
        f"{wl.n_coefficients} coefficients per particle",
        f"machine: {machine.cores} cores, {machine.memory_GB:.1f} GB memory, {gpu}",
        f"rates ({rates.source}): reading {rates.read_s_per_image * 1e3:.2f} ms, cropping "
        f"{rates.prep_s_per_image * 1e3:.2f} ms per image per thread; E-step {rates.estep_s_per_coef * 1e9:.1f} ns per "
        f"particle-coefficient + {rates.estep_s_per_coef_class * 1e9:.1f} ns per class (one "
        f"thread; {2 * rates.thread_efficiency:.2f}x per doubling of threads); M-step "
        f"{rates.fixed_s:.2f} s + {rates.fixed_s_per_class:.2f} s per class per iteration",
        f"iterations: typical {its} (reference data), at most {max_iter} (--max-iter)"]


def budget_lines(rows: Sequence[Estimate], budget_s: float) -> List[str]:
    fit = [e for e in rows if e.seconds_max <= budget_s and e.fits_memory]
    maybe = [e for e in rows if e.seconds <= budget_s < e.seconds_max and e.fits_memory]
    out = [f"within {format_duration(budget_s)}:"]
    out += [f"  {e.what}, {e.options}: {format_duration(e.seconds)} "
            f"(at most {format_duration(e.seconds_max)})" for e in fit]
    out += [f"  {e.what}, {e.options}: {format_duration(e.seconds)} typically, "
            f"{format_duration(e.seconds_max)} at --max-iter" for e in maybe]
    if not fit and not maybe:
        out.append("  nothing here: use a GPU, more cores (MPI ranks), --subsample or fewer K")
    return out


PROBE_MIN_PARTICLES = 20000   # below this a run takes minutes: the reference rates will do


def run_shape(options, ranks: int = 1) -> RunShape:
    """The launch configuration ``options`` (ClassifyOptions) describe, on ``ranks`` ranks."""
    return RunShape(max_memory_GB=options.max_memory_GB, cache=options.cache_dir is not None,
                    ranks=max(1, int(ranks)), threads=max(1, int(options.threads or 1)),
                    gpu=options.device == "gpu")


def measured_rates(particles, options, request: PlanRequest, wl: Workload,
                   probe: Optional[bool] = None, log=None) -> Rates:
    """Probe rates (``probe`` None: when the set has at least PROBE_MIN_PARTICLES), else the
    reference machine's."""
    threads = max(1, int(options.threads or 1))
    if probe is None:
        probe = wl.n_particles >= PROBE_MIN_PARTICLES
    if not probe:
        return reference_rates(wl, threads)
    from .plan_probe import probe_rates
    ks = [k for k in request.k_values if k >= 2] or [2]
    if request.mode == "exhaustive":
        ks = [2, 3]
    return probe_rates(particles, options, threads=threads,
                       classes=(min(ks), max(max(ks), min(ks) + 2)), log=log)


def plan_lines(particles, options, request: PlanRequest, machine: Optional[Machine] = None,
               probe: Optional[bool] = True, shapes: Optional[Sequence[RunShape]] = None,
               budget_s: Optional[float] = None,
               log: Optional[Callable[[str], None]] = None) -> List[str]:
    """The plan for ``particles`` with ``options`` (ClassifyOptions): header, one row per
    launch configuration (the one ``options`` describe first), and what fits ``budget_s``."""
    if request.mode not in MODES:
        raise InputError(f"must be one of {', '.join(MODES)}", field="mode", value=request.mode)
    machine = machine or local_machine()
    wl = workload_for(len(particles), int(particles.box_px[0]),
                      float(particles.pixel_size_A[0]), options.target_res_A)
    rates = measured_rates(particles, options, request, wl, probe, log)
    own = run_shape(options)
    shapes = list(shapes) if shapes is not None else [own] + [
        s for s in shapes_for(machine, wl, own.threads) if s != own]
    rows = estimates(rates, wl, machine, request, shapes, options.max_iter)
    lines = header_lines(wl, machine, rates, request, options.max_iter) + [""] + table_lines(rows)
    if budget_s is not None:
        lines += [""] + budget_lines(rows, budget_s)
    return lines


def log_estimate(particles, options, request: PlanRequest, log: Callable[[str], None],
                 ranks: int = 1) -> None:
    """The estimate for the run as configured, one line per row, for the front ends' logs
    (the rates are probed on the data from PROBE_MIN_PARTICLES particles on, a few seconds).
    Never raises: a failed estimate is logged as such."""
    try:
        machine = local_machine()
        wl = workload_for(len(particles), int(particles.box_px[0]),
                          float(particles.pixel_size_A[0]), options.target_res_A)
        rates = measured_rates(particles, options, request, wl)
        for e in estimates(rates, wl, machine, request, [run_shape(options, ranks)],
                           options.max_iter):
            log(f"estimate: {e.what}: about {format_duration(e.seconds)} (at most "
                f"{format_duration(e.seconds_max)}), peak memory {e.peak_GB:.1f} GB; "
                f"{wl.n_particles} particles x {wl.n_coefficients} coefficients on "
                f"{machine.cores} cores, rates from the {rates.source.split(',')[0]} "
                f"(hetclass plan compares launch options)")
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a run
        log(f"estimate: not available ({type(exc).__name__}: {exc})")
