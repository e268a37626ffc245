"""Fit the cost model of hetclass.plan to bench_scale.py's records, check it, extrapolate.

``report_fit(records, write)`` (``bench_scale.py --fit-model [--write]``):

1. per data set of the records: the rates of :mod:`hetclass.plan` measured by the same probe
   ``hetclass plan`` runs (:func:`hetclass.plan_probe.probe_rates`, a few seconds, with the
   records' thread count);
2. from the records: typical iterations per K (classify runs and every stability replicate),
   the preprocessing thread efficiency (probe, one thread, vs the measured preprocessing),
   the output-writing time per particle, the concurrent-replicate efficiency (stability);
3. every record's measured time next to the model's prediction (the ``hetclass plan`` check:
   within +-30 %);
4. the extrapolation to 800k particles at box 256 on 2, 16 and 64 cores (MPI ranks) and one
   GPU (an assumed throughput: a model, not a measurement);
5. with ``write``: ``hetclass/cost_reference.py`` with the fitted constants.
"""

from __future__ import annotations

import datetime
import os
import statistics
from typing import Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_PY = os.path.join(os.path.dirname(HERE), "hetclass", "cost_reference.py")


def _datasets(records: List[dict]) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for r in records:
        if r.get("workdir"):
            out.setdefault(r["workdir"], []).append(r)
    return out


def _probe(workdir: str, recs: List[dict]):
    from hetclass.pipeline import ClassifyOptions, load_particles
    from hetclass.plan_probe import probe_rates
    threads = int(max((r.get("threads") or 1) for r in recs))
    ks = sorted({int(r["K"]) for r in recs if r.get("K")} | {2})
    particles = load_particles(os.path.join(workdir, "particles.star"), project_dir=workdir)
    options = ClassifyOptions(classes=max(ks), threads=threads)
    return particles, probe_rates(particles, options, threads=threads,
                                  classes=(min(ks), max(max(ks), min(ks) + 2)))


def _iterations(records: List[dict]) -> Dict[int, float]:
    per_k: Dict[int, List[int]] = {}
    for r in records:
        if r["step"] == "classify" and r.get("iterations"):
            per_k.setdefault(int(r["K"]), []).append(int(r.get("em_iterations")
                                                          or r["iterations"]))
        if r["step"] == "stability":
            for k, v in (r.get("per_k") or {}).items():
                per_k.setdefault(int(k), []).extend(int(i) for i in v.get("iterations") or [])
    return {k: float(statistics.median(v)) for k, v in sorted(per_k.items()) if v}


def _shape(r: dict):
    from hetclass.plan import RunShape
    return RunShape(max_memory_GB=r.get("max_memory_GB"), cache=not r.get("no_cache", False),
                    threads=int(r.get("threads") or 1))


def _predict(r: dict, rates, wl, machine) -> float:
    from hetclass.plan import classify_estimate, preprocess_seconds, stability_estimate
    if r["step"] == "preprocess":
        return preprocess_seconds(rates, wl, int(r.get("cores") or 1))
    if r["step"] == "classify":
        return classify_estimate(rates, wl, int(r["K"]), _shape(r), machine).seconds
    if r["step"] == "stability":
        return stability_estimate(rates, wl, r["k_values"], int(r["replicates"]), _shape(r),
                                  machine).seconds
    return float("nan")


def _measured(r: dict) -> float:
    return float(r.get("prepare_s") if r["step"] == "preprocess" else r.get("wall_s", np.nan))


def fit_constants(records: List[dict], probes: dict) -> dict:
    """The reference constants the records imply (see the module docstring)."""
    from hetclass import cost_reference as ref
    # measured K replace the reference's; K not measured keep the reference's value (the plan
    # interpolates between table entries, so dropping them would change every other K)
    found = {"ITERATIONS": {**{int(k): float(v) for k, v in ref.ITERATIONS.items()},
                            **_iterations(records)}}
    # start-up and outputs: what a classify run spends outside preprocessing and the EM
    pts = [(r["dataset"]["n"], max(0.0, r["wall_s"] - r["prep_s"] - r["em_s"]))
           for r in records if r["step"] == "classify" and r.get("em_s") is not None]
    if len({n for n, _ in pts}) > 1:
        slope, intercept = np.polyfit([n for n, _ in pts], [t for _, t in pts], 1)
        found["STARTUP_S"] = float(max(intercept, 0.0))
        found["OUTPUT_S_PER_PARTICLE"] = float(max(slope, 0.0))
    elif pts:
        found["OUTPUT_S_PER_PARTICLE"] = float(
            max(0.0, np.median([(t - ref.STARTUP_S) / n for n, t in pts])))
    big = max(probes.values(), key=lambda pr: int(pr[0].box_px[0]))[1]
    found["PREP_EFFICIENCY_PER_DOUBLING"] = float(big.prep_efficiency)
    found["_stability_records"] = [r for r in records if r["step"] == "stability"
                                   and r.get("workdir") in probes]
    return found


