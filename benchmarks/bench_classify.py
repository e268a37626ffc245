"""Benchmark ``hetclass classify`` against ``relion_refine --skip_align`` on the same data.

Generates synthetic particles with known truth (or takes ``--star`` and an optional
``--truth`` CSV), runs ``hetclass classify`` in a child process and, where ``relion_refine`` is
on PATH (and not ``--no-relion``), RELION 3.1's fixed-pose Class3D on the same particles with
the same K, T = 4 and thread count. Prints one table row per run and, per data set, the ratios
RELION / hetclass; ``--json`` also writes them to a file.

Measured per run:

* wall time of the child(ren): ``preprocess_s`` (hetclass: reading + Fourier cropping from its
  run.json; RELION: ``relion_reconstruct`` of the reference + refine start-up until
  ``run_it000`` is written), ``s_per_iter`` (hetclass: EM time / iterations; RELION: time
  between ``run_it000`` and the last ``run_itNNN_model.star`` / iterations) and
  ``time_to_result_s`` (everything, start-up and output writing included);
* ``cpu_s``: user + system CPU seconds of the child(ren) (cpu_s / total_s < threads means
  the run did not keep its threads busy, or the machine was shared);
* ``peak_rss_MB``: the child's own peak resident set size, from ``os.wait4`` (stdlib);
  ``dev_MB``: hetclass's peak GPU memory (``--device gpu``; from its run.json);
* ``throughput``: particles x classes x Fourier coefficients per second of one iteration
  (hetclass only; ``M`` = coefficients kept after Fourier cropping);
* ``cropped_MB`` = n x M x 8 bytes (complex64), and ``rss_ok``: peak RSS <= cropped + 1 GB;
* ``ARI`` of the final labels against the truth (rows matched by rlnImageName);
* the 1-minute load average before / after each child (the machine may be shared).

Examples::

    python benchmarks/bench_classify.py --n 8000 --box 64 --classes 4 --threads 2
    python benchmarks/bench_classify.py --n 2000,4000,8000 --classes 4 --threads 2 --no-relion
    python benchmarks/bench_classify.py --star P.star --truth truth.csv --classes 3 --no-relion
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import starfile

PHYSICAL_BOX_A = 192.0          # default pixel size = this / box (the phantom is ~160 A across)
MB = 1024.0 ** 2
# (phantom state, hinge deg) of the first K classes: K=2 is phantom_states("two"), K=3 is
# phantom_states("demo") (open, closed, no_subunit), then more hinge positions, then
# subunit-less variants. (A 2x2 design -- hinge 0/30 x subunit D present/absent -- as K=4
# sends both RELION and hetclass into the same local optimum; see benchmarks/README.md.)
STATES = [("open", 0.0), ("open", 30.0), ("no_subunit", 0.0), ("open", -30.0),
          ("open", 60.0), ("no_subunit", 30.0), ("no_subunit", -30.0), ("no_subunit", 60.0),
          ("open", 90.0), ("no_subunit", 90.0)]


# ----- data ----------------------------------------------------------------------------------
def default_populations(k: int) -> np.ndarray:
    """Unequal fractions, linear from 2:1 (largest : smallest), normalised. ``(k,)``."""
    w = np.linspace(2.0, 1.0, k) if k > 1 else np.ones(1)
    return w / w.sum()


def make_dataset(out_dir: str, n: int, box_px: int, k: int, snr: float, pixel_size_A: float,
                 seed: int, populations: Optional[Sequence[float]] = None) -> Dict[str, str]:
    """Simulate ``n`` particles of ``k`` phantom states into ``out_dir`` (reused if present).

    Returns ``{"star": particles.star, "truth": truth.csv, "sim_s": seconds}``.
    """
    from hetclass.phantoms import phantom_model
    from hetclass.simulate import simulate_dataset

    if not 1 <= k <= len(STATES):
        raise SystemExit(f"bench_classify: synthetic data supports 1..{len(STATES)} classes, "
                         f"got {k}")
    pops = default_populations(k) if populations is None else np.asarray(populations, float)
    params = dict(n=n, box_px=box_px, k=k, snr=snr, pixel_size_A=pixel_size_A, seed=seed,
                  populations=[round(float(p), 6) for p in pops])
    marker = os.path.join(out_dir, "bench_params.json")
    star, truth = os.path.join(out_dir, "particles.star"), os.path.join(out_dir, "truth.csv")
    if os.path.exists(marker) and os.path.exists(star) and os.path.exists(truth):
        with open(marker) as fh:
            if json.load(fh) == params:
                return {"star": star, "truth": truth, "sim_s": 0.0}
    states = {f"{name}_h{int(h)}": phantom_model(name, hinge_deg=h) for name, h in STATES[:k]}
    t0 = time.time()
    simulate_dataset(out_dir, states, pops, n_particles=n, box_px=box_px,
                     pixel_size_A=pixel_size_A, snr=snr, seed=seed)
    with open(marker, "w") as fh:
        json.dump(params, fh)
    return {"star": star, "truth": truth, "sim_s": time.time() - t0}


def simulate_in_child(*args) -> Dict[str, str]:
    """:func:`make_dataset` in a fresh process: on Linux a child's ``ru_maxrss`` starts from
    its parent's size at fork, so the benchmark process must stay small for the children's
    peak RSS to be their own."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(make_dataset, args)


