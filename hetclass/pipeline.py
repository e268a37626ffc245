"""High-level entry points shared by every front end (CLI, RELION External job, Scipion).

Front ends parse their arguments, call these functions, and report. Nothing here prints:
progress goes through the ``progress`` callback, cancellation through ``abort_check``.

Contract (stable):

``load_particles(path, project_dir=None, passthrough=(), cs_project_dir=None) -> ParticleSet``
    Dispatches on the file: RELION STAR (3.0/3.1) or CryoSPARC ``.cs``.

``ClassifyOptions``
    Validated parameters of one classification (see the dataclass).

``run_classify(particles, options, out_dir, resume=False, overwrite=False, progress=None,
abort_check=None) -> ClassifyResult``
    Preprocess, run EM, write RELION Class3D-style outputs into ``out_dir`` atomically
    (``run_data.star``, ``run_model.star``, ``run_classNNN.mrc`` + half maps,
    ``run_posteriors.npy``, ``run.json``; ``run_particles.cs`` when the input was a .cs).

``progress(event: str, **info)`` receives e.g. ``("iteration", it=3, max_iter=25,
changed_pct=1.2, class_fractions=[...])`` and ``("batch", done=..., total=..., stage=...)``.
``abort_check()`` is called between batches/iterations and raises
:class:`hetclass.errors.AbortRequested` to stop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .errors import InputError
from .io.loader import load_particles  # noqa: F401  (re-exported: part of the contract)


@dataclass
class ClassifyOptions:
    classes: int = 4
    target_res_A: Optional[float] = None      # None: chosen from the data
    max_iter: int = 25
    convergence_pct: float = 0.5              # stop when fewer % of particles change class
    tau2_fudge: float = 4.0                   # RELION's T
    hard: bool = False
    seed: int = 0
    init: str = "random"                      # "random" | "ref"
    init_lowpass_A: float = 30.0
    references: Sequence[str] = ()            # MRC paths: one map (perturbed copies) or K maps
    particle_diameter_A: Optional[float] = None
    solvent_mask: Optional[str] = None
    focus_mask: Optional[str] = None
    device: str = "cpu"                       # "cpu" | "gpu" | "auto"
    threads: int = 1
    batch_size: Optional[int] = None
    max_memory_GB: Optional[float] = None
    cache_dir: Optional[str] = None


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


def check_out_dir(out_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to write into an existing, non-empty directory unless asked to."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not (resume or overwrite):
        raise InputError("output directory exists and is not empty; use --continue to resume "
                         "or --overwrite to replace it", file=out_dir, field="--out")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("output path exists and is not a directory", file=out_dir, field="--out")


def run_classify(particles, options: ClassifyOptions, out_dir: str, resume: bool = False,
                 overwrite: bool = False, progress: Optional[ProgressFn] = None,
                 abort_check: Optional[AbortFn] = None, prepared=None,
                 comm=None) -> ClassifyResult:
    """Classify ``particles`` and write RELION Class3D-style outputs into ``out_dir``.

    Under MPI (``comm`` from :func:`hetclass.comm.world_comm`) every rank calls this; each
    preprocesses its shard, the EM combines the ranks, and rank 0 writes the outputs.
    """
    from . import checkpoint, engine
    from .comm import SerialComm
    from .outputs import write_classify_outputs

    comm = SerialComm() if comm is None else comm
    comm.checked(check_out_dir, out_dir, resume, overwrite)
    comm.barrier()  # every rank has looked at out_dir before rank 0 creates it
    t0 = time.time()
    if prepared is None:
        prepared = engine.prepare(particles, options, progress=progress, abort_check=abort_check,
                                  comm=comm)
    t_prep = time.time() - t0
    if comm.is_root:
        os.makedirs(out_dir, exist_ok=True)

    def start_state():
        if resume:
            return checkpoint.load(out_dir, options, len(particles), rows=prepared.data.rows)
        if overwrite and comm.is_root and os.path.exists(
                os.path.join(out_dir, checkpoint.CHECKPOINT)):
            os.remove(os.path.join(out_dir, checkpoint.CHECKPOINT))
        return None
    state = comm.checked(start_state)
    resumed_at = 0 if state is None else int(state.iteration)

    def save(st):
        checkpoint.save(out_dir, st, options, len(particles), comm=comm, rows=prepared.data.rows)

    t1 = time.time()
    result = engine.fit(prepared, options, progress=progress, abort_check=abort_check,
                        checkpoint=save, state=state)
    t_em = time.time() - t1
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


def _device_info(device_pass) -> dict:
    """Where the E-step ran: ``device`` ("cpu" or the GPU's name) and, on a GPU, the peak
    device memory in MB."""
    if device_pass is None:
        return {"device": "cpu"}
    return {"device": device_pass.name, "device_peak_MB": device_pass.peak_bytes() / 2 ** 20}
