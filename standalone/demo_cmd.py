"""Build the embedded synthetic dataset, classify it, and compare with the truth.

The dataset is made on the fly (nothing downloaded): a gemmi pseudo-atomic phantom of a
two-domain molecule in three states -- hinge open, hinge closed (30 deg), and open without
one subunit -- projected analytically at random poses with CTF, shifts and noise, written as
a RELION 3.1 project (particles.star + .mrcs stacks + true maps). Then
``hetclass classify`` runs on it and the recovered classes are tabulated against the truth,
in the terminal and in classify/report.html (with the confusion matrix and the adjusted Rand
index). The demo always starts afresh: an existing non-empty --out needs --overwrite.

Example:
  hetclass demo --out hetclass_demo
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from hetclass.errors import InputError
from hetclass.options import OPTIONS, ClassifyOptions


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", default="hetclass_demo", metavar="DIR",
                        help="output directory (default hetclass_demo)")
    parser.add_argument("--particles", type=int, default=3000, help="number of particles (3000)")
    parser.add_argument("--snr", type=float, default=0.15, help="signal-to-noise ratio (0.15)")
    parser.add_argument("--box", type=int, default=64, help="box size in pixels (64)")
    parser.add_argument("--pixel-size", type=float, default=3.0, help="pixel size in A (3.0)")
    parser.add_argument("--seed", type=int, default=OPTIONS["seed"].default,
                        help="seed of simulation and classification")
    parser.add_argument("--max-iter", type=int, default=OPTIONS["max_iter"].default,
                        help=f"maximum EM iterations ({OPTIONS['max_iter'].default})")
    parser.add_argument("--threads", "-j", type=int, default=OPTIONS["threads"].default)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty --out (the demo always starts afresh)")


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI of two label vectors (permutation invariant)."""
    from hetclass.stability.scores import adjusted_rand_index as ari
    return float(ari(a, b))


def main(args) -> int:
    from hetclass.phantoms import phantom_states
    from hetclass.pipeline import load_particles, run_classify
    from hetclass.simulate import simulate_dataset

    from .classify_cmd import check_out
    from .progress import ClassifyProgress, print_class_table

    if args.particles < 10:
        raise InputError("need at least 10 particles", field="--particles", value=args.particles)
    out = os.path.abspath(args.out)
    check_out(out, args.overwrite, note="the demo always starts afresh")
    t0 = time.time()
    states = phantom_states("demo")
    data_dir = os.path.join(out, "data")
    print(f"simulating {args.particles} particles of {len(states)} states "
          f"({', '.join(states)}) at SNR {args.snr} in {data_dir}", file=sys.stderr)
    ds = simulate_dataset(data_dir, states, populations=[0.45, 0.35, 0.20],
                          n_particles=args.particles, box_px=args.box,
                          pixel_size_A=args.pixel_size, snr=args.snr, seed=args.seed,
                          threads=args.threads)
    t_sim = time.time() - t0
    particles = load_particles(ds.star_path, project_dir=data_dir)
    options = ClassifyOptions(classes=len(states), seed=args.seed, threads=args.threads,
                              max_iter=args.max_iter)
    printer = ClassifyProgress(sys.stderr, options.max_iter)
    run_dir = os.path.join(out, "classify")
    try:
        result = run_classify(particles, options, run_dir, overwrite=True, progress=printer)
    finally:
        printer.close()
    print_class_table(sys.stdout, result.em.stats, result.class_fractions, result.resolution_A,
                      len(particles), result.em.resolution_status, result.labels)
    truth_of = dict(zip(ds.image_names, ds.labels))
    truth = np.array([truth_of[name] for name in particles.image_names])
    _print_truth_table(truth, result.labels, ds.state_names, len(states))
    ari = adjusted_rand_index(truth, result.labels)
    print(f"\nadjusted Rand index vs truth: {ari:.3f}   "
          f"(simulation {t_sim:.0f} s, total {time.time() - t0:.0f} s)")
    print(f"results: {run_dir} (run_data.star, run_model.star, run_class*.mrc); "
          f"true maps: {data_dir}/true_*.mrc")
    report = _truth_report(run_dir, result, truth, ds.state_names, ari)
    if report:
        print(f"report: {report} (open it in a web browser: recovered versus true classes, "
              f"class sizes, FSC, maps)")
    return 0


def _print_truth_table(truth, labels, state_names, k) -> None:
    table = np.zeros((len(state_names), k), dtype=np.int64)
    np.add.at(table, (truth, labels), 1)
    print("\nrecovered versus true classes (rows: true state, columns: hetclass class)")
    print(f"{'':>12}" + "".join(f"{'class ' + str(j + 1):>10}" for j in range(k)))
    for i, name in enumerate(state_names):
        print(f"{name:>12}" + "".join(f"{v:>10d}" for v in table[i]))


def _truth_report(run_dir, result, truth, state_names, ari):
    """Rewrite the run's report.html with the truth section; its path, or None."""
    import json

    from hetclass.reports.classify import Truth, write_report_or_warn
    with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
        run = json.load(f)
    written = write_report_or_warn(run_dir, result.em, run,
                                   Truth(labels=truth, state_names=list(state_names), ari=ari))
    return written.get("report.html")
