"""Time per EM iteration of ``hetclass classify`` with 1, 2, ... MPI ranks (issue 8).

Simulates a synthetic set (``hetclass.simulate``, phantom states with known truth) or takes
``--star``, then runs ``mpirun -n P python -m hetclass_standalone.main classify ...`` for every
P of ``--ranks`` (P = 1 runs without mpirun) with the same seed, a fixed number of iterations
(``--convergence 0``) and ``--threads`` threads per rank. Prints one row per P:

* ``s/iter``: EM seconds / iterations, from rank 0's ``run.json`` (``timings_s.em``);
* ``prep_s``: reading + Fourier cropping (each rank reads only its shard);
* ``total_s``: wall time of the launch, start-up and output writing included;
* ``speedup`` = s/iter(1 rank) / s/iter(P), ``efficiency`` = speedup / P;
* ``same_labels``: the labels equal those of the 1-rank run.

With ``--device gpu`` every rank uses one GPU (local rank -> device, see the README).

Examples::

    python benchmarks/bench_mpi.py                                   # 4000 particles, box 64, K 4, 1 and 2 ranks
    python benchmarks/bench_mpi.py --n 8000 --ranks 1,2 --iter 5
    python benchmarks/bench_mpi.py --ranks 1,2,4 --device gpu --n 200000 --box 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import starfile


def simulate(workdir: str, n: int, box: int, classes: int, seed: int = 0) -> str:
    """A synthetic set with ``classes`` hinge states; returns its STAR path."""
    from hetclass.phantoms import phantom_model
    from hetclass.simulate import simulate_dataset
    angles = np.linspace(-90.0, 90.0, classes)
    states = {f"hinge_{int(a):+d}": phantom_model("open", hinge_deg=float(a)) for a in angles}
    ds = simulate_dataset(os.path.join(workdir, "data"), states, n_particles=n, box_px=box,
                          pixel_size_A=192.0 / box, snr=0.05, seed=seed)
    return str(ds.star_path)


def run_once(star: str, project_dir: str, out: str, ranks: int, args) -> dict:
    cmd = [sys.executable, "-m", "hetclass_standalone.main", "classify", "--particles", star,
           "--project-dir", project_dir, "--classes", str(args.classes), "--max-iter",
           str(args.iter), "--convergence", "0", "--seed", "0", "--threads", str(args.threads),
           "--device", args.device, "--out", out, "--quiet", "--overwrite"]
    if ranks > 1:
        cmd = args.launcher.split() + ["-n", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "run.json")) as fh:
        info = json.load(fh)
    n_iter = max(len(info.get("iterations", [])), 1)
    labels = starfile.read(os.path.join(out, "run_data.star"),
                           always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    return {"ranks": ranks, "s_per_iter": info["timings_s"]["em"] / n_iter,
            "prep_s": info["timings_s"]["preprocess"], "total_s": total, "iterations": n_iter,
            "n_particles": info["n_particles"], "M": info.get("n_coefficients"),
            "labels": labels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000, help="particles to simulate (default 4000)")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--iter", type=int, default=5, help="EM iterations per run (default 5)")
    p.add_argument("--ranks", default="1,2", help="comma list of rank counts (default 1,2)")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (default 1)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    p.add_argument("--star", default=None, help="use this particle STAR instead of simulating")
    p.add_argument("--project-dir", default=None)
    p.add_argument("--launcher", default="mpirun --allow-run-as-root --oversubscribe -q",
                   help="MPI launcher (without -n); e.g. 'srun' inside an allocation")
    p.add_argument("--workdir", default=None, help="keep data and outputs here")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    if any(r > 1 for r in ranks) and shutil.which(args.launcher.split()[0]) is None:
        raise SystemExit(f"{args.launcher.split()[0]} not found (apt-get install openmpi-bin)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_mpi_")
    os.makedirs(workdir, exist_ok=True)
    try:
        if args.star:
            star = args.star
            project = args.project_dir or os.path.dirname(os.path.abspath(star))
        else:
            star = simulate(workdir, args.n, args.box, args.classes)
            project = os.path.dirname(star)
        rows = [run_once(star, project, os.path.join(workdir, f"run_np{r}"), r, args)
                for r in ranks]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    base = next((r for r in rows if r["ranks"] == 1), rows[0])
    print(f"hetclass classify under MPI: n={base['n_particles']} K={args.classes} "
          f"M={base['M']} coefficients, {args.iter} iterations, {args.threads} thread(s)/rank, "
          f"device {args.device}, {os.cpu_count()} cores")
    print(f"{'ranks':>5} {'s/iter':>8} {'prep_s':>7} {'total_s':>8} {'speedup':>8} "
          f"{'efficiency':>10} {'same_labels':>11}")
    for r in rows:
        r["speedup"] = base["s_per_iter"] / r["s_per_iter"]
        r["efficiency"] = r["speedup"] * base["ranks"] / r["ranks"]
        r["same_labels"] = bool(np.array_equal(r["labels"], base["labels"]))
        print(f"{r['ranks']:5d} {r['s_per_iter']:8.3f} {r['prep_s']:7.2f} {r['total_s']:8.1f} "
              f"{r['speedup']:8.2f} {r['efficiency']:10.2f} {str(r['same_labels']):>11}")
    if len(rows) > 1:
        print(f"ratio s/iter {rows[0]['ranks']} rank(s) / {rows[-1]['ranks']} ranks: "
              f"{rows[0]['s_per_iter'] / rows[-1]['s_per_iter']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in r.items() if k != "labels"} for r in rows], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
