"""Replicate classifications: are the classes real, how many are there, discrete or continuous?

Runs R classifications with independent seeds (data read and Fourier-cropped once), matches
classes across replicates and scores them (Jaccard bands, random-overlap test, ARI/NMI,
per-particle stability, PAC). With a K range it recommends K and gives a heterogeneity
verdict (homogeneous / discrete / continuous / mixed) with its evidence.

Example:
  hetclass stability --particles Refine3D/job010/run_data.star --classes 1-5 --out hc_stab
  hetclass stability --particles P.star --classes 3 --replicates 8 --subsample 0.8 --out s3

Outputs: consensus_data.star, stable_core_classNNN.star, consensus_classNNN.mrc (+ half
maps), summary.json (schema: docs/stability.md), report.html, and for continuous
heterogeneity continuous_particles.star (for cryoDRGN / 3DVA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hetclass.errors import InputError
from hetclass.pipeline import check_out_dir
from hetclass.stability.replicates import parse_k_range

from .classify_cmd import add_classify_options, add_input_options, load_from_args, options_from_args
from .mpi_run import agreed, args_comm, root_progress


def add_replicate_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by stability and exhaustive."""
    g = parser.add_argument_group("replicates")
    g.add_argument("--replicates", "-R", type=int, default=5,
                   help="independent classifications per K (default 5)")
    g.add_argument("--subsample", type=float, default=None, metavar="F",
                   help="each replicate classifies a random fraction F of the particles "
                        "(clusterboot-style; default: all)")
    g.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="replicates run at the same time (default: one per core, at most R)")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    o = parser.add_argument_group("output")
    o.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    o.add_argument("--overwrite", action="store_true", help="replace results in an existing --out")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")


class ReplicateProgress:
    """Progress callback: one line per finished replicate, K and node."""

    def __init__(self, stream):
        self.stream = stream
        self.t0 = time.time()

    def __call__(self, event: str, **info) -> None:
        t = time.time() - self.t0
        if event == "replicate":
            self.stream.write(f"  K={info['k']}: replicate {info['done']}/{info['total']} done "
                              f"({info['seconds']:.1f} s) [{t:7.1f} s]\n")
        elif event == "k_done":
            state = "all classes stable" if info["all_stable"] else "not all classes stable"
            self.stream.write(f"K={info['k']}: {state} ({info['seconds']:.1f} s)\n")
        elif event == "node":
            what = "split" if info["decision"] == "split" else f"leaf ({info['reason']})"
            self.stream.write(f"node {info['id']} ({info['n_particles']} particles): {what} "
                              f"[{t:7.1f} s]\n")
        else:
            return
        self.stream.flush()


def add_args(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    g = parser.add_argument_group("stability")
    g.add_argument("--classes", "-K", required=True, metavar="K|KMIN-KMAX",
                   help="number of classes, or a range to scan (e.g. 1-6)")
    g.add_argument("--core-stability", type=float, default=0.8, metavar="F",
                   help="a particle is in its class's stable core when at least this fraction "
                        "of replicates agree with its consensus class (default 0.8)")
    add_replicate_options(parser)
    add_classify_options(parser, classes_required=False)
    add_output_options(parser)


def main(args) -> int:
    comm = args_comm(args)

    def setup():
        k_values = parse_k_range(args.classes)
        options = options_from_args(args, classes=max(k_values))
        check_out_dir(args.out, resume=False, overwrite=args.overwrite)
        if args.jobs is not None and args.jobs < 1:
            raise InputError("must be >= 1", field="--jobs", value=args.jobs)
        return k_values, options, load_from_args(args)
    k_values, options, particles = agreed(comm, setup)
    progress = root_progress(comm, None if args.quiet else ReplicateProgress(sys.stderr))
    from hetclass.stability.analysis import stability_job      # heavy: only when used
    from hetclass.stability.outputs import stability_key_tables
    summary, _ = stability_job(particles, options, args.out, k_values, args.replicates,
                               args.subsample, args.jobs, args.core_stability,
                               particles_path=args.particles, progress=progress, comm=comm)
    if summary is None:      # MPI rank other than 0: rank 0 reports
        return 0
    print(stability_key_tables(summary))
    print(f"outputs in {os.path.abspath(args.out)} (consensus_data.star, summary.json, "
          f"report.html)")
    return 0