def _apply(constants: dict) -> None:
    from hetclass import cost_reference as ref
    for key, value in constants.items():
        if not key.startswith("_"):
            setattr(ref, key, value)


def check_lines(records: List[dict], probes: dict) -> List[str]:
    from hetclass.plan import local_machine, workload_for
    machine = local_machine()
    lines = ["record                         measured   model    model/measured"]
    for workdir, (_particles, rates) in probes.items():
        for r in [x for x in records if x.get("workdir") == workdir]:
            if r["step"] not in ("preprocess", "classify", "stability"):
                continue
            ds = r["dataset"]
            wl = workload_for(ds["n"], ds["box_px"], ds["pixel_size_A"])
            got, want = _predict(r, rates, wl, machine), _measured(r)
            name = f"{os.path.basename(workdir)} {r['step']}:{r.get('label') or ''}"
            lines.append(f"{name:30s} {want:8.0f} s {got:8.0f} s   {got / want:5.2f}")
    return lines


def extrapolation_lines(rates, iterations_note: str) -> List[str]:
    """800k particles, box 256 at 1 A/px (the default crop), on 2 / 16 / 64 cores and one GPU."""
    from hetclass.plan import Machine, RunShape, classify_estimate, format_duration, stability_estimate, workload_for
    wl = workload_for(800000, 256, 1.0)
    lines = [f"800k particles, box 256 (crop {wl.crop_box_px}, M = {wl.n_coefficients}); "
             f"{iterations_note}",
             f"{'machine':34s} {'classify K=4':>14s} {'classify K=8':>14s} "
             f"{'stability K1-6 R5':>18s}"]
    setups = [("2 cores, --threads 2", Machine(2, 64.0), RunShape(threads=2, cache=True)),
              ("16 cores, mpirun -n 16", Machine(16, 128.0),
               RunShape(ranks=16, threads=1, cache=True)),
              ("64 cores, mpirun -n 64", Machine(64, 512.0),
               RunShape(ranks=64, threads=1, cache=True)),
              ("1 GPU (MODEL, not measured)", Machine(16, 128.0),
               RunShape(gpu=True, threads=2, cache=True))]
    for name, machine, shape in setups:
        c4 = classify_estimate(rates, wl, 4, shape, machine).seconds
        c8 = classify_estimate(rates, wl, 8, shape, machine).seconds
        st = stability_estimate(rates, wl, range(1, 7), 5, shape, machine).seconds
        lines.append(f"{name:34s} {format_duration(c4):>14s} {format_duration(c8):>14s} "
                     f"{format_duration(st):>18s}")
    return lines


