"""Replicate classifications: are the classes real, how many are there, discrete or continuous?

Runs R classifications with independent seeds (data read and Fourier-cropped once), matches
classes across replicates and scores them (Jaccard bands, random-overlap test, ARI/NMI,
per-particle stability, PAC). Every test is calibrated by a null: simulated one-state data
classified like the replicates (p-values in summary.json). With a K range it recommends K
(extending the scan past it when needed) and gives a heterogeneity verdict (homogeneous /
discrete / continuous / mixed) with its evidence and merge / split suggestions.

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

from hetclass.errors import InputError
from hetclass.options import parse_k_range

from .arguments import add_classify_options, add_option, values_from_args
from .classify_cmd import add_input_options, check_out, load_from_args, options_from_args
from .mpi_run import agreed, args_comm, root_progress
from .progress import ReplicateProgress

# options of every replicate command, read back with values_from_args
REPLICATE_OPTIONS = ("replicates", "subsample", "null_sets", "jobs")


def add_classes_range(group) -> None:
    """``--classes K|KMIN-KMAX``: the flag of :data:`hetclass.options.OPTIONS` ``classes``
    taking a range."""
    add_option(group, "classes", type=str, metavar="K|KMIN-KMAX", required=True,
               help="number of classes, or a range to scan (e.g. 1-6)")


def add_replicate_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by stability and exhaustive."""
    g = parser.add_argument_group("replicates")
    for name in REPLICATE_OPTIONS:
        add_option(g, name)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    o = parser.add_argument_group("output")
    o.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    o.add_argument("--continue", dest="resume", action="store_true",
                   help="continue an interrupted run in --out: finished classifications are "
                        "kept")
    o.add_argument("--overwrite", action="store_true", help="replace results in an existing --out")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def check_resume(args) -> None:
    if args.resume and args.overwrite:
        raise InputError("--continue and --overwrite exclude each other", field="--continue")


def add_args(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    g = parser.add_argument_group("stability")
    g.add_argument("--classes", "-K", required=True, metavar="K|KMIN-KMAX",
                   help="number of classes, or a range to scan (e.g. 1-6)")
    add_option(g, "core_stability", type=float)
    add_replicate_options(parser)
    add_classify_options(parser, classes_required=False)
    add_output_options(parser)


def main(args) -> int:
    comm = args_comm(args)

    def setup():
        k_values = parse_k_range(args.classes)
        options = options_from_args(args, classes=max(k_values))
        values = values_from_args(args, REPLICATE_OPTIONS + ("core_stability",))
        check_resume(args)
        check_out(args.out, args.overwrite, args.resume)
        return k_values, options, values, load_from_args(args, warn=comm.is_root)
    k_values, options, values, particles = agreed(comm, setup)
    printer = None if args.quiet else ReplicateProgress(
        sys.stderr, options.max_iter, tasks=len(k_values) * values["replicates"])
    from hetclass.stability.analysis import stability_job  # heavy: only when used
    from hetclass.stability.outputs import stability_key_tables
    try:
        summary, _ = stability_job(particles, options, args.out, k_values, values["replicates"],
                                   values["subsample"], values["jobs"],
                                   values["core_stability"], particles_path=args.particles,
                                   progress=root_progress(comm, printer), comm=comm,
                                   resume=args.resume, null_sets=values["null_sets"])
    finally:
        if printer is not None:
            printer.close()
    if summary is None:      # MPI rank other than 0: rank 0 reports
        return 0
    print(stability_key_tables(summary))
    print(f"outputs in {os.path.abspath(args.out)} (consensus_data.star, summary.json, "
          f"report.html)")
    print_report(args.out, summary)
    return 0


def print_report(out: str, summary: dict) -> None:
    """The last line of a run: where its report is (nothing when it could not be written:
    a warning said why)."""
    path = os.path.abspath(os.path.join(out, "report.html"))
    if os.path.isfile(path):
        print(f"report: {path} (open it in a web browser)")