def star_info(star: str) -> Dict[str, float]:
    """Particle count, box and pixel size of a RELION 3.1 (or 3.0) particle STAR."""
    blocks = starfile.read(star, always_dict=True)
    parts = blocks.get("particles", next(iter(blocks.values())))
    optics = blocks.get("optics")
    src = optics if optics is not None else parts
    box = int(src["rlnImageSize"].iloc[0]) if "rlnImageSize" in src else None
    if "rlnImagePixelSize" in src:
        psize = float(src["rlnImagePixelSize"].iloc[0])
    elif "rlnDetectorPixelSize" in src:
        psize = (float(src["rlnDetectorPixelSize"].iloc[0]) * 1e4
                 / float(src["rlnMagnification"].iloc[0]))
    else:
        psize = None
    return {"n": int(len(parts)), "box_px": box, "pixel_size_A": psize}


def ari_vs_truth(data_star: str, truth_csv: Optional[str]) -> Optional[float]:
    """ARI of rlnClassNumber in ``data_star`` against truth.csv's state_index (by image name)."""
    if not truth_csv or not os.path.exists(data_star):
        return None
    from hetclass.stability.scores import adjusted_rand_index

    parts = starfile.read(data_star, always_dict=True)["particles"]
    truth = pd.read_csv(truth_csv).set_index("image_name")["state_index"]
    true = truth.reindex(parts["rlnImageName"].astype(str).values)
    ok = true.notna().values
    if not ok.any():
        return None
    return float(adjusted_rand_index(true.values[ok].astype(np.int64),
                                     parts["rlnClassNumber"].values[ok].astype(np.int64)))


# ----- children ------------------------------------------------------------------------------
def run_child(cmd: List[str], cwd: str, log_path: str) -> Dict[str, float]:
    """Run ``cmd``; stdout+stderr to ``log_path``. Wall time, the child's peak RSS, load."""
    load0 = os.getloadavg()[0]
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    if proc.returncode != 0:
        with open(log_path, errors="replace") as fh:
            tail = fh.read()[-2000:]
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode} (log {log_path}):\n{tail}")
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"wall_s": wall, "peak_rss_bytes": float(rss), "load_before": load0,
            "load_after": os.getloadavg()[0], "cpu_s": usage.ru_utime + usage.ru_stime}


def n_coefficients(run_info: dict, box_px: int, pixel_size_A: float) -> int:
    """Fourier coefficients per particle after cropping: from run.json, else recomputed from
    the crop box and target resolution recorded there."""
    if "n_coefficients" in run_info:
        return int(run_info["n_coefficients"])
    from hetclass.fourier import coefficient_set
    from hetclass.preprocess import plan_crop

    plan = plan_crop(box_px, pixel_size_A, run_info.get("target_resolution_A"))
    crop = int(run_info.get("crop_box_px", plan.crop_box_px))
    shell = plan.data_shell if crop == plan.crop_box_px else crop // 2 - 2
    return coefficient_set(crop, shell).size


