"""Convert particle files between CryoSPARC .cs and RELION 3.0 / 3.1 STAR.

Conversions (chosen from the file extensions of IN and OUT):

  .cs   -> .star  RELION 3.1 (or 3.0 with --to-version 3.0); poses, shifts (scaled by
                  alignments3D/psize_A), CTF, optics groups, half sets, classes, and the
                  CryoSPARC uid (rlnHetclassUid) so the particles can go back to .cs.
                  RELION reads only .mrcs stacks: CryoSPARC's .mrc stacks are linked as
                  OUT-stem_stacks/<path>.mrcs next to OUT (disable with --no-links).
                  Stack paths are written relative to the working directory (where RELION
                  and hetclass resolve them), or absolute when outside it.
  .star -> .star  RELION 3.0 <-> 3.1 (all other columns kept).
  .star -> .cs    for particles that came from CryoSPARC (rlnHetclassUid column): a numpy
                  .cs (+ .csg for "Import Result Group"); rlnClassNumber becomes
                  alignments3D/class. With --passthrough ORIGINAL.cs the original fields are
                  kept bit-identical (joined by uid) and only the class fields are set.
  .cs   -> .cs    merge passthrough files into one numpy .cs (+ .csg).

Image files are never needed: stacks that cannot be found only produce a warning -- except
when a RELION 3.0 STAR (no rlnImageSize) goes to 3.1 and the size cannot be read from a
stack: then give it with --image-size. An existing OUT is replaced only with --overwrite.

Examples:
  hetclass convert P3/J42/J42_particles.cs particles.star \\
      --passthrough P3/J42/J42_passthrough_particles.cs
  hetclass convert run_it025_data.star run_data_30.star --to-version 3.0
  hetclass convert Class3D/job012/run_it025_data.star classes.cs --passthrough P3/J42/J42_particles.cs
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hetclass.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="particles: CryoSPARC .cs or RELION .star")
    parser.add_argument("output", metavar="OUT", help="output file: .star or .cs")
    parser.add_argument("--passthrough", metavar="FILE", action="append", default=[],
                        help=".cs file(s) joined by uid: the job's passthrough particles "
                             "(IN = .cs), or the original particles (IN = .star, OUT = .cs)")
    parser.add_argument("--cs-project-dir", metavar="DIR", default=None,
                        help="CryoSPARC project directory that blob/path is relative to "
                             "(default: guessed from IN's location)")
    parser.add_argument("--project-dir", metavar="DIR", default=None,
                        help="directory that relative stack paths of a STAR input resolve "
                             "against (default: the working directory)")
    parser.add_argument("--to-version", choices=("3.0", "3.1"), default="3.1",
                        help="RELION STAR layout to write (default 3.1)")
    parser.add_argument("--no-links", action="store_true",
                        help=".cs -> .star: keep .mrc stack names (RELION will not read them)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="box size in pixels for input without rlnImageSize whose stacks "
                             "cannot be opened (RELION 3.1 STAR files need it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _kind(path: str, what: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".cs", ".star"):
        raise InputError(f"{what} must be a .cs or .star file", file=path, field="extension",
                         value=ext or "(none)")
    return ext[1:]


def _warn(message: str) -> None:
    print(f"hetclass convert: warning: {' '.join(message.split())}", file=sys.stderr)


def _check_output(args, dst: str) -> None:
    """Refuse to replace an existing OUT (or its .csg) unless --overwrite."""
    paths = [args.output] + ([os.path.splitext(args.output)[0] + ".csg"] if dst == "cs" else [])
    for path in paths:
        if os.path.exists(path) and not args.overwrite:
            raise InputError("output file exists; pass --overwrite to replace it",
                             file=path, field="OUT")


def _with_image_size(args, particles):
    """``particles`` with every unknown optics box (0) set from --image-size; InputError when
    a size is still unknown (RELION 3.1 needs it) or --image-size contradicts a known one."""
    from dataclasses import replace
    box = np.asarray(particles.optics.box_px, dtype=np.int64)
    size = args.image_size
    if size is not None:
        if size < 2:
            raise InputError("must be a box size in pixels >= 2", field="--image-size",
                             value=size)
        known = box[box > 0]
        if known.size and np.any(known != size):
            raise InputError(f"differs from the image size in the input ({int(known[0])} px)",
                             file=args.input, field="--image-size", value=size)
        box = np.where(box > 0, box, size)
        return replace(particles, optics=replace(particles.optics, box_px=box))
    if np.any(box == 0):
        raise InputError("image size unknown: no rlnImageSize and no particle stack could be "
                         f"opened{_first_missing(particles)}; RELION 3.1 needs it: give it "
                         "with --image-size PX, or point --project-dir at the stacks",
                         file=args.input, field="rlnImageSize")
    return particles


def _first_missing(particles) -> str:
    from hetclass.preflight import missing_stack
    missing = missing_stack(particles)
    return f" (first missing: {missing[1]})" if missing else ""


def _star_to_cs(args, particles):
    from hetclass.io import cryosparc as cs

    uids = cs.uids_of(particles)
    if uids is None:
        raise InputError(f"no {cs.UID_LABEL} column: only STAR files written from a CryoSPARC "
                         f".cs by hetclass (classify or convert) can go back to .cs",
                         file=args.input, field=cs.UID_LABEL)
    table = particles.source["particles"]
    labels = posteriors = None
    if "rlnClassNumber" in table.columns:
        labels = np.rint(np.asarray(table["rlnClassNumber"], dtype=np.float64)).astype(int) - 1
        if np.any(labels < 0):
            raise InputError("class numbers must be >= 1", file=args.input,
                             field="rlnClassNumber", value=int(labels.min() + 1))
        if "rlnMaxValueProbDistribution" in table.columns:
            posteriors = np.asarray(table["rlnMaxValueProbDistribution"], dtype=np.float64)
    if args.passthrough:
        original = cs.read_cs(args.passthrough[0], passthrough=args.passthrough[1:],
                              project_dir=args.cs_project_dir)
        position = {int(u): i for i, u in enumerate(cs.uids_of(original))}
        missing = [int(u) for u in uids if int(u) not in position]
        if missing:
            raise InputError(f"{len(missing)} uid(s) of the STAR file are not in the original "
                             f"particles", file=args.passthrough[0], field="uid",
                             value=missing[0])
        particles = original.take(np.array([position[int(u)] for u in uids], dtype=np.int64))
    return cs.write_cs_group(args.output, particles, labels=labels, posteriors=posteriors,
                             title=f"particles from {os.path.basename(args.input)}")


def main(args: argparse.Namespace) -> int:
    from hetclass.io import cryosparc as cs
    from hetclass.io.star import read_star, write_particles_star

    src, dst = _kind(args.input, "IN"), _kind(args.output, "OUT")
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise InputError("OUT must differ from IN (inputs are never modified)",
                         file=args.output)
    _check_output(args, dst)
    if src == "cs":
        particles = cs.read_cs(args.input, passthrough=args.passthrough,
                               project_dir=args.cs_project_dir)
        missing = cs.missing_stacks(particles)
        if missing:
            _warn(f"{len(missing)} particle stack(s) not found (first: {missing[0]}); the "
                  f"output is written anyway; pass the CryoSPARC project directory with "
                  f"--cs-project-dir if this location is wrong")
    else:
        if args.passthrough and dst == "star":
            raise InputError("--passthrough applies to .cs input, or to STAR -> .cs",
                             field="--passthrough", value=args.passthrough[0])
        particles = read_star(args.input, project_dir=args.project_dir)

    if dst == "star" and (args.to_version == "3.1" or args.image_size is not None):
        particles = _with_image_size(args, particles)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})",
                         file=out_dir) from None
    if dst == "star":
        extra = cs.star_columns(particles)
        if src == "cs":
            stem = os.path.splitext(os.path.abspath(args.output))[0]
            particles, links = cs.relion_stack_paths(
                particles, None if args.no_links else stem + "_stacks")
            if links:
                print(f"linked {len(links)} .mrc stack(s) as .mrcs under {stem}_stacks/ "
                      f"(RELION reads only .mrcs stacks)")
        write_particles_star(args.output, particles, extra_columns=extra,
                             version=args.to_version)
        print(f"wrote {len(particles)} particles to {args.output} (RELION {args.to_version})")
    elif src == "cs":
        path, csg = cs.write_cs_group(args.output, particles,
                                      title=f"particles from {os.path.basename(args.input)}")
        print(f"wrote {len(particles)} particles to {path} and {csg}")
    else:
        path, csg = _star_to_cs(args, particles)
        print(f"wrote {len(particles)} particles to {path} and {csg}")
    return 0
