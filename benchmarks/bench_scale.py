"""The user's scale: a large particle set, measured end to end on this machine.

Writes once into ``--workdir`` (reused by later calls; see ``scale_data.py``) a simulated set
laid out as RELION extraction writes it -- one stack of ~200 images per micrograph, poses and
CTFs like a consensus refinement's, several true states -- and measures, each step in its own
child process where memory matters:

* ``floor``: plain NumPy reading every stack file once (``np.fromfile``), and reading plus one
  ``numpy.fft.rfft2`` per image, in one thread: what any preprocessing has to pay;
* ``preprocess``: ``hetclass.engine.prepare`` (read, centre, Fourier-crop, mask, CTF; the
  cropping threads are the cores this process may use): images/s and the ratio to the floor;
* ``classify``: ``hetclass classify`` for each ``--classes`` value, with ``--max-memory`` and
  ``--cache`` (the first run builds the cache, later ones reuse it): time to result, EM time
  and iterations, peak RSS (``os.wait4``), adjusted Rand index against the truth;
* ``stability``: ``hetclass stability -R 5 --classes 1-6`` on the same cache: time per K,
  recommended K, ARI of the consensus labels.

Every measurement is appended to ``<workdir>/results.json`` with the command, the code
version and the load average before and after. ``--table`` prints them; ``--fit-model`` fits
the cost model of :mod:`hetclass.plan` to every record of the given work directories,
prints its extrapolation to 800k particles (2, 16, 64 cores; one GPU -- a model, not a
measurement), and with ``--write`` stores the fitted reference coefficients in
``hetclass/cost_reference.py`` (rerun after an engine change).

Examples::

    python benchmarks/bench_scale.py --workdir /work/bench_scale/b256_n200k --n 200000 \\
        --box 256 --pixel-size 1.0 --true-states 4 --dtype float16 --max-memory 8
    python benchmarks/bench_scale.py --workdir /work/bench_scale/b128_n120k --n 120000 \\
        --box 128 --pixel-size 1.5 --true-states 2 --classes 2 --max-memory 4 \\
        --steps floor,preprocess,classify --no-cache
    python benchmarks/bench_scale.py --table --workdir DIR1 --workdir DIR2
    python benchmarks/bench_scale.py --fit-model --write --workdir DIR1 --workdir DIR2
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import time
from typing import List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_classify import ari_vs_truth, code_version, run_child  # noqa: E402
from scale_data import dataset_params, make_dataset  # noqa: E402

MB = 2.0 ** 20
STEPS = ("data", "floor", "preprocess", "classify", "stability")
RESULTS = "results.json"


# ----- records -------------------------------------------------------------------------------
def load_records(workdir: str) -> List[dict]:
    path = os.path.join(workdir, RESULTS)
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)


def save_record(workdir: str, record: dict) -> None:
    """Append ``record`` (replacing an earlier one with the same step and label)."""
    records = [r for r in load_records(workdir)
               if (r["step"], r.get("label")) != (record["step"], record.get("label"))]
    record.setdefault("when_utc", datetime.datetime.now(datetime.timezone.utc)
                      .strftime("%Y-%m-%d %H:%M"))
    records.append(record)
    tmp = os.path.join(workdir, RESULTS + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(records, fh, indent=1)
    os.replace(tmp, os.path.join(workdir, RESULTS))


def _loads() -> float:
    return float(os.getloadavg()[0])


# ----- floor ---------------------------------------------------------------------------------
def _stack_files(data_dir: str) -> List[str]:
    return sorted(glob.glob(os.path.join(data_dir, "Particles", "*.mrcs")))


def _raw_stack(path: str):
    """(data (nz, ny, nx) as stored, bytes) of one MRC stack, read with plain NumPy."""
    header = np.fromfile(path, dtype="<i4", count=256)
    nx, ny, nz, mode = (int(v) for v in header[:4])
    dtype = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}[mode]
    data = np.fromfile(path, dtype=dtype, offset=1024 + int(header[23]))
    return data.reshape(nz, ny, nx), data.nbytes


def measure_floor(data_dir: str, with_fft: bool) -> dict:
    """Seconds to read every stack once (and to take one rfft2 per image), one thread."""
    load0 = _loads()
    t0 = time.perf_counter()
    n_bytes = n_images = 0
    for path in _stack_files(data_dir):
        data, nbytes = _raw_stack(path)
        n_bytes += nbytes
        n_images += data.shape[0]
        if with_fft:
            np.fft.rfft2(data.astype(np.float32), axes=(-2, -1))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": n_images, "GB": n_bytes / 2 ** 30,
            "images_per_s": n_images / seconds, "load_before": load0, "load_after": _loads()}


# ----- children ------------------------------------------------------------------------------
PREPARE_CHILD = """
import json, sys, time
from hetclass.engine import prepare
from hetclass.pipeline import ClassifyOptions, load_particles
star, project, memory, classes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
particles = load_particles(star, project_dir=project)
t1 = time.perf_counter()
opts = ClassifyOptions(classes=classes, max_memory_GB=None if memory == "none" else float(memory))
prepared = prepare(particles, opts)
t2 = time.perf_counter()
d = prepared.data
print(json.dumps({"load_s": t1 - t0, "prepare_s": t2 - t1, "n": len(particles),
                  "n_coefficients": int(d.coeffs.size), "crop_box_px": int(d.plan.crop_box_px),
                  "store": d.cache_info}))
