"""Data larger than the memory bound: ``hetclass classify --max-memory GB --cache DIR``.

Simulates (or reuses, see ``--workdir``) a particle set whose cropped Fourier data (n x M x 12
bytes: complex64 coefficients + float32 CTF) are larger than ``--max-memory``, then runs in
child processes:

1. ``build``: ``hetclass classify --max-memory X --cache DIR`` with an empty DIR: the images
   are read once and the cropped data written to the cache; the EM streams them from disk;
2. ``reuse``: the same command again (new output directory): the cache is reused, no image
   is read (preprocessing time ~ 0);
3. ``in RAM`` (``--compare``): the default without a bound, for the labels and the memory
   of the unbounded run.

Per run: the child's peak RSS (``os.wait4``, measured through a small launcher process,
since a child's ``ru_maxrss`` starts from its parent's peak), whether it stayed under the
bound, the cache status and size, preprocessing / EM / total seconds (from ``run.json``),
and the ARI of the labels against the truth and against the first run.

Example (the figures in benchmarks/README.md)::

    python benchmarks/bench_memory.py --n 280000 --max-memory 1.2 --workdir /tmp/bench_mem
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_classify import ari_vs_truth, make_dataset, run_child  # noqa: E402

from hetclass.fourier_store import BYTES_PER_COEFFICIENT  # noqa: E402
from hetclass.stability.scores import adjusted_rand_index  # noqa: E402

MB = 2.0 ** 20
# A small process between the benchmark and the measured run: it sets the BLAS thread counts
# and waits for the run; its wait4 usage (run_child) covers the run it reaped, and its own
# peak stays small whatever this process has grown to.
LAUNCHER = ("import os, subprocess, sys\n"
            "os.environ.update(OMP_NUM_THREADS=sys.argv[1], OPENBLAS_NUM_THREADS=sys.argv[1])\n"
            "sys.exit(subprocess.call(sys.argv[2:]))\n")


def run_measured(argv: List[str], log_path: str, threads: int, name: str) -> Dict[str, float]:
    """Run ``argv`` via the launcher; peak RSS (MB), wall and CPU seconds."""
    try:
        m = run_child([sys.executable, "-c", LAUNCHER, str(threads), *argv], os.getcwd(),
                      log_path)
    except RuntimeError as exc:
        raise SystemExit(f"bench_memory: run {name!r} failed: {exc}") from None
    return {"peak_rss_MB": m["peak_rss_bytes"] / MB, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"]}


def classify_argv(star: str, project: str, out: str, k: int, max_iter: int, threads: int,
                  max_memory: float = None, cache: str = None, target_res: float = None
                  ) -> List[str]:
    argv = [sys.executable, "-m", "hetclass_standalone.main", "classify", "--particles", star,
            "--project-dir", project, "--classes", str(k), "--max-iter", str(max_iter),
            "--seed", "0", "--threads", str(threads), "--out", out, "--quiet"]
    if target_res is not None:
        argv += ["--target-res", str(target_res)]
    if max_memory is not None:
        argv += ["--max-memory", str(max_memory)]
    if cache is not None:
        argv += ["--cache", cache]
    return argv


def labels_of(out: str) -> np.ndarray:
    import starfile
    parts = starfile.read(os.path.join(out, "run_data.star"), always_dict=True)["particles"]
    return parts["rlnClassNumber"].to_numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=280000, help="particles (default 280000)")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--max-memory", type=float, default=1.2, metavar="GB")
    ap.add_argument("--max-iter", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--target-res", type=float, default=10.0, metavar="A",
                    help="hetclass --target-res (default 10 A: M = 687 at box 64, 3 A/px)")
    ap.add_argument("--workdir", default=None, help="keep data and outputs here (data reused)")
    ap.add_argument("--compare", action="store_true", help="also run without a bound, in RAM")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    work = args.workdir or tempfile.mkdtemp(prefix="bench_memory_")
    os.makedirs(work, exist_ok=True)
    data_dir = os.path.join(work, f"data_n{args.n}_b{args.box}_k{args.classes}")
    os.makedirs(data_dir, exist_ok=True)
    ds = make_dataset(data_dir, args.n, args.box, args.classes, args.snr, 192.0 / args.box, 0)
    print(f"data: {ds['star']} (simulated in {ds['sim_s']:.0f} s)", flush=True)
    cache = os.path.join(work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    runs = [("build", args.max_memory, cache), ("reuse", args.max_memory, cache)]
    if args.compare:
        runs.append(("in RAM", None, None))
    rows, first = [], None
    for name, bound, cache_dir in runs:
        out = os.path.join(work, "out_" + name.replace(" ", "_"))
        shutil.rmtree(out, ignore_errors=True)
        cmd = classify_argv(ds["star"], data_dir, out, args.classes, args.max_iter,
                            args.threads, bound, cache_dir, args.target_res)
        print("$ " + " ".join(cmd[2:]), flush=True)
        m = run_measured(cmd, out + ".log", args.threads, name)
        with open(os.path.join(out, "run.json")) as fh:
            info = json.load(fh)
        run_info = info.get("run_info", info)
        store = run_info.get("data_store") or {}
        n_coef = int(run_info["n_coefficients"])
        labels = labels_of(out)
        first = labels if first is None else first
        row = {"run": name, "max_memory_GB": bound, "n": args.n, "M": n_coef,
               "data_MB": args.n * n_coef * BYTES_PER_COEFFICIENT / MB, "cache": store.get("cache", "none"),
               "data_in_RAM": store.get("data_in_memory", True),
               "peak_RSS_MB": m["peak_rss_MB"],
               "under_bound": None if bound is None else m["peak_rss_MB"] <= bound * 1024,
               "preprocess_s": run_info["timings_s"]["preprocess"],
               "cache_build_s": store.get("cache_build_s"),
               "em_s": run_info["timings_s"]["em"], "total_s": m["wall_s"], "cpu_s": m["cpu_s"],
               "ARI_truth": ari_vs_truth(os.path.join(out, "run_data.star"), ds["truth"]),
               "ARI_vs_build": float(adjusted_rand_index(first, labels)),
               "labels_equal_build": bool(np.array_equal(first, labels)),
               "memory_plan_MB": store.get("memory_plan_MB")}
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)
    cols = ["run", "max_memory_GB", "data_MB", "cache", "data_in_RAM", "peak_RSS_MB",
            "under_bound", "preprocess_s", "em_s", "total_s", "ARI_truth", "labels_equal_build"]
    print()
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
