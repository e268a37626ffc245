"""High-level entry points shared by every front end (CLI, RELION External job, Scipion).

Front ends parse their arguments, call these functions, and report. Nothing here prints:
progress goes through the ``progress`` callback, cancellation through ``abort_check``.

Contract (stable):

``load_particles(path, project_dir=None, passthrough=(), cs_project_dir=None) -> ParticleSet``
    Dispatches on the file: RELION STAR (3.0/3.1) or CryoSPARC ``.cs``.

``ClassifyOptions``
    Parameters of one classification (defined in :mod:`hetclass.options`, with every
    default, bound and help text).

``run_classify(particles, options, out_dir, resume=False, overwrite=False, progress=None,
abort_check=None) -> ClassifyResult``
    Preprocess, run EM, write RELION Class3D-style outputs into ``out_dir`` atomically
    (``run_data.star``, ``run_model.star``, ``run_classNNN.mrc`` + half maps,
    ``run_posteriors.npy``, ``run.json``; ``run_particles.cs`` when the input was a .cs).
    Holds the lock of ``out_dir`` for the whole run; checks the folder, its free space, the
    outputs' text and the checkpoint (``resume``) before reading any image.

``progress(event: str, **info)`` receives e.g. ``("iteration", it=3, max_iter=25,
changed_pct=1.2, class_fractions=[...])`` and ``("batch", done=..., total=..., stage=...)``.
``abort_check()`` is called between batches/iterations and raises
:class:`hetclass.errors.AbortRequested` to stop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from .errors import InputError
from .io.loader import load_particles  # noqa: F401  (re-exported: part of the contract)
from .options import ClassifyOptions  # noqa: F401  (re-exported: part of the contract)

ProgressFn = Callable[..., None]
AbortFn = Callable[[], None]


@dataclass
class ClassifyResult:
    labels: np.ndarray          # (n,) int64, 0-based, input order
    posteriors: np.ndarray      # (n, K) float32
    resolution_A: np.ndarray    # (K,)
    class_fractions: np.ndarray  # (K,)
    files: Dict[str, str]
    n_iter: int
    converged: bool
    em: object = None           # the engine's EMResult
    prepared: object = None     # the engine's PreparedData (reusable)


def check_out_dir(out_dir: str, resume: bool, overwrite: bool, can_continue: bool = True,
                  note: str = "") -> None:
    """Refuse to write into an existing, non-empty directory unless asked to.

    The folder's lock and temporaries a killed run left (:mod:`hetclass.io.lock`,
    :mod:`hetclass.io.atomic`) do not count as content. ``can_continue`` False: the command
    has no ``--continue``, so the message offers only ``--overwrite`` (with ``note``).
    """
    from .io.atomic import is_temporary
    from .io.lock import LOCK_NAME

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("output path exists and is not a directory", file=out_dir, field="--out")
    if os.path.isdir(out_dir) and not (resume or overwrite):
        content = [n for n in os.listdir(out_dir) if n != LOCK_NAME and not is_temporary(n)]
        if content and can_continue:
            raise InputError("output directory exists and is not empty; use --continue to "
                             "resume or --overwrite to replace it", file=out_dir, field="--out")
        if content:
            raise InputError("output directory exists and is not empty; pass --overwrite to "
                             "replace it" + (f" ({note})" if note else ""), file=out_dir,
                             field="--out")


def output_bytes_estimate(particles, options: ClassifyOptions) -> int:
    """Rough size in bytes of a classification's outputs: class and half maps at the
    original box, posteriors and STAR rows per particle, and 1 MB for the rest."""
    n, k = len(particles), int(options.classes)
    box = int(np.max(particles.box_px)) if n else 0
    maps = 3 * k * box ** 3 * 4
    per_particle = n * (k * 4 * 2 + 300)
    return int(maps + per_particle + 2 ** 20)


def check_free_space(out_dir: str, needed_bytes: int) -> None:
    """OutputError (one line) when the file system of ``out_dir`` has less free space than
    ``needed_bytes``: better now than after hours of EM."""
    import shutil

    from .errors import OutputError
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError:
        return      # cannot tell: the writes themselves will report a full disk
    if free < needed_bytes:
        raise OutputError(f"not enough free space for the outputs: about "
                          f"{needed_bytes / 2 ** 20:.0f} MB needed, {free / 2 ** 20:.0f} MB "
                          "free; free some space or choose another --out", file=out_dir,
                          field="--out", value=f"{free / 2 ** 20:.0f} MB free")


def run_classify(particles, options: ClassifyOptions, out_dir: str, resume: bool = False,
                 overwrite: bool = False, progress: Optional[ProgressFn] = None,
                 abort_check: Optional[AbortFn] = None, prepared=None,
                 comm=None) -> ClassifyResult:
    """Classify ``particles`` and write RELION Class3D-style outputs into ``out_dir``.

    Under MPI (``comm`` from :func:`hetclass.comm.world_comm`) every rank calls this; each
    preprocesses its shard, the EM combines the ranks, and rank 0 writes the outputs.
    Rank 0 holds the lock of ``out_dir`` (:mod:`hetclass.io.lock`) for the whole run; the
    folder, the checkpoint and the outputs are checked before any image is read.
    """
    from .comm import SerialComm
    from .io.lock import lock_output

    comm = SerialComm() if comm is None else comm
    with lock_output(out_dir, comm, "hetclass classify"):
        return _classify_locked(particles, options, out_dir, resume, overwrite, progress,
                                abort_check, prepared, comm)


def _before_work(particles, options, out_dir, resume, overwrite, comm):
    """Checks before any image is read (collective): the folder, the disk space, what
    will be written, and the checkpoint to resume from. Returns (identity, state)."""
    from . import checkpoint
    from .outputs import preflight_outputs

    comm.checked(check_out_dir, out_dir, resume, overwrite)

    def on_root():
        check_free_space(out_dir, output_bytes_estimate(particles, options))
        preflight_outputs(particles, options)
        return checkpoint.particle_identity(particles)
    identity = comm.bcast_obj(comm.checked(on_root if comm.is_root else lambda: None))

    def start_state():
        if resume:
            return checkpoint.load(out_dir, options, len(particles), identity=identity)
        if overwrite and comm.is_root and os.path.exists(
                os.path.join(out_dir, checkpoint.CHECKPOINT)):
            os.remove(os.path.join(out_dir, checkpoint.CHECKPOINT))
        return None
    return identity, comm.checked(start_state)


def _classify_locked(particles, options, out_dir, resume, overwrite, progress, abort_check,
                     prepared, comm) -> ClassifyResult:
    from . import checkpoint, engine
    from .outputs import write_classify_outputs
    from .validate import check_em_values

    identity, state = _before_work(particles, options, out_dir, resume, overwrite, comm)
    t0 = time.time()
    if prepared is None:
        prepared = engine.prepare(particles, options, progress=progress, abort_check=abort_check,
                                  comm=comm)
    t_prep = time.time() - t0
    if state is not None:       # per-particle arrays of this rank's shard
        state = _restrict_to_rows(state, prepared.data.rows)
    resumed_at = 0 if state is None else int(state.iteration)

    def save(st):
        check_em_values(st, particles, comm, prepared.data.rows)   # before it is saved
        checkpoint.save(out_dir, st, options, len(particles), comm=comm, rows=prepared.data.rows,
                        identity=identity)

    t1 = time.time()
    result = engine.fit(prepared, options, progress=progress, abort_check=abort_check,
                        checkpoint=save, state=state)
    t_em = time.time() - t1
    check_em_values(result, particles)
    run_info = {"timings_s": {"preprocess": t_prep, "em": t_em, "total": time.time() - t0},
                "resumed_from_iteration": resumed_at,
                "crop_box_px": int(prepared.data.plan.crop_box_px),
                "n_coefficients": int(prepared.data.coeffs.size),
                "target_resolution_A": float(prepared.data.plan.target_res_A),
                "particle_diameter_A": float(prepared.data.diameter_A),
                "input": particles.source.get("path"),
                "mpi_ranks": int(comm.size),
                # "built" / "reused" / "temporary" / "none", size, where the data lived
                "data_store": prepared.data.cache_info}
    run_info.update(_device_info(prepared.workspace.device_pass))
    files = comm.checked(lambda: write_classify_outputs(out_dir, particles, result, options,
                                                        run_info) if comm.is_root else {})
    return ClassifyResult(result.labels, result.posteriors, np.asarray(result.resolution_A),
                          np.asarray(result.class_fractions), files, len(result.stats),
                          bool(result.state.converged), result, prepared)


def _restrict_to_rows(state, rows):
    """A checkpointed state (every particle) with its per-particle arrays cut to ``rows``."""
    from dataclasses import replace

    from .checkpoint import PER_PARTICLE
    return replace(state, **{name: getattr(state, name)[rows] for name in PER_PARTICLE
                             if getattr(state, name) is not None})


def _device_info(device_pass) -> dict:
    """Where the E-step ran: ``device`` ("cpu" or the GPU's name) and, on a GPU, the peak
    device memory in MB."""
    if device_pass is None:
        return {"device": "cpu"}
    return {"device": device_pass.name, "device_peak_MB": device_pass.peak_bytes() / 2 ** 20}
