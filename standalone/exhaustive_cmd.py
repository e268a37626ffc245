"""Split classes recursively until each leaf is reproducible and distinct ("exhaustive").

At each node: replicate K=2 classifications (K=3 if K=2 is not reproducible); the split is
accepted only if all children are stable, their maps differ beyond the null (simulated
one-state data classified alike), and each child has the particles a map needs to resolve
the difference (--min-class-size, default derived from the data). Otherwise the node is a
leaf with its reason: unstable split, too small, no significant map difference, continuous,
or max depth.

Example:
  hetclass exhaustive --particles Refine3D/job010/run_data.star --out hc_tree

Outputs: tree.json, leafNN_node<ID>.star / .mrc (+ half maps), leaves_data.star,
leaves_reassigned_data.star and leaves_reassigned_classNNN.mrc (+ half maps): every
particle reassigned among the leaves and the refined maps, report.html.
"""

from __future__ import annotations

import argparse
import os
import sys

from .arguments import add_classify_options, add_option, values_from_args
from .classify_cmd import add_input_options, check_out, load_from_args, options_from_args
from .mpi_run import agreed, args_comm, root_progress
from .progress import ReplicateProgress
from .stability_cmd import REPLICATE_OPTIONS, add_output_options, add_replicate_options, check_resume, print_report

SPLITTING_OPTIONS = ("min_class_size", "max_depth", "k_scan")


def add_args(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    g = parser.add_argument_group("splitting")
    for name in SPLITTING_OPTIONS:
        add_option(g, name)
    add_replicate_options(parser)
    add_classify_options(parser, classes_required=False)
    add_output_options(parser)


def main(args) -> int:
    comm = args_comm(args)

    def setup():
        options = options_from_args(args, classes=2)
        values = values_from_args(args, REPLICATE_OPTIONS + SPLITTING_OPTIONS)
        check_resume(args)
        check_out(args.out, args.overwrite, args.resume)
        return options, values, load_from_args(args, warn=comm.is_root)
    options, values, particles = agreed(comm, setup)
    # a node scans K = 2 first: its replicates are the first phase's tasks
    printer = None if args.quiet else ReplicateProgress(sys.stderr, options.max_iter,
                                                        tasks=values["replicates"])
    from hetclass.stability.exhaustive import exhaustive_job  # heavy: only when used
    from hetclass.stability.outputs import exhaustive_key_table
    try:
        summary, _ = exhaustive_job(particles, options, args.out, values["min_class_size"],
                                    values["max_depth"], values["replicates"],
                                    values["subsample"], values["k_scan"], values["null_sets"],
                                    values["jobs"], particles_path=args.particles,
                                    progress=root_progress(comm, printer), comm=comm,
                                    resume=args.resume)
    finally:
        if printer is not None:
            printer.close()
    if summary is None:      # MPI rank other than 0: rank 0 reports
        return 0
    print(exhaustive_key_table(summary))
    print(f"outputs in {os.path.abspath(args.out)} (tree.json, leaf*.star, leaf*.mrc, report.html)")
    print_report(args.out, summary)
    return 0
