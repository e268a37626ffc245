"""Numbers checked before (and during) heavy work: particle parameters, pixels, EM values.

One absurd value must stop a run with one line naming the file, the field, the particle and
the value -- never turn every posterior into NaN. Three checks:

* :func:`check_particle_values` (when particles are loaded): every CTF, optics and shift
  value is finite and within :data:`LIMITS` (plus a CTF B-factor whose envelope stays finite
  up to Nyquist);
* :func:`check_image_batch` (for every batch of images as preprocessing reads it): no
  non-finite pixel, no pixel beyond :data:`MAX_ABS_PIXEL`, no constant image (all zero or one
  value: nothing to classify; such images are an error, not a silent skip -- remove them
  from the particle file);
* :func:`check_em_values` (every EM iteration and before writing): posteriors and
  log-likelihoods are finite, else the run stops before its outputs are written.

Angles are checked where they are read (:mod:`hetclass.io.star`, ``cryosparc_read``): a
rotation matrix made from any finite angle is valid, so the raw value is what is absurd.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .errors import InputError

MAX_ABS_PIXEL = 1e8        # |pixel| beyond this is absurd (far from float32 overflow in FFTs)
MAX_ABS_ANGLE_DEG = 36000.0   # 100 turns: any real angle is far inside
MAX_ENVELOPE_EXPONENT = 50.0  # exp(-B s^2 / 4) at Nyquist may not exceed e^50

# internal attribute -> (low, high, unit, STAR label, .cs field, .cs value per internal unit)
LIMITS = {
    "defocus_u_A": (-1e6, 1e6, "A", "rlnDefocusU", "ctf/df1_A", 1.0),
    "defocus_v_A": (-1e6, 1e6, "A", "rlnDefocusV", "ctf/df2_A", 1.0),
    "defocus_angle_deg": (-MAX_ABS_ANGLE_DEG, MAX_ABS_ANGLE_DEG, "deg", "rlnDefocusAngle",
                          "ctf/df_angle_rad", np.pi / 180),
    "phase_shift_deg": (-MAX_ABS_ANGLE_DEG, MAX_ABS_ANGLE_DEG, "deg", "rlnPhaseShift",
                        "ctf/phase_shift_rad", np.pi / 180),
    "ctf_bfactor_A2": (-1e5, 1e5, "A^2", "rlnCtfBfactor", "ctf/bfactor", 1.0),
    "ctf_scale": (1e-6, 1e3, "", "rlnCtfScalefactor", "ctf/scale", 1.0),
    "voltage_kV": (1.0, 3000.0, "kV", "rlnVoltage", "ctf/accel_kv", 1.0),
    "cs_mm": (-100.0, 100.0, "mm", "rlnSphericalAberration", "ctf/cs_mm", 1.0),
    "amplitude_contrast": (0.0, 0.999, "", "rlnAmplitudeContrast", "ctf/amp_contrast", 1.0),
    "pixel_size_A": (1e-3, 1e3, "A", "rlnImagePixelSize", "blob/psize_A", 1.0),
    "box_px": (1, 16384, "px", "rlnImageSize", "blob/shape", 1.0),
}


def _field(particles, attr: str) -> tuple:
    """(field name in the particles' own format, factor from internal to that format)."""
    spec = LIMITS[attr]
    if (particles.source or {}).get("format") == "cs":
        return spec[4], spec[5]
    return spec[3], 1.0


def _who(particles, i: int) -> str:
    src = particles.source or {}
    name = str(np.asarray(particles.image_names)[i])
    if src.get("format") == "cs" and src.get("dataset") is not None:
        uid = int(np.asarray(src["dataset"]["uid"])[np.asarray(src["rows"])[i]])
        return f"particle uid {uid} ({name})"
    return f"particle {i + 1} ({name})"


def _check_range(particles, attr: str, values: np.ndarray, members=None) -> None:
    lo, hi, unit, *_ = LIMITS[attr]
    values = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < lo) | (values > hi))
    if not bad.size:
        return
    field, factor = _field(particles, attr)
    i = int(bad[0])
    raw = float(values[i]) * factor
    where = (_who(particles, i) if members is None
             else f"optics group {i + 1}, e.g. {_who(particles, int(members[i]))}")
    span = f"[{lo * factor:g}, {hi * factor:g}]"
    unit = f" {unit}" if factor == 1 and unit else ""
    raise InputError(f"{where}: not a finite number within {span}{unit} ({bad.size} bad)",
                     file=(particles.source or {}).get("path"), field=field, value=raw)


