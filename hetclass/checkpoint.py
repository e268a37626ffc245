"""Checkpoint of the EM state after every iteration (atomic), and resume from it.

The state holds everything the next iteration reads, stored exactly (npz), so a run killed
at any point and continued gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Optional

import numpy as np

from .em import EMState
from .errors import InputError
from .io.atomic import atomic_path

CHECKPOINT = "run_checkpoint.npz"
# options that change the result; a resumed run must match them
_KEYS = ("classes", "target_res_A", "tau2_fudge", "hard", "seed", "init", "init_lowpass_A",
         "references", "particle_diameter_A", "solvent_mask", "focus_mask", "convergence_pct")


def _fingerprint(options, n_particles: int) -> str:
    d = asdict(options)
    return json.dumps({"n": int(n_particles), **{k: d.get(k) for k in _KEYS}}, sort_keys=True,
                      default=str)


# per-particle arrays of EMState: local to a rank's shard in memory, global in the file
_PER_PARTICLE = ("labels", "posteriors", "loglik")


def save(out_dir: str, state: EMState, options, n_particles: int, comm=None,
         rows: Optional[np.ndarray] = None) -> None:
    """Write ``state`` (collective under MPI: every rank calls it, rank 0 writes).

    ``rows`` are the global indices of this rank's particles (default: all ``n_particles``).
    The file holds every particle, so a run can resume with another number of ranks.
    """
    arrays = {}
    meta = {"fingerprint": _fingerprint(options, n_particles)}
    for f in fields(EMState):
        v = getattr(state, f.name)
        if isinstance(v, np.ndarray):
            if comm is not None and f.name in _PER_PARTICLE:
                v = comm.gather_rows_root(v, rows, n_particles)   # None except on rank 0
            arrays[f.name] = v
        elif v is not None:
            meta[f.name] = v
    if comm is not None and not comm.is_root:
        return
    arrays["_meta"] = np.frombuffer(json.dumps(meta, default=float).encode(), dtype=np.uint8)
    with atomic_path(os.path.join(out_dir, CHECKPOINT)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load(out_dir: str, options, n_particles: int,
         rows: Optional[np.ndarray] = None) -> Optional[EMState]:
    """The checkpointed state (per-particle arrays restricted to ``rows``), or None."""
    path = os.path.join(out_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # a damaged checkpoint is a user-visible input problem
        raise InputError(f"unreadable checkpoint ({type(exc).__name__}); rerun with --overwrite",
                         file=path) from None
    meta = json.loads(bytes(arrays.pop("_meta")).decode())
    if meta.pop("fingerprint") != _fingerprint(options, n_particles):
        raise InputError("checkpoint was made with other inputs or options; use --overwrite",
                         file=path, field="options")
    if rows is not None:
        for name in _PER_PARTICLE:
            if name in arrays:
                arrays[name] = arrays[name][rows]
    kwargs = {**meta, **arrays}
    return EMState(**{f.name: kwargs[f.name] for f in fields(EMState) if f.name in kwargs})
