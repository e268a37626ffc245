"""``hetclass`` command: one module per sub-command, each with ``add_args(parser)`` and ``main(args)``.

Errors a user can fix (:class:`hetclass.errors.InputError`, and operating-system errors such
as a read-only or full disk) print one line on stderr and exit 2. Under ``mpirun``/``srun``
(``--mpi``, see :mod:`.mpi_run`) only rank 0 prints. The commands that write into ``--out``
hold that folder's lock for their whole run (:mod:`hetclass.io.lock`): a second run on the same
folder is refused with one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from hetclass import __version__
from hetclass.errors import InputError
from hetclass.io.lock import lock_output

from .messages import OneLineParser, one_line_warnings
from .mpi_run import comm_from_args, launcher_rank, run_command

# sub-command name -> module inside this package
COMMANDS = {
    "classify": "classify_cmd",
    "demo": "demo_cmd",
    "stability": "stability_cmd",
    "exhaustive": "exhaustive_cmd",
    "convert": "convert_cmd",
    "plan": "plan_cmd",
}
# commands that write into the folder --out (each run holds its lock)
WRITES_OUT_DIR = ("classify", "demo", "stability", "exhaustive")


def _available():
    found = {}
    for name, module in COMMANDS.items():
        try:
            found[name] = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name and exc.name.endswith(module):
                continue
            raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(   # argument errors: one line, exit 2 (sub-commands inherit it)
        prog="hetclass", description="Fixed-pose 3D classification and replicate stability for cryo-EM.")
    parser.add_argument("--version", action="version", version=f"hetclass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available().items():
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else name, description=(module.__doc__ or None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        comm = comm_from_args(args)
    except InputError as exc:   # --mpi on without mpi4py: no MPI to agree with, one line anyway
        if launcher_rank() == 0:
            print(f"hetclass {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return 2
    args.comm = comm
    with one_line_warnings(f"hetclass {args.command}"):
        return run_command(args.command, comm, lambda: _run_locked(args, comm))


def _run_locked(args, comm) -> int:
    """The sub-command, holding the lock of its ``--out`` folder when it writes one."""
    out = getattr(args, "out", None)
    if args.command not in WRITES_OUT_DIR or not out:
        return args._module.main(args)
    with lock_output(out, comm, f"hetclass {args.command}"):
        return args._module.main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
