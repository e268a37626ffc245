"""Checkpoint of the EM state after every iteration (atomic), and resume from it.

The state holds everything the next iteration reads, stored exactly (npz), so a run killed
at any point and continued gives the same result as an uninterrupted one.

A checkpoint also records what it was made from, and :func:`load` refuses (one line saying
what differs) to continue from it with anything else: the options that change the result,
and the particle set (:func:`particle_identity`: hashes of the image names, poses, shifts,
CTF and optics values and half sets, and the size and modification time of every stack).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields
from typing import Any, Dict, List, Optional

import numpy as np

from .em import EMState
from .errors import InputError
from .io.atomic import atomic_path
from .options import ClassifyOptions
from .particles import ParticleSet

CHECKPOINT = "run_checkpoint.npz"
# options that change the result; a resumed run must match them
_KEYS = ("classes", "target_res_A", "tau2_fudge", "hard", "seed", "init", "init_lowpass_A",
         "references", "particle_diameter_A", "solvent_mask", "focus_mask", "convergence_pct")


def _fingerprint(options: ClassifyOptions, n_particles: int) -> str:
    d = asdict(options)
    return json.dumps({"n": int(n_particles), **{k: d.get(k) for k in _KEYS}}, sort_keys=True,
                      default=str)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


# components of the particle identity, compared in this order
_IDENTITY_KEYS = ("particles", "image names", "poses", "shifts", "CTF values", "optics values",
                  "half sets")


def stack_stats(particles: ParticleSet) -> Dict[str, Optional[List[int]]]:
    """``{stack as named in image_names: [size_bytes, mtime_ns]}`` (``None`` if missing)."""
    names = np.asarray(particles.image_names).astype(str)
    stacks = np.unique(np.char.partition(names, "@")[:, 2])
    out: Dict[str, Optional[List[int]]] = {}
    for stack in stacks.tolist():
        path = stack if os.path.isabs(stack) else os.path.join(particles.project_dir, stack)
        try:
            st = os.stat(path)
            out[stack] = [int(st.st_size), int(st.st_mtime_ns)]
        except OSError:
            out[stack] = None
    return out


def particle_identity(particles: ParticleSet) -> dict:
    """What identifies a run's particle set (see the module docstring); JSON-ready."""
    names = "\n".join(np.asarray(particles.image_names).astype(str).tolist())
    o, g = particles.optics, np.asarray(particles.optics_group)
    return {
        "particles": int(len(particles)),
        "image names": hashlib.sha256(names.encode("utf-8", "surrogateescape")).hexdigest()[:32],
        "poses": _digest(np.asarray(particles.rotations, dtype=np.float64)),
        "shifts": _digest(np.asarray(particles.shifts_A, dtype=np.float64)),
        "CTF values": _digest(particles.defocus_u_A, particles.defocus_v_A,
                              particles.defocus_angle_deg, particles.phase_shift(),
                              particles.bfactor(), particles.scale()),
        "optics values": _digest(o.voltage_kV[g], o.cs_mm[g], o.amplitude_contrast[g],
                                 o.pixel_size_A[g], o.box_px[g]),
        "half sets": _digest(particles.subsets()),
        "stacks": stack_stats(particles),
    }


def _compare_identity(saved: Optional[dict], now: dict, path: str) -> None:
    """InputError naming the first difference between two :func:`particle_identity`."""
    again = "; continue only with the inputs of the interrupted run, or use --overwrite"
    if saved is None:
        raise InputError("checkpoint does not record its particle set (an older hetclass "
                         "made it); use --overwrite to start again", file=path,
                         field="particles")
    if saved.get("particles") != now["particles"]:
        raise InputError(f"checkpoint was made from {saved.get('particles')} particles, the "
                         f"input has {now['particles']}{again}", file=path, field="particles",
                         value=now["particles"])
    for key in _IDENTITY_KEYS[1:]:
        if saved.get(key) != now[key]:
            raise InputError(f"checkpoint was made from another particle set: the {key} "
                             f"differ{again}", file=path, field=key)
    before, after = saved.get("stacks") or {}, now["stacks"]
    for stack in sorted(set(before) | set(after)):
        a, b = before.get(stack), after.get(stack)
        if a == b:
            continue
        if a is None or b is None:
            what = "is new" if a is None else "is gone"
        elif a[0] != b[0]:
            what = f"changed size ({a[0]} -> {b[0]} bytes)"
        else:
            what = "was modified (another modification time)"
        raise InputError(f"particle stack {what} since the checkpoint was made{again}",
                         file=path, field="stack", value=stack)


def _compare_options(saved: str, now: str, path: str) -> None:
    if saved == now:
        return
    try:
        a, b = json.loads(saved), json.loads(now)
        key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        field, value = ("particles" if key == "n" else key), b.get(key)
        detail = f"{key} was {a.get(key)!r}"
    except (ValueError, StopIteration):
        field, value, detail = "options", None, "options differ"
    raise InputError(f"checkpoint was made with other options ({detail}); continue with the "
                     "options of the interrupted run, or use --overwrite", file=path,
                     field=field, value=value)


# per-particle arrays of EMState: local to a rank's shard in memory, global in the file
PER_PARTICLE = ("labels", "posteriors", "loglik")


def save(out_dir: str, state: EMState, options: ClassifyOptions, n_particles: int, comm=None,
         rows: Optional[np.ndarray] = None, identity: Optional[dict] = None) -> None:
    """Write ``state`` (collective under MPI: every rank calls it, rank 0 writes).

    ``rows`` are the global indices of this rank's particles (default: all ``n_particles``).
    The file holds every particle, so a run can resume with another number of ranks.
    ``identity`` (:func:`particle_identity`) is recorded for :func:`load` to compare.
    """
    arrays = {}
    meta: Dict[str, Any] = {"fingerprint": _fingerprint(options, n_particles)}
    if identity is not None:
        meta["identity"] = identity
    for f in fields(EMState):
        v = getattr(state, f.name)
        if isinstance(v, np.ndarray):
            if comm is not None and f.name in PER_PARTICLE:
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


def load(out_dir: str, options: ClassifyOptions, n_particles: int,
         rows: Optional[np.ndarray] = None,
         identity: Optional[dict] = None) -> Optional[EMState]:
    """The checkpointed state (per-particle arrays restricted to ``rows``), or None.

    InputError (one line saying what differs) when the checkpoint was made with other
    options, or -- given ``identity`` (:func:`particle_identity` of this run's particles) --
    from another particle set or stacks changed since.
    """
    path = os.path.join(out_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(bytes(arrays.pop("_meta")).decode())
    except Exception as exc:  # a damaged checkpoint is a user-visible input problem
        raise InputError(f"unreadable checkpoint ({type(exc).__name__}); rerun with --overwrite",
                         file=path) from None
    saved_identity = meta.pop("identity", None)
    if identity is not None:
        _compare_identity(saved_identity, identity, path)
    _compare_options(meta.pop("fingerprint", ""), _fingerprint(options, n_particles), path)
    if rows is not None:
        for name in PER_PARTICLE:
            if name in arrays:
                arrays[name] = arrays[name][rows]
    kwargs = {**meta, **arrays}
    return EMState(**{f.name: kwargs[f.name] for f in fields(EMState) if f.name in kwargs})
