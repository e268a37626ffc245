"""MPI for the ``hetclass`` sub-commands: the ``--mpi`` option, rank-0 output, error handling.

Under ``mpirun -n P`` / ``srun`` every rank runs the same command; :mod:`hetclass.comm`
shards the particles and combines the ranks. Here:

* ``--mpi {auto,on,off}``: ``auto`` (default) uses MPI when an MPI launcher started the
  process (:func:`hetclass.comm.launched_by_mpi`), ``on`` requires it (an input error when
  mpi4py is missing), ``off`` runs every process on its own;
* only rank 0 prints progress and results (rank 0 also writes every file, inside the core);
* an error a user can fix (:class:`hetclass.errors.InputError`, any
  :class:`~hetclass.errors.HetclassError`) is agreed on with a collective check, so it is
  printed once, by rank 0, and every rank exits with the same code (2 for input errors);
  an operating-system error (a full or read-only disk, a permission) in a serial run is
  one such line too (exit 2);
* an unexpected exception on one rank prints one line naming the rank and calls
  ``MPI_Abort``, which ends every rank (no rank waits forever in a collective).

Testing only: ``HETCLASS_TESTING_KILL="RANK:ITERATION"`` makes that rank kill itself with
SIGKILL when it reports that refinement iteration of ``classify`` (exploration iterations
do not count) (``"RANK:ITERATION:raise"``: raise
an unexpected RuntimeError instead). ``tests/test_mpi.py`` uses it to check that a lost or
failing rank ends the job instead of hanging it. Never set it in production.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Optional

from hetclass.comm import SerialComm, world_comm
from hetclass.errors import HetclassError, InputError, output_error

MPI_MODES = {"auto": "auto", "on": "mpi", "off": "off"}
KILL_ENV = "HETCLASS_TESTING_KILL"
# rank of this process as the launchers publish it, before MPI is initialised
RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def add_mpi_option(parser: argparse.ArgumentParser) -> None:
    """``--mpi`` for the commands that can run under ``mpirun``/``srun``."""
    parser.add_argument(
        "--mpi", choices=tuple(MPI_MODES), default="auto",
        help="auto: use MPI when started by mpirun/srun (default); on: require MPI; "
             "off: ignore the launcher. Under MPI the particles are split across ranks "
             "(one GPU per rank with --device gpu: local rank modulo the visible GPUs) and "
             "stability/exhaustive run replicates on rank groups at the same time")


def launcher_rank() -> int:
    """This process's rank from the launcher's environment (0 outside a launcher)."""
    for key in RANK_ENV:
        value = os.environ.get(key)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def comm_from_args(args) -> SerialComm:
    """The run's communicator for ``args.mpi`` (SerialComm when the command has no --mpi)."""
    mode = getattr(args, "mpi", None)
    if mode is None:
        return SerialComm()
    return world_comm(MPI_MODES[mode])


def args_comm(args) -> SerialComm:
    """The communicator :func:`hetclass_standalone.main.main` stored in ``args.comm``
    (SerialComm when a sub-command's ``main`` is called directly)."""
    return getattr(args, "comm", None) or SerialComm()


def root_progress(comm, progress: Optional[Callable]) -> Optional[Callable]:
    """``progress`` on rank 0; on other ranks None -- or the testing kill hook (see above)."""
    callback = progress if comm.is_root else None
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return callback
    try:
        fields = spec.split(":")
        rank, iteration = int(fields[0]), int(fields[1])
        how = fields[2] if len(fields) > 2 else "kill"
    except (ValueError, IndexError):
        raise InputError("expected RANK:ITERATION[:raise]", field=KILL_ENV, value=spec) from None
    if comm.rank != rank:
        return callback

    def failing(event, **info):
        if (event == "iteration" and info.get("phase") != "explore"
                and int(info.get("it", -1)) >= iteration):
            if how == "raise":
                raise RuntimeError(f"{KILL_ENV}: rank {rank} fails at iteration {iteration}")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if callback is not None:
            callback(event, **info)
    return failing


def run_command(command: str, comm, body: Callable[[], int]) -> int:
    """Run ``body()`` on every rank; return the exit code (see the module docstring).

    Serial runs keep the plain behaviour: errors a user can fix print one line, anything
    else propagates with its traceback.
    """
    error: Optional[BaseException] = None
    result = 0
    try:
        result = body()
    except HetclassError as exc:
        error = exc
    except KeyboardInterrupt:
        if comm.is_root:
            print(f"hetclass {command}: interrupted; rerun with --continue to resume",
                  file=sys.stderr)
        return 130
    except OSError as exc:
        if comm.is_mpi:      # one rank's own I/O failure: its peers may wait in a collective
            _abort_on_unexpected(command, comm, exc)
        error = output_error(exc, doing="operating-system error")   # a disk, a permission
    except Exception as exc:  # noqa: BLE001 -- reported, then every rank is stopped
        if not comm.is_mpi:
            raise
        _abort_on_unexpected(command, comm, exc)
    if comm.is_mpi:
        try:
            comm.check(error)      # every rank learns of an error on any rank
        except HetclassError as exc:
            error = exc
    if error is None:
        return int(result or 0)
    if comm.is_root or not comm.is_mpi:
        if isinstance(error, InputError):
            line = error.one_line()
        else:
            line = " ".join(str(error).split())
        print(f"hetclass {command}: error: {line}", file=sys.stderr, flush=True)
    return 2 if isinstance(error, InputError) else 1


def _abort_on_unexpected(command: str, comm, exc: BaseException) -> None:
    """Print one line naming this MPI rank and the error, then end every rank."""
    text = " ".join(str(exc).split()) or "(no message)"
    print(f"hetclass {command}: error on MPI rank {comm.rank}: {type(exc).__name__}: "
          f"{text}; stopping all ranks", file=sys.stderr, flush=True)
    comm.abort(1)
    raise exc  # pragma: no cover -- abort does not return


def agreed(comm, fn: Callable):
    """``fn()`` on every rank as one phase: a :class:`HetclassError` on any rank is raised on
    every rank (a collective check), so all ranks leave the phase together."""
    error, value = None, None
    try:
        value = fn()
    except HetclassError as exc:
        error = exc
    comm.check(error)
    return value