"""


def _child(cmd: List[str], cwd: str, log: str) -> dict:
    """``run_child`` through a small launcher process, so that the measured peak RSS is the
    child's own (a child's ru_maxrss starts from its parent's size at fork)."""
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    return run_child([sys.executable, "-c", launcher, *cmd], cwd, log)


def measure_preprocess(ds: dict, runs: str, args) -> dict:
    log = os.path.join(runs, "preprocess.log")
    cmd = [sys.executable, "-c", PREPARE_CHILD, ds["star"], ds["project_dir"],
           "none" if args.max_memory is None else str(args.max_memory), str(max(args.classes))]
    m = _child(cmd, runs, log)
    with open(log) as fh:
        info = json.loads(fh.read().strip().splitlines()[-1])
    return dict(m, **info, images_per_s=info["n"] / info["prepare_s"],
                command=" ".join(cmd[:2] + ["<prepare child>"] + cmd[3:]))


def hetclass_cmd(command: str, ds: dict, out: str, args, extra: List[str]) -> List[str]:
    cmd = [sys.executable, "-m", "hetclass_standalone.main", command, "--particles", ds["star"],
           "--project-dir", ds["project_dir"], "--threads", str(args.threads), "--seed", "0",
           "--out", out, "--quiet"] + extra
    if args.max_memory is not None:
        cmd += ["--max-memory", f"{args.max_memory:g}"]
    if not args.no_cache:
        cmd += ["--cache", os.path.join(args.workdir, "cache")]
    return cmd + list(args.hetclass_arg)


def measure_classify(ds: dict, runs: str, k: int, args) -> dict:
    out = os.path.join(runs, f"classify_K{k}")
    cmd = hetclass_cmd("classify", ds, out, args, ["--classes", str(k), "--overwrite"])
    m = _child(cmd, runs, out + ".log")
    with open(os.path.join(out, "run.json")) as fh:
        info = json.load(fh)
    t = info.get("timings_s", {})
    store = info.get("data_store") or {}
    restarts = info.get("restarts") or []
    # EM iterations of every attempt, plus one per restart (its new initial reconstruction):
    # the count the cost model multiplies (hetclass.plan)
    em_iterations = (len(info.get("iterations", [])) + len(restarts)
                     + sum(int(r.get("after_iteration", 0)) for r in restarts))
    return dict(m, K=k, iterations=len(info.get("iterations", [])), em_iterations=em_iterations,
                restarts=len(restarts),
                prep_s=t.get("preprocess"), em_s=t.get("em"),
                n_coefficients=info.get("n_coefficients"), crop_box_px=info.get("crop_box_px"),
                target_res_A=info.get("target_resolution_A"), cache=store.get("cache"),
                data_in_memory=store.get("data_in_memory"),
                ari=ari_vs_truth(os.path.join(out, "run_data.star"), ds["truth"]),
                command=" ".join(cmd))


def measure_stability(ds: dict, runs: str, args) -> dict:
    out = os.path.join(runs, "stability")
    cmd = hetclass_cmd("stability", ds, out, args,
                       ["--classes", args.stability_classes, "--replicates",
                        str(args.replicates), "--overwrite"])
    m = _child(cmd, runs, out + ".log")
    with open(os.path.join(out, "summary.json")) as fh:
        summary = json.load(fh)
    per_k = {k: {"seconds": v.get("seconds"), "iterations": v.get("replicate_iterations")}
             for k, v in summary.get("per_k", {}).items()}
    return dict(m, k_values=summary["parameters"]["k_values"], replicates=args.replicates,
                per_k=per_k, timings=summary.get("timings_s"),
                recommended_k=summary.get("recommended_classes"),
                heterogeneity=summary.get("heterogeneity"),
                ari=ari_vs_truth(os.path.join(out, "consensus_data.star"), ds["truth"]),
                command=" ".join(cmd))


