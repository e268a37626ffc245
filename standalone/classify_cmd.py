"""Classify aligned particles into K classes (fixed poses, Bayesian EM in Fourier space).

Example:
  hetclass classify --particles Refine3D/job010/run_data.star --classes 4 --out hc_run1
  hetclass classify --particles P.star --classes 3 --target-res 8 --focus-mask focus.mrc --out run2
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from hetclass.errors import HetclassWarning, InputError
from hetclass.pipeline import load_particles, run_classify

from .arguments import add_classify_options, options_from_args  # noqa: F401  (re-exported)
from .mpi_run import agreed, args_comm, root_progress
from .progress import ClassifyProgress, print_class_table


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


def load_from_args(args, warn: bool = True):
    """The particles of ``--particles``, checked before any heavy work: a stack that a
    relative image path does not reach is an error that says how paths are resolved;
    ``warn``: a ``--target-res`` finer than the data allow is one warning line."""
    particles = load_particles(args.particles, project_dir=args.project_dir,
                               passthrough=tuple(args.passthrough),
                               cs_project_dir=args.cs_project_dir)
    check_stacks(particles, args.project_dir)
    if warn:
        warn_clamped_target(particles, getattr(args, "target_res", None))
    return particles


def check_out(out: str, overwrite: bool, resume=None, note: str = "") -> None:
    """Refuse an existing non-empty output directory unless ``overwrite`` (or ``resume``).

    ``resume`` None: the command has no --continue, so the message offers only --overwrite
    (with ``note`` in brackets); otherwise :func:`hetclass.pipeline.check_out_dir`.
    """
    from hetclass.pipeline import check_out_dir
    check_out_dir(out, resume=bool(resume), overwrite=overwrite,
                  can_continue=resume is not None, note=note)


def check_stacks(particles, project_dir) -> None:
    """InputError naming the first missing stack; for a relative path also where it was
    looked for and how to change that (--project-dir)."""
    from hetclass.preflight import missing_stack
    missing = missing_stack(particles)
    if missing is None:
        return
    name, path, relative = missing
    if not relative:
        raise InputError("particle stack not found", file=path, field="rlnImageName", value=name)
    where = (f"--project-dir {project_dir}" if project_dir is not None
             else f"the current directory {os.getcwd()}")
    hint = ("check --project-dir" if project_dir is not None else
            "run from the RELION project directory or pass --project-dir DIR")
    raise InputError(f"particle stack not found; relative image paths are resolved from "
                     f"{where}: {hint}", file=path, field="rlnImageName", value=name)


def warn_clamped_target(particles, target_res_A) -> None:
    """One warning line when ``target_res_A`` is finer than the data allow."""
    from hetclass.preflight import clamped_target_res_A
    box, pixel = int(particles.optics.box_px[0]), float(particles.optics.pixel_size_A[0])
    used = clamped_target_res_A(box, pixel, target_res_A)
    if used is not None:
        warnings.warn(f"--target-res {target_res_A:g} A is finer than these data allow "
                      f"(Nyquist {2 * pixel:g} A at {pixel:g} A/px, box {box} px): clamped to "
                      f"the finest possible, {used:.1f} A", HetclassWarning, stacklevel=2)


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
        return options, load_from_args(args, warn=comm.is_root)
    options, particles = agreed(comm, setup)     # every MPI rank reads the STAR file
    printer = None if args.quiet else ClassifyProgress(sys.stderr, options.max_iter)
    try:
        result = run_classify(particles, options, args.out, resume=args.resume,
                              overwrite=args.overwrite, progress=root_progress(comm, printer),
                              comm=comm)
    finally:
        if printer is not None:
            printer.close()
    if not comm.is_root:
        return 0
    print_class_table(sys.stdout, result.em.stats, result.class_fractions, result.resolution_A,
                      len(particles), result.em.resolution_status, result.labels)
    print(f"outputs in {os.path.abspath(args.out)} (run_data.star, run_model.star, "
          f"run_class*.mrc, run.json)")
    print_report_path(result.files)
    return 0


def print_report_path(files) -> None:
    """The last line of a run: where its report is (nothing when it could not be written:
    a warning said why)."""
    report = files.get("report.html")
    if report:
        print(f"report: {os.path.abspath(report)} (open it in a web browser)")
