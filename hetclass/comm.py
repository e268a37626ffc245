"""Communication between the processes of one run: serial, or MPI through mpi4py.

The engine is written against :class:`SerialComm`'s small interface, so a single process and
``mpirun -n P`` run the same code. Particles are sharded across ranks (each rank reads and
preprocesses only its shard, :func:`shard_rows`); every M-step accumulator is a sum over
particles, so the ranks combine them with one ``allreduce`` per EM pass.

Conventions:

* per-particle arrays inside the engine are *local* (the rank's shard, in input order);
  ``FourierData.rows`` maps them to global particle indices; results handed back to callers
  (:class:`hetclass.engine.EMResult`) are *global* (gathered on every rank);
* rank 0 writes every output file; the other ranks write nothing;
* :meth:`check` is a collective error barrier: when any rank failed, every rank raises the
  lowest failing rank's error, so rank 0 reports it once and no rank hangs in a collective.

Example::

    comm = world_comm()          # SerialComm() outside mpirun / srun
    rows = shard_rows(n, comm.size, comm.rank)
    total = comm.allreduce(local_sum)
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, List, Optional, TypeVar

import numpy as np

# environment variables set by the MPI launchers users run (OpenMPI mpirun, MPICH/Hydra,
# SLURM srun with PMI/PMIx)
LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS")

T = TypeVar("T")


class SerialComm:
    """One process: every reduction is the identity."""

    rank = 0
    size = 1
    is_mpi = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over ranks of a NumPy (or CuPy) array (returned; the input may be
        reused)."""
        return array

    def allreduce_scalar(self, value: float) -> float:
        return value

    def allgather_obj(self, obj: Any) -> List[Any]:
        return [obj]

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather_rows(self, local: np.ndarray, rows: np.ndarray, n_total: int) -> np.ndarray:
        """Global ``(n_total, ...)`` array from each rank's ``local`` rows (on every rank)."""
        out = np.zeros((n_total,) + local.shape[1:], dtype=local.dtype)
        out[rows] = local
        return out

    def gather_rows_root(self, local: np.ndarray, rows: np.ndarray,
                         n_total: int) -> Optional[np.ndarray]:
        """Like :meth:`gather_rows`, but only rank 0 receives the global array (None
        elsewhere); each rank sends just its own rows."""
        return self.gather_rows(local, rows, n_total)

    def barrier(self) -> None:
        pass

    def split(self, color: int) -> "SerialComm":
        return self

    def check(self, error: Optional[BaseException]) -> None:
        """Collective error barrier (see the module docstring)."""
        if error is not None:
            raise error

    def checked(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this rank inside :meth:`check`: an exception on any rank is
        raised on every rank (so no rank waits forever in a later collective)."""
        error: Optional[BaseException] = None
        out = None
        try:
            out = fn(*args)
        except Exception as exc:
            error = exc
        self.check(error)
        return out  # type: ignore[return-value]   # set: check() raised otherwise

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class MPIComm(SerialComm):
    """An mpi4py communicator behind the same interface."""

    is_mpi = True

    def __init__(self, comm: Any):
        """``comm``: an ``mpi4py.MPI.Comm``."""
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        from mpi4py import MPI
        if self.size == 1:
            return array
        to_host = getattr(array, "get", None)   # a device (CuPy) array: reduce on the host
        if to_host is not None:
            import cupy
            return cupy.asarray(self.allreduce(to_host()))
        buf = np.ascontiguousarray(array)
        out = np.empty_like(buf)
        if np.iscomplexobj(buf):
            self.comm.Allreduce(buf.view(buf.real.dtype), out.view(buf.real.dtype), op=MPI.SUM)
        else:
            self.comm.Allreduce(buf, out, op=MPI.SUM)
        return out

    def allreduce_scalar(self, value: float) -> float:
        return float(self.allreduce(np.array([value], dtype=np.float64))[0])

    def allgather_obj(self, obj: Any) -> List[Any]:
        return self.comm.allgather(obj)

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def gather_rows(self, local: np.ndarray, rows: np.ndarray, n_total: int) -> np.ndarray:
        # shards are disjoint, so a sum of zero-filled arrays assembles the global array
        out = np.zeros((n_total,) + local.shape[1:], dtype=local.dtype)
        out[rows] = local
        if out.dtype == bool:
            return self.allreduce(out.astype(np.uint8)).astype(bool)
        return self.allreduce(out)

    def gather_rows_root(self, local: np.ndarray, rows: np.ndarray,
                         n_total: int) -> Optional[np.ndarray]:
        parts = self.comm.gather((np.asarray(rows), np.ascontiguousarray(local)), root=0)
        if self.rank != 0:
            return None
        out = np.zeros((n_total,) + local.shape[1:], dtype=local.dtype)
        for part_rows, part in parts:
            out[part_rows] = part
        return out

    def barrier(self) -> None:
        self.comm.Barrier()

    def split(self, color: int) -> "MPIComm":
        return MPIComm(self.comm.Split(int(color), self.rank))

    def check(self, error: Optional[BaseException]) -> None:
        payload = None
        if error is not None:
            try:
                payload = pickle.dumps(error)
                pickle.loads(payload)
            except Exception:  # an unpicklable error travels as its text
                payload = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
        found = self.comm.allgather(payload)
        for rank, blob in enumerate(found):
            if blob is not None:
                if rank == self.rank and error is not None:
                    raise error
                exc = pickle.loads(blob)
                exc.hetclass_rank = rank
                exc.hetclass_quiet = True  # reported by its own rank / rank 0
                raise exc

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(int(code))


def launched_by_mpi() -> bool:
    """True inside ``mpirun``/``mpiexec``/``srun`` with more than one task (or any MPI env)."""
    return any(os.environ.get(k) for k in LAUNCHER_ENV)


def world_comm(mode: str = "auto") -> SerialComm:
    """The run's communicator: ``mode`` "auto" (MPI when launched by an MPI launcher),
    "mpi" (required; an InputError when mpi4py is missing) or "off"."""
    from .errors import InputError
    if mode == "off" or (mode == "auto" and not launched_by_mpi()):
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        if mode == "mpi":
            raise InputError("mpi4py is not installed (pip install 'hetclass[mpi]')",
                             field="--mpi", value=mode) from None
        return SerialComm()
    world = MPI.COMM_WORLD
    if world.Get_size() == 1 and mode == "auto":
        return SerialComm()
    return MPIComm(world)


def shard_rows(n_total: int, size: int, rank: int) -> np.ndarray:
    """Contiguous block of global particle indices owned by ``rank`` (sizes differ by <= 1)."""
    edges = np.linspace(0, n_total, size + 1).round().astype(np.int64)
    return np.arange(edges[rank], edges[rank + 1], dtype=np.int64)