# ----- report --------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def table(records: List[dict]) -> str:
    """One line per record: what ran, its times, memory, accuracy and the load."""
    head = ("step", "n", "box", "K", "M", "iter", "prep_s", "em_s", "ttr_s", "img/s",
            "x_floor", "RSS_MB", "bound_GB", "ARI", "load")
    rows = []
    for r in records:
        ds = r.get("dataset", {})
        floor = r.get("floor_fft_s")
        rows.append((
            f"{r['step']}{':' + r['label'] if r.get('label') else ''}", str(ds.get("n", "-")),
            str(ds.get("box_px", "-")), str(r.get("K", "-")), str(r.get("n_coefficients", "-")),
            str(r.get("iterations", "-")), _f(r.get("prep_s", r.get("prepare_s"))),
            _f(r.get("em_s")),
            _f(r.get("wall_s", r.get("seconds"))), _f(r.get("images_per_s"), "{:.0f}"),
            _f(r["prepare_s"] / floor if floor and r["step"] == "preprocess" else None, "{:.2f}"),
            _f(r.get("peak_rss_bytes", 0) / MB if r.get("peak_rss_bytes") else None, "{:.0f}"),
            _f(r.get("max_memory_GB"), "{:g}"), _f(r.get("ari"), "{:.3f}"),
            f"{r.get('load_before', 0):.1f}/{r.get('load_after', 0):.1f}"))
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in rows]
    return "\n".join(lines)


# ----- main ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_scale", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", action="append", required=True,
                   help="data set, runs and results.json (outside the repository); repeat "
                        "with --table/--fit-model")
    d = p.add_argument_group("data set (written once)")
    d.add_argument("--n", type=int, default=200000)
    d.add_argument("--box", type=int, default=256)
    d.add_argument("--pixel-size", type=float, default=1.0)
    d.add_argument("--true-states", type=int, default=4)
    d.add_argument("--images-per-stack", type=int, default=200)
    d.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    d.add_argument("--seed", type=int, default=0)
    m = p.add_argument_group("measurements")
    m.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {STEPS}")
    m.add_argument("--classes", default="4,8", help="K of the classify runs (comma list)")
    m.add_argument("--stability-classes", default="1-6")
    m.add_argument("--replicates", type=int, default=5)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--max-memory", type=float, default=8.0, metavar="GB")
    m.add_argument("--no-cache", action="store_true", help="classify without --cache")
    m.add_argument("--hetclass-arg", action="append", default=[],
                   help="extra option for hetclass (repeat: --hetclass-arg=--target-res ...)")
    r = p.add_argument_group("reports")
    r.add_argument("--table", action="store_true", help="print the recorded results")
    r.add_argument("--fit-model", action="store_true",
                   help="fit the cost model to the recorded results and extrapolate")
    r.add_argument("--write", action="store_true",
                   help="with --fit-model: write hetclass/cost_reference.py")
    return p


def run_steps(args) -> None:
    workdir = args.workdir[0]
    args.workdir = workdir
    args.classes = [int(k) for k in str(args.classes).split(",") if k.strip()]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"bench_scale: unknown step(s) {sorted(unknown)}")
    params = dataset_params(args.n, args.box, args.pixel_size, args.true_states,
                            args.images_per_stack, args.dtype, args.seed)
    ds = make_dataset(workdir, params, threads=args.threads)
    runs = os.path.join(workdir, "runs")
    os.makedirs(runs, exist_ok=True)
    base = {"dataset": params, "workdir": os.path.abspath(workdir), "threads": args.threads,
            "cores": len(os.sched_getaffinity(0)), "max_memory_GB": args.max_memory,
            "no_cache": bool(args.no_cache), "code": code_version()}
    if "data" in steps and ds["sim_s"] > 0:
        save_record(workdir, dict(base, step="data", seconds=ds["sim_s"]))
    floor = {r.get("label"): r for r in load_records(workdir) if r["step"] == "floor"}
    if "floor" in steps:
        for label, fft in (("read", False), ("read+fft", True)):
            floor[label] = dict(base, step="floor", label=label,
                                **measure_floor(workdir, fft),
                                command=f"bench_scale.measure_floor(with_fft={fft})")
            save_record(workdir, floor[label])
            print(table([floor[label]]), flush=True)
    floor_fft = floor.get("read+fft", {}).get("seconds")
    if "preprocess" in steps:
        rec = dict(base, step="preprocess", floor_fft_s=floor_fft,
                   floor_read_s=floor.get("read", {}).get("seconds"),
                   **measure_preprocess(ds, runs, args))
        save_record(workdir, rec)
        print(table([rec]), flush=True)
    if "classify" in steps:
        for k in args.classes:
            rec = dict(base, step="classify", label=f"K{k}", **measure_classify(ds, runs, k, args))
            save_record(workdir, rec)
            print(table([rec]), flush=True)
    if "stability" in steps:
        rec = dict(base, step="stability", label=f"K{args.stability_classes}R{args.replicates}",
                   **measure_stability(ds, runs, args))
        save_record(workdir, rec)
        print(table([rec]), flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table or args.fit_model:
        records = [r for w in args.workdir for r in load_records(w)]
        if args.table:
            print(table(records))
        if args.fit_model:
            from scale_model import report_fit
            print(report_fit(records, write=args.write))
        return 0
    run_steps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
