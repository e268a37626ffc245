"""Estimate time and memory of classify / stability / exhaustive before launching them.

Reads the particle file (N, box, pixel size), probes this machine on a few hundred of the
particles for a few seconds (preprocessing, EM iterations), and prints the expected time
(typical and at --max-iter) and peak memory of the run for several launch options: as given,
with memory bounds and a cache, MPI ranks over the cores, a GPU (a model). With --budget it
says which of them fit.

Example:
  hetclass plan --particles Refine3D/job010/run_data.star --classes 4 --budget 3h
  hetclass plan --particles P.star --mode stability --classes 1-6 --replicates 5 --cores 16
"""

from __future__ import annotations

import argparse
import sys

from hetclass.errors import InputError
from hetclass.options import OPTIONS, parse_k_range

from .arguments import add_classify_options, add_option, options_from_args, values_from_args
from .classify_cmd import add_input_options, load_from_args

PLANNED_OPTIONS = ("replicates", "max_depth", "jobs", "subsample")


def add_args(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    g = parser.add_argument_group("run to plan")
    g.add_argument("--mode", choices=("classify", "stability", "exhaustive"), default="classify")
    add_option(g, "classes", type=str, default=str(OPTIONS["classes"].default),
               metavar="K|KMIN-KMAX", help="classes, or a range (stability; classify plans "
               f"each K) (default {OPTIONS['classes'].default_text()})")
    for name in PLANNED_OPTIONS:
        add_option(g, name)
    m = parser.add_argument_group("machine (default: this one)")
    m.add_argument("--cores", type=int, default=None)
    m.add_argument("--memory-GB", type=float, default=None)
    m.add_argument("--gpus", type=int, default=None)
    m.add_argument("--budget", default=None, metavar="TIME",
                   help="say which options finish within this time (e.g. 3h, 2h30m, 90min)")
    m.add_argument("--no-probe", action="store_true",
                   help="use the reference machine's rates instead of probing this one")
    add_classify_options(parser, classes_required=False)


def main(args) -> int:
    from dataclasses import replace

    from hetclass.plan import local_machine
    from hetclass.plan_report import PlanRequest, parse_duration_s, plan_lines

    k_values = parse_k_range(args.classes)
    values = values_from_args(args, PLANNED_OPTIONS)
    budget = None if args.budget is None else parse_duration_s(args.budget)
    machine = local_machine()
    for name, value in (("cores", args.cores), ("memory_GB", args.memory_GB),
                        ("gpus", args.gpus)):
        if value is not None:
            if value < (0 if name == "gpus" else 1):
                raise InputError("must be positive", field=f"--{name.replace('_', '-')}",
                                 value=value)
            machine = replace(machine, **{name: value})
    options = options_from_args(args, classes=max(k_values))
    particles = load_from_args(args)
    request = PlanRequest(args.mode, [k for k in k_values] if args.mode != "exhaustive" else [2],
                          values["replicates"], values["max_depth"], values["jobs"],
                          values["subsample"])
    lines = plan_lines(particles, options, request, machine=machine,
                       probe=not args.no_probe, budget_s=budget,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    print("\n".join(lines))
    return 0