def reference_source(constants: dict, probes: dict) -> str:
    """The text of hetclass/cost_reference.py for ``constants`` (and the largest box's rates)."""
    from hetclass import cost_reference as ref
    workdir, (particles, rates) = max(probes.items(),
                                      key=lambda kv: int(kv[1][0].box_px[0]))
    from hetclass.plan import workload_for
    wl = workload_for(len(particles), int(particles.box_px[0]), float(particles.pixel_size_A[0]))
    voxels = (2 * wl.crop_box_px) ** 3
    r = {"read_s_per_pixel": rates.read_s_per_image / wl.box_px ** 2,
         "prep_s_per_pixel": rates.prep_s_per_image / wl.box_px ** 2,
         "estep_s_per_coef": rates.estep_s_per_coef,
         "estep_s_per_coef_class": rates.estep_s_per_coef_class,
         "fixed_s_per_voxel": rates.fixed_s / voxels,
         "fixed_s_per_voxel_class": rates.fixed_s_per_class / voxels,
         "build_s_per_coef": rates.build_s_per_coef,
         "thread_efficiency": rates.thread_efficiency}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    its = {int(k): round(float(v), 1) for k, v in constants["ITERATIONS"].items()}
    g = lambda key: constants.get(key, getattr(ref, key))  # noqa: E731
    rates_text = "".join(f"    {k!r}: {v:.4g},\n" for k, v in r.items())
    return f'''"""Reference constants of the cost model (:mod:`hetclass.plan`).

Written by ``python benchmarks/bench_scale.py --fit-model --write`` from the benchmark's
measurements; rerun it after an engine change. Hand-set values say so.
"""

SOURCE = "bench_scale fit of {when} on {os.cpu_count()} cores ({os.path.basename(workdir)})"
ENGINE = {ref.ENGINE!r}

# rates of the reference machine, used only without a probe (hetclass plan --no-probe)
RATES = {{
{rates_text}}}
# typical EM iterations to convergence by K (simulated benchmark data; --max-iter caps them)
ITERATIONS = {its!r}
EXPLORE_ITERATIONS = {g("EXPLORE_ITERATIONS")!r}                   # hand-set: hard iterations of one start
RANK_EFFICIENCY_PER_DOUBLING = {g("RANK_EFFICIENCY_PER_DOUBLING")!r}    # hand-set: bench_mpi.py, 2 ranks 1.75x
PREP_EFFICIENCY_PER_DOUBLING = {round(g("PREP_EFFICIENCY_PER_DOUBLING"), 3)!r}
REPLICATE_EFFICIENCY = {round(g("REPLICATE_EFFICIENCY"), 3)!r}
REPLICATE_COST_FACTOR = {g("REPLICATE_COST_FACTOR")!r}            # hand-set: bench_stability.py --ratio
STREAM_GB_PER_S = {g("STREAM_GB_PER_S")!r}                  # hand-set
OUTPUT_S_PER_PARTICLE = {g("OUTPUT_S_PER_PARTICLE"):.3g}
STARTUP_S = {round(g("STARTUP_S"), 2)!r}                           # imports, reading the STAR file
BASE_RSS_BYTES = {g("BASE_RSS_BYTES")!r}
GPU_EVALS_PER_S = {g("GPU_EVALS_PER_S")!r}                  # ASSUMED, not measured (one GPU)
'''


def report_fit(records: List[dict], write: bool = False) -> str:
    from hetclass import cost_reference as ref
    sets = _datasets(records)
    probes = {w: _probe(w, recs) for w, recs in sets.items()
              if any(r["step"] in ("classify", "preprocess", "stability") for r in recs)}
    if not probes:
        return "bench_scale: no records to fit (run the measurement steps first)"
    constants = fit_constants(records, probes)
    _apply(constants)
    stab = constants.pop("_stability_records")
    from hetclass.plan import local_machine, workload_for
    ratios = []
    for r in stab:
        particles, rates = probes[r["workdir"]]
        ds = r["dataset"]
        wl = workload_for(ds["n"], ds["box_px"], ds["pixel_size_A"])
        ref.REPLICATE_EFFICIENCY = 1.0
        ratios.append(_predict(r, rates, wl, local_machine()) / r["wall_s"])
    if ratios:
        constants["REPLICATE_EFFICIENCY"] = float(min(1.0, np.median(ratios)))
    _apply(constants)
    lines = ["fitted constants:"] + [f"  {k} = {v}" for k, v in constants.items()]
    for w, (_, rates) in probes.items():
        lines.append(f"  rates of {os.path.basename(w)}: {rates}")
    lines += ["", "model vs measurement:"] + check_lines(records, probes)
    big = max(probes.values(), key=lambda pr: int(pr[0].box_px[0]))[1]
    its = ", ".join(f"K={k}: {v:g}" for k, v in constants["ITERATIONS"].items())
    lines += ["", "extrapolation (model):"] + extrapolation_lines(big, f"iterations {its}")
    if write:
        text = reference_source(constants, probes)
        with open(REFERENCE_PY + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(REFERENCE_PY + ".tmp", REFERENCE_PY)
        lines.append(f"wrote {REFERENCE_PY}")
    return "\n".join(lines)