def check_particle_values(particles) -> None:
    """InputError for the first non-finite or absurd CTF, optics or shift value (see
    :data:`LIMITS`; shifts at most one box; a CTF B-factor whose envelope at Nyquist would
    exceed e^50)."""
    n = len(particles)
    for attr in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg"):
        _check_range(particles, attr, getattr(particles, attr))
    for attr in ("phase_shift_deg", "ctf_bfactor_A2", "ctf_scale"):
        if getattr(particles, attr) is not None:
            _check_range(particles, attr, getattr(particles, attr))
    o = particles.optics
    group = np.asarray(particles.optics_group)
    members = np.zeros(len(o), dtype=np.int64)          # first particle of each group
    used, first = np.unique(group, return_index=True)
    members[used] = first
    for attr in ("voltage_kV", "cs_mm", "amplitude_contrast", "pixel_size_A"):
        _check_range(particles, attr, getattr(o, attr), members)
    box = np.asarray(o.box_px, dtype=np.float64)
    _check_range(particles, "box_px", np.where(box == 0, 1, box), members)  # 0: not known yet
    pixel = np.asarray(particles.pixel_size_A, dtype=np.float64)
    shifts = np.asarray(particles.shifts_A, dtype=np.float64).reshape(n, 2)
    size_A = np.where(particles.box_px > 0, particles.box_px, 1e5) * pixel
    bad = np.flatnonzero(~np.isfinite(shifts).all(1) | (np.abs(shifts).max(1) > size_A))
    if bad.size:
        i = int(bad[0])
        cs = (particles.source or {}).get("format") == "cs"
        raise InputError(f"{_who(particles, i)}: origin shift outside the image "
                         f"({bad.size} bad)", file=(particles.source or {}).get("path"),
                         field="alignments3D/shift" if cs else "rlnOriginXAngst/YAngst",
                         value=(shifts[i] / pixel[i]).tolist() if cs else shifts[i].tolist())
    if particles.ctf_bfactor_A2 is not None:
        exponent = -np.asarray(particles.ctf_bfactor_A2) / (16 * pixel ** 2)
        bad = np.flatnonzero(exponent > MAX_ENVELOPE_EXPONENT)
        if bad.size:
            i = int(bad[0])
            field, _ = _field(particles, "ctf_bfactor_A2")
            raise InputError(f"{_who(particles, i)}: CTF B-factor so negative that the CTF "
                             f"envelope explodes (exp({exponent[i]:.0f}) at Nyquist)",
                             file=(particles.source or {}).get("path"), field=field,
                             value=float(particles.ctf_bfactor_A2[i]))


def _stack_file(particles, i: int) -> str:
    name = str(np.asarray(particles.image_names)[i])
    stack = name.partition("@")[2] or name
    return stack if os.path.isabs(stack) else os.path.join(particles.project_dir, stack)


def check_image_batch(images: np.ndarray, rows: np.ndarray, particles) -> None:
    """InputError for the first image of a batch with a non-finite pixel, a pixel beyond
    :data:`MAX_ABS_PIXEL` or a single value everywhere (all zero: nothing to classify).

    ``images`` (n, B, B) as read; ``rows`` (n,) their global particle indices.
    """
    if len(images) == 0:
        return
    flat = np.asarray(images).reshape(len(images), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)      # NaN and inf show up in these
    nonfinite = ~(np.isfinite(lo) & np.isfinite(hi))
    absurd = ~nonfinite & (np.maximum(np.abs(lo), np.abs(hi)) > MAX_ABS_PIXEL)
    constant = ~nonfinite & (lo == hi)
    for mask, what in ((nonfinite, "contains a non-finite pixel"),
                       (absurd, f"has a pixel beyond +-{MAX_ABS_PIXEL:g}"),
                       (constant, "is constant (every pixel the same)")):
        bad = np.flatnonzero(mask)
        if not bad.size:
            continue
        k = int(bad[0])
        img = flat[k]
        value = (img[~np.isfinite(img)][0] if what.startswith("contains")
                 else img[np.argmax(np.abs(img))])
        i = int(np.asarray(rows)[k])
        name = str(np.asarray(particles.image_names)[i])
        tail = ("; remove such particles (e.g. relion_star_handler or a Subset selection) and "
                "rerun" if mask is constant else "")
        raise InputError(f"image {name} of particle {i + 1} {what} ({bad.size} of the "
                         f"{len(images)} images of this batch){tail}",
                         file=_stack_file(particles, i), field=f"image {name.partition('@')[0]}",
                         value=float(value))


def check_em_values(state, particles, comm=None, rows: Optional[np.ndarray] = None) -> None:
    """InputError (on every rank) when an EM state or result holds a non-finite posterior
    or log-likelihood: the run stops before writing outputs, naming the first particle.

    ``state``: an ``EMState`` (per-particle arrays of this rank, global indices ``rows``)
    or an ``EMResult`` (every particle). Collective under MPI when ``comm`` is given.
    """
    post = getattr(state, "posteriors", None)
    ll = getattr(state, "loglik", None)
    if ll is None:
        ll = getattr(state, "log_likelihood", None)
    n_local = 0 if post is None else len(post)
    bad = np.zeros(n_local, dtype=bool)
    if post is not None:
        bad |= ~np.isfinite(np.asarray(post)).reshape(n_local, -1).all(axis=1)
    if ll is not None and len(ll) == n_local:
        bad |= ~np.isfinite(np.asarray(ll))
    idx = np.arange(n_local) if rows is None else np.asarray(rows)
    first = int(idx[np.flatnonzero(bad)[0]]) if bad.any() else None
    found = [(int(bad.sum()), first)]
    if comm is not None:
        found = comm.allgather_obj(found[0])
    count = sum(c for c, _ in found)
    if count == 0:
        return
    i = min(f for c, f in found if f is not None)
    name = str(np.asarray(particles.image_names)[i])
    it = getattr(state, "iteration", None)
    at = f" at iteration {it}" if it is not None else ""
    raise InputError(f"the classification produced non-finite posteriors for {count} "
                     f"particles{at} (first: particle {i + 1}, image {name}); no outputs "
                     "were written; check that particle's image and CTF values",
                     file=(particles.source or {}).get("path"), field="posteriors",
                     value=name)