def mpi_launcher(ranks: int, threads: int):
    """``(launcher, threads per rank)``: ``mpirun -n ranks`` with ``threads`` divided between
    the ranks (the same number of cores in all), or no launcher for one rank."""
    if ranks <= 1:
        return [], threads
    return (["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks)],
            max(1, threads // ranks))


def run_hetclass(ds: dict, k: int, args, work: str, ranks: int = 1) -> dict:
    """One ``hetclass classify`` run; ``ranks`` > 1 runs it under ``mpirun -n ranks`` with
    ``--threads`` divided between the ranks (the same number of cores in all)."""
    tag = f"K{k}" if ranks == 1 else f"K{k}_mpi{ranks}"
    out = os.path.join(work, f"hetclass_{tag}")
    shutil.rmtree(out, ignore_errors=True)
    launcher, threads = mpi_launcher(ranks, args.threads)
    cmd = launcher + [sys.executable, "-m", "hetclass_standalone.main", "classify",
           "--particles", ds["star"], "--classes", str(k), "--out", out, "--tau2-fudge", "4",
           "--threads", str(threads), "--particle-diameter", f"{ds['diameter_A']:g}",
           "--seed", str(args.seed), "--device", args.device, "--quiet"]
    if args.quick:
        cmd += ["--max-iter", "3"]
    cmd += list(args.hetclass_arg)
    version = code_version()          # the sources the child is about to import
    child = run_child(cmd, ds["project_dir"], os.path.join(work, f"hetclass_{tag}.log"))
    with open(os.path.join(out, "run.json")) as fh:
        info = json.load(fh)
    n_iter = max(1, len(info.get("iterations", [])))
    timings = info.get("timings_s", {})
    m = n_coefficients(info, ds["box_px"], ds["pixel_size_A"])
    s_iter = float(timings.get("em", child["wall_s"])) / n_iter
    return dict(child, tool="hetclass" if ranks == 1 else f"hetclass_mpi{ranks}",
                iterations=n_iter,
                preprocess_s=float(timings.get("preprocess", float("nan"))), s_per_iter=s_iter,
                time_to_result_s=child["wall_s"], n_coefficients=m,
                crop_box_px=info.get("crop_box_px"), device=info.get("device", "cpu"),
                device_peak_bytes=(info["device_peak_MB"] * MB
                                   if info.get("device_peak_MB") is not None else None),
                throughput=ds["n"] * k * m / s_iter if s_iter > 0 else None,
                converged=info.get("converged"), code_version=version,
                ari=ari_vs_truth(os.path.join(out, "run_data.star"), ds.get("truth")),
                command=" ".join(cmd))


def run_relion(ds: dict, k: int, args, work: str) -> dict:
    out = os.path.join(work, f"relion_K{k}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    ref = os.path.join(out, "reference.mrc")
    rec_cmd = ["relion_reconstruct", "--i", ds["star"], "--o", ref, "--maxres", "30", "--ctf"]
    rec = run_child(rec_cmd, ds["project_dir"], os.path.join(work, f"relion_reconstruct_K{k}.log"))
    iters = 2 if args.quick else args.relion_iter
    cmd = ["relion_refine", "--i", ds["star"], "--o", os.path.join(out, "run"), "--ref", ref,
           "--ini_high", "30", "--K", str(k), "--tau2_fudge", "4", "--skip_align",
           "--particle_diameter", f"{ds['diameter_A']:g}", "--flatten_solvent", "--zero_mask",
           "--ctf", "--iter", str(iters), "--j", str(args.threads), "--pad", "2",
           "--random_seed", "0", "--dont_combine_weights_via_disc", "--pool", "30"]
    t_start = time.time()
    child = run_child(cmd, ds["project_dir"], os.path.join(work, f"relion_refine_K{k}.log"))
    models = sorted(glob.glob(os.path.join(out, "run_it[0-9][0-9][0-9]_model.star")))
    if not models:
        raise RuntimeError(f"relion_refine wrote no run_itNNN_model.star in {out}")
    last = models[-1]
    n_iter = int(os.path.basename(last)[6:9])
    t_first = os.path.getmtime(models[0])
    s_iter = (os.path.getmtime(last) - t_first) / max(1, n_iter)
    return dict(child, tool="relion_refine", iterations=n_iter,
                preprocess_s=rec["wall_s"] + max(0.0, t_first - t_start), s_per_iter=s_iter,
                time_to_result_s=rec["wall_s"] + child["wall_s"],
                peak_rss_bytes=max(rec["peak_rss_bytes"], child["peak_rss_bytes"]),
                load_before=rec["load_before"], cpu_s=rec["cpu_s"] + child["cpu_s"],
                n_coefficients=None, crop_box_px=None, throughput=None, converged=None,
                ari=ari_vs_truth(last.replace("_model.star", "_data.star"), ds.get("truth")),
                command=" ".join(rec_cmd) + " && " + " ".join(cmd))


def code_version() -> str:
    """hetclass version, git commit (``+dirty`` with uncommitted edits) and a hash of the
    package's sources (to see whether the engine changed while a benchmark ran)."""
    import hashlib

    import hetclass

    here = os.path.dirname(os.path.abspath(hetclass.__file__))
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(here, "**", "*.py"), recursive=True)):
        with open(path, "rb") as fh:
            digest.update(fh.read())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                                capture_output=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, text=True,
                               capture_output=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    tag = f"hetclass {getattr(hetclass, '__version__', '?')}"
    git = f" {commit}{'+dirty' if dirty else ''}" if commit else ""
    return f"{tag} ({git.strip()}{' ' if git else ''}src {digest.hexdigest()[:10]})"


# ----- report --------------------------------------------------------------------------------
COLUMNS = [("tool", "{}"), ("n", "{}"), ("box", "{}"), ("K", "{}"), ("M", "{}"),
           ("iter", "{}"), ("prep_s", "{:.1f}"), ("s/iter", "{:.2f}"), ("total_s", "{:.1f}"),
           ("cpu_s", "{:.0f}"), ("peak_RSS_MB", "{:.0f}"), ("dev_MB", "{:.0f}"),
           ("cropped_MB", "{:.1f}"),
           ("RSS<=crop+1GB", "{}"), ("evals/s", "{:.3g}"), ("ARI", "{:.3f}"), ("load", "{}")]


def table_row(r: dict) -> Dict[str, str]:
    vals = {"tool": r["tool"], "n": r["n"], "box": r["box_px"], "K": r["K"],
            "M": r.get("n_coefficients"), "iter": r["iterations"], "prep_s": r["preprocess_s"],
            "s/iter": r["s_per_iter"], "total_s": r["time_to_result_s"],
            "cpu_s": r.get("cpu_s"), "peak_RSS_MB": r["peak_rss_bytes"] / MB,
            "dev_MB": (r["device_peak_bytes"] / MB if r.get("device_peak_bytes") is not None
                       else None),
            "cropped_MB": r.get("cropped_MB"),
            "RSS<=crop+1GB": r.get("rss_ok"), "evals/s": r.get("throughput"),
            "ARI": r.get("ari"), "load": f"{r['load_before']:.1f}/{r['load_after']:.1f}"}
    out = {}
    for name, fmt in COLUMNS:
        v = vals[name]
        out[name] = "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)
    return out


def format_table(rows: List[dict], ratios: List[dict]) -> str:
    cells = [table_row(r) for r in rows]
    widths = {c: max([len(c)] + [len(x[c]) for x in cells]) for c, _ in COLUMNS}
    lines = ["  ".join(c.rjust(widths[c]) for c, _ in COLUMNS)]
    lines += ["  ".join(x[c].rjust(widths[c]) for c, _ in COLUMNS) for x in cells]
    for q in ratios:
        ari = "ARI hetclass {} vs RELION {}".format(
            *("-" if a is None else f"{a:.3f}" for a in (q["ari_hetclass"], q["ari_relion"])))
        lines.append(f"n={q['n']} K={q['K']}: time RELION/{q.get('tool', 'hetclass')} = "
                     f"{q['time_ratio']:.2f}x "
                     f"(per iteration {q['iter_ratio']:.2f}x); {ari}; peak RSS hetclass "
                     f"{q['rss_hetclass_MB']:.0f} MB vs RELION {q['rss_relion_MB']:.0f} MB")
    return "\n".join(lines)


def parse_ints(text: str) -> List[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_classify",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--star", help="use this particle STAR instead of synthetic data")
    d.add_argument("--truth", help="truth CSV (image_name,state_index) for --star")
    d.add_argument("--project-dir", help="directory image names are relative to "
                                         "(default: the STAR's directory)")
    d.add_argument("--n", type=parse_ints, default=[8000], help="particles, e.g. 2000,4000,8000")
    d.add_argument("--box", type=int, default=64, help="box in px (synthetic data)")
    d.add_argument("--pixel-size", type=float, default=None,
                   help=f"A/px (default {PHYSICAL_BOX_A:g} / box)")
    d.add_argument("--classes", type=parse_ints, default=[4], help="K, e.g. 2,4,8")
    d.add_argument("--snr", type=float, default=0.05)
    d.add_argument("--populations", type=lambda s: [float(v) for v in s.split(",")],
                   default=None, help="state fractions (default: linear 2:1, unequal)")
    d.add_argument("--diameter", type=float, default=None,
                   help="particle diameter in A for both programs (default 85%% of the box)")
    r = p.add_argument_group("runs")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="hetclass --device (RELION stays on the CPU)")
    r.add_argument("--ranks", type=parse_ints, default=[1],
                   help="hetclass runs with these MPI rank counts, e.g. 1,2 (ranks > 1: "
                        "mpirun -n R, --threads divided between the ranks)")
    r.add_argument("--no-relion", action="store_true", help="skip relion_refine")
    r.add_argument("--relion-iter", type=int, default=25, help="RELION iterations (default 25)")
    r.add_argument("--hetclass-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for hetclass classify (repeatable, e.g. --hetclass-arg=-v)")
    r.add_argument("--quick", action="store_true",
                   help="smoke mode: 3 hetclass iterations, 2 RELION iterations")
    r.add_argument("--workdir", help="work directory (default: a temporary one, removed)")
    r.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    r.add_argument("--json", help="also write the results as JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    relion = (not args.no_relion) and shutil.which("relion_refine") is not None \
        and shutil.which("relion_reconstruct") is not None
    if not args.no_relion and not relion:
        print("bench_classify: relion_refine not on PATH: hetclass only", file=sys.stderr)
    temp = args.workdir is None
    work = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="hetclass_bench_"))
    os.makedirs(work, exist_ok=True)
    rows, ratios = [], []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        if args.star:
            info = star_info(args.star)
            datasets = [(info["n"], k, {"star": os.path.abspath(args.star),
                                        "truth": args.truth, "sim_s": 0.0, **info})
                        for k in args.classes]
        else:
            psize = args.pixel_size or PHYSICAL_BOX_A / args.box
            datasets = []
            for n in args.n:
                for k in args.classes:
                    d = os.path.join(work, f"data_n{n}_b{args.box}_K{k}_snr{args.snr:g}")
                    print(f"bench_classify: simulating n={n} box={args.box} K={k} ...",
                          file=sys.stderr, flush=True)
                    ds = simulate_in_child(d, n, args.box, k, args.snr, psize, args.seed,
                                           args.populations)
                    datasets.append((n, k, dict(ds, n=n, box_px=args.box, pixel_size_A=psize)))
        for n, k, ds in datasets:
            ds["project_dir"] = os.path.abspath(args.project_dir or os.path.dirname(ds["star"]))
            ds["diameter_A"] = args.diameter or round(0.85 * ds["box_px"] * ds["pixel_size_A"], 1)
            sub = os.path.join(work, f"runs_n{n}_K{k}")
            os.makedirs(sub, exist_ok=True)
            tools = [("hetclass", lambda *a, r=r: run_hetclass(*a, ranks=r)) if r > 1
                     else ("hetclass", run_hetclass) for r in args.ranks]
            tools += [("relion", run_relion)] if relion else []
            got = {}
            for name, tool in tools:
                print(f"bench_classify: {name} n={n} K={k} ...", file=sys.stderr, flush=True)
                row = tool(ds, k, args, sub)
                row.update(n=n, K=k, box_px=ds["box_px"], pixel_size_A=ds["pixel_size_A"],
                           simulate_s=ds["sim_s"], data_star=ds["star"])
                got[row["tool"]] = row
                rows.append(row)
            m = next(r["n_coefficients"] for name, r in got.items() if name != "relion_refine")
            cropped = n * m * 8
            for row in got.values():
                row["cropped_MB"] = cropped / MB
                row["rss_ok"] = bool(row["peak_rss_bytes"] <= cropped + 1024 ** 3)
            for name, h in got.items():
                if name == "relion_refine" or "relion_refine" not in got:
                    continue
                r = got["relion_refine"]
                ratios.append(dict(n=n, K=k, tool=name,
                                   time_ratio=r["time_to_result_s"] / h["time_to_result_s"],
                                   iter_ratio=r["s_per_iter"] / h["s_per_iter"],
                                   ari_hetclass=h["ari"], ari_relion=r["ari"],
                                   rss_hetclass_MB=h["peak_rss_bytes"] / MB,
                                   rss_relion_MB=r["peak_rss_bytes"] / MB))
        used = sorted({r["code_version"] for r in rows if "code_version" in r})
        version = (used[0] if used else code_version()) if len(used) <= 1 else \
            " / ".join(used) + ": THE ENGINE CHANGED BETWEEN hetclass RUNS (see the JSON)"
        print(format_table(rows, ratios))
        print(f"code: {version}; {os.cpu_count()} CPUs; load average at the end "
              + " ".join(f"{v:.2f}" for v in os.getloadavg()))
        if args.json:
            doc = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "argv": list(sys.argv[1:] if argv is None else argv), "cpus": os.cpu_count(),
                   "code_version": version,
                   "loadavg_end": os.getloadavg(), "rows": rows, "ratios": ratios}
            with open(args.json + ".tmp", "w") as fh:
                json.dump(doc, fh, indent=1, default=float)
            os.replace(args.json + ".tmp", args.json)
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
