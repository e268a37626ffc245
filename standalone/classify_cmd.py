"""Classify aligned particles into K classes (fixed poses, Bayesian EM in Fourier space).

Example:
  hetclass classify --particles Refine3D/job010/run_data.star --classes 4 --out hc_run1
  hetclass classify --particles P.star --classes 3 --target-res 8 --focus-mask focus.mrc --out run2
"""

from __future__ import annotations

import argparse
import os
import sys

from hetclass.errors import InputError
from hetclass.pipeline import ClassifyOptions, load_particles, run_classify

from .mpi_run import add_mpi_option, agreed, args_comm, root_progress
from .progress import ProgressPrinter, print_class_table


def add_input_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("input")
    g.add_argument("--particles", required=True, metavar="FILE",
                   help="RELION particle STAR (3.0 or 3.1+) or CryoSPARC .cs with aligned particles")
    g.add_argument("--project-dir", metavar="DIR", default=None,
                   help="directory that image paths are relative to (default: current directory)")
    g.add_argument("--passthrough", action="append", default=[], metavar="CS",
                   help="CryoSPARC passthrough .cs joined by uid (repeatable)")
    g.add_argument("--cs-project-dir", metavar="DIR", default=None,
                   help="CryoSPARC project directory that blob/path is relative to")


def add_classify_options(parser: argparse.ArgumentParser, classes_required: bool = True) -> None:
    """Options of one classification; shared by classify, stability and exhaustive."""
    g = parser.add_argument_group("classification")
    if classes_required:
        g.add_argument("--classes", "-K", type=int, required=True, help="number of classes K")
    g.add_argument("--target-res", type=float, default=None, metavar="A",
                   help="resolution limit in A (default: 2x Nyquist, not finer than 8 A)")
    g.add_argument("--max-iter", type=int, default=25, help="maximum EM iterations (default 25)")
    g.add_argument("--convergence", type=float, default=0.5, metavar="PCT",
                   help="stop when fewer than PCT %% of particles change class (default 0.5)")
    g.add_argument("--tau2-fudge", "-T", type=float, default=4.0,
                   help="regularisation parameter T, RELION's tau2_fudge (default 4)")
    g.add_argument("--hard", action="store_true", help="hard assignment instead of soft posteriors")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--init", choices=("random", "ref"), default=None,
                   help="random: K reconstructions from random subsets; ref: from --ref maps")
    g.add_argument("--ref", action="append", default=[], metavar="MAP",
                   help="reference map(s): one (K perturbed copies) or K maps; repeatable")
    g.add_argument("--init-lowpass", type=float, default=30.0, metavar="A",
                   help="low-pass of the initial references in A (default 30)")
    g.add_argument("--particle-diameter", type=float, default=None, metavar="A",
                   help="soft spherical mask diameter in A (default: 85%% of the box)")
    g.add_argument("--solvent-mask", default=None, metavar="MRC", help="solvent mask for the maps")
    g.add_argument("--focus-mask", default=None, metavar="MRC",
                   help="classes may differ only inside this mask (focused classification)")
    h = parser.add_argument_group("compute")
    h.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    h.add_argument("--threads", "-j", type=int, default=1)
    h.add_argument("--batch-size", type=int, default=None)
    h.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="bound on this process's host memory (per MPI rank): sets batch sizes, "
                        "operator caching and whether the data stay in RAM or stream from the "
                        "cache on disk (--cache, else a temporary one); too small a bound is an "
                        "error that states the minimum")
    h.add_argument("--cache", default=None, metavar="DIR",
                   help="cropped Fourier cache: written once by preprocessing, reused without "
                        "reading any image by later runs and replicates with the same inputs")
    add_mpi_option(h)


def options_from_args(args, classes=None) -> ClassifyOptions:
    refs = tuple(args.ref or ())
    init = args.init or ("ref" if refs else "random")
    if init == "ref" and not refs:
        raise InputError("--init ref needs at least one --ref map", field="--init", value=init)
    return ClassifyOptions(
        classes=int(classes if classes is not None else args.classes),
        target_res_A=args.target_res, max_iter=args.max_iter, convergence_pct=args.convergence,
        tau2_fudge=args.tau2_fudge, hard=args.hard, seed=args.seed, init=init,
        init_lowpass_A=args.init_lowpass, references=refs,
        particle_diameter_A=args.particle_diameter, solvent_mask=args.solvent_mask,
        focus_mask=args.focus_mask, device=args.device, threads=args.threads,
        batch_size=args.batch_size, max_memory_GB=args.max_memory, cache_dir=args.cache)


def load_from_args(args):
    return load_particles(args.particles, project_dir=args.project_dir,
                          passthrough=tuple(args.passthrough), cs_project_dir=args.cs_project_dir)


def add_args(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    add_classify_options(parser)
    o = parser.add_argument_group("output")
    o.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    o.add_argument("--continue", dest="resume", action="store_true",
                   help="resume an interrupted run in --out")
    o.add_argument("--overwrite", action="store_true", help="replace results in an existing --out")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def main(args) -> int:
    comm = args_comm(args)

    def setup():
        options = options_from_args(args)
        if args.resume and args.overwrite:
            raise InputError("--continue and --overwrite exclude each other", field="--continue")
        return options, load_from_args(args)
    options, particles = agreed(comm, setup)     # every MPI rank reads the STAR file
    printer = None if args.quiet else ProgressPrinter(sys.stderr, options.max_iter)
    result = run_classify(particles, options, args.out, resume=args.resume,
                          overwrite=args.overwrite, progress=root_progress(comm, printer),
                          comm=comm)
    if not comm.is_root:
        return 0
    if printer is not None:
        printer.close()
    print_class_table(sys.stdout, result.em.stats, result.class_fractions, result.resolution_A,
                      len(particles))
    print(f"outputs in {os.path.abspath(args.out)} (run_data.star, run_model.star, "
          f"run_class*.mrc, run.json)")
    return 0
