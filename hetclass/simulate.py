"""Ground-truth particle simulator: analytic projection of Gaussian pseudo-atoms.

Independent of the engine's Fourier-slice projector (nothing here interpolates a map):

1. **Projection.** Pseudo-atom centres are rotated with the particle's RELION matrix ``A``
   (image coordinates = ``A @ volume coordinates``, :mod:`hetclass.particles`); the line
   integral of a 3D Gaussian along z is a 2D Gaussian, so image ``i`` is the separable sum
   ``Gy_i.T @ diag(w) @ Gx_i`` sampled at pixel centres (one sgemm per image). Pixel
   ``(row j, col i)`` sits at ``((i, j) - box // 2) * pixel_size``. Values are projected mass
   per A^2 (``relion_project`` of the rasterised map gives the same images / pixel size).
2. **Shift.** The particle is drawn at ``-shifts_A``: translating the image by
   ``+shifts_A / pixel_size`` (RELION's rlnOriginX/YAngst) centres it.
3. **CTF.** :func:`hetclass.ctf.ctf_values` multiplies the FFT of the image zero-padded to
   ``pad_px >= 2 box`` (large enough for the CTF's delocalisation at the highest defocus, so
   nothing wraps around); the central ``box`` window is cut out, as extraction from a
   micrograph would.
4. **Noise.** White Gaussian noise of one standard deviation for the whole data set, from a
   seeded generator: ``SNR = mean_i var(clean_i inside the particle circle) / sigma_noise^2``
   where ``clean_i`` is the noise-free CTF-modulated image and the circle has radius
   ``bg_radius_px`` (default 75 % of the box radius).
5. **Normalisation** like relion_preprocess: each noisy image minus its background mean, divided
   by its background standard deviation (background = outside the circle).

``simulate_dataset`` writes a RELION 3.1 project (``particles.star``, ``Particles/*.mrcs``,
``true_<state>.mrc``, ``truth.csv``); the STAR holds no truth column.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import mrcfile
import numpy as np
import pandas as pd
import scipy.fft
import starfile

from hetclass.ctf import ctf_values, electron_wavelength_A
from hetclass.errors import HetclassWarning, InputError
from hetclass.geometry import euler_to_matrix, matrix_to_euler
from hetclass.phantoms import hinged_gaussians, model_to_gaussians, rasterise, structure_hinge_deg
from hetclass.preprocess import single_threaded_blas

_BATCH = 128


# ----- images ---------------------------------------------------------------------------------
def project_gaussians(xyz_A, amplitude, sigma_A, rotations, shifts_A, window_px: int,
                      pixel_size_A: float) -> np.ndarray:
    """Noise-free, CTF-free projections, float32 ``(n, window_px, window_px)`` ``[y, x]``.

    ``xyz_A`` (m, 3) or per-particle (n, m, 3); ``amplitude``, ``sigma_A`` (m,);
    ``rotations`` (n, 3, 3) RELION A; ``shifts_A`` (n, 2). Pixel ``[j, i]`` is at
    ``((i, j) - window_px // 2) * pixel_size_A`` and holds the projected density there.
    """
    rot = np.asarray(rotations, dtype=np.float32)[:, :2, :]
    xyz = np.asarray(xyz_A, dtype=np.float32)
    # (n, m, 2) rotated centres minus the shift, then laid out (n, 2, m) for contiguous loops
    centres = xyz @ rot.transpose(0, 2, 1) - np.asarray(shifts_A, dtype=np.float32)[:, None, :]
    centres = np.ascontiguousarray(centres.transpose(0, 2, 1))
    inv_sigma = (1.0 / np.asarray(sigma_A, dtype=np.float64)).astype(np.float32)
    weight = (np.asarray(amplitude, np.float64) / (2 * np.pi * np.asarray(sigma_A) ** 2))
    grid = ((np.arange(window_px) - window_px // 2) * pixel_size_A).astype(np.float32)

    def gauss(axis):  # (n, window, m): exp(-(grid - c)^2 / (2 sigma^2)), 0 beyond 7.8 sigma
        u = grid[None, :, None] - centres[:, axis, None, :]
        u *= inv_sigma
        u *= u
        u *= np.float32(-0.5)
        np.maximum(u, np.float32(-31.0), out=u)
        np.exp(u, out=u)
        np.copyto(u, np.float32(0.0), where=u < np.float32(1e-13))  # no subnormals (slow)
        return u

    gx = gauss(0)
    gy = gauss(1)
    gy *= weight.astype(np.float32)
    out = np.empty((len(rot), window_px, window_px), dtype=np.float32)
    for i in range(len(rot)):  # one BLAS sgemm per image: faster than a stacked matmul
        out[i] = gy[i] @ gx[i].T
    return out


def pad_size_px(box_px: int, window_px: int, pixel_size_A: float, max_defocus_A: float,
                voltage_kV: float, cs_mm: float) -> int:
    """FFT size for the CTF step: >= 2 box and wide enough for the CTF delocalisation."""
    lam = float(electron_wavelength_A(voltage_kV))
    s = 0.5 / pixel_size_A
    deloc_px = (lam * max_defocus_A * s + cs_mm * 1e7 * lam ** 3 * s ** 3) / pixel_size_A
    need = max(2 * box_px, window_px, int(np.ceil((box_px + window_px) / 2 + deloc_px)) + 8)
    size = scipy.fft.next_fast_len(need, real=True)
    return size + size % 2


def simulate_images(gaussians, rotations, shifts_A, defocus_u_A, defocus_v_A, defocus_angle_deg,
                    box_px: int, pixel_size_A: float, voltage_kV=300.0, cs_mm=2.7,
                    amplitude_contrast=0.1, phase_shift_deg=0.0, ctf: bool = True,
                    threads: int = 1) -> np.ndarray:
    """Noise-free CTF-modulated particle images, float32 ``(n, box_px, box_px)``.

    ``gaussians = (xyz_A (m,3) or (n,m,3), amplitude (m,), sigma_A (m,))``; per-particle
    arrays have length n (CTF optics may be scalars or (n,)). See the module docstring.
    """
    xyz, amp, sigma = gaussians
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = len(rotations)
    shifts_A = np.asarray(shifts_A, dtype=np.float64).reshape(n, 2)
    per = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for k, v in dict(
        du=defocus_u_A, dv=defocus_v_A, ang=defocus_angle_deg, kv=voltage_kV, cs=cs_mm,
        q0=amplitude_contrast, ph=phase_shift_deg).items()}
    xyz = np.asarray(xyz, dtype=np.float32)
    radius_A = float(np.linalg.norm(xyz, axis=-1).max() + 4.5 * np.max(sigma))
    shift_max = float(np.abs(shifts_A).max()) if n else 0.0
    window = 2 * int(np.ceil((radius_A + shift_max) / pixel_size_A)) + 2
    pad = pad_size_px(box_px, window, pixel_size_A, float(np.max(per["du"], initial=0.0)),
                      float(np.max(per["kv"], initial=300.0)),
                      float(np.max(per["cs"], initial=0.0)))
    window = min(window, pad)
    fy = scipy.fft.fftfreq(pad, d=pixel_size_A)
    fx = scipy.fft.rfftfreq(pad, d=pixel_size_A)
    fy2, fx2 = np.meshgrid(fy, fx, indexing="ij")
    w0, c0 = pad // 2 - window // 2, pad // 2 - box_px // 2
    out = np.empty((n, box_px, box_px), dtype=np.float32)

    def run(start):
        sl = slice(start, min(start + _BATCH, n))
        part = xyz if xyz.ndim == 2 else xyz[sl]
        img = project_gaussians(part, amp, sigma, rotations[sl], shifts_A[sl], window, pixel_size_A)
        padded = np.zeros((len(img), pad, pad), dtype=np.float32)
        padded[:, w0:w0 + window, w0:w0 + window] = img
        if ctf:
            f = scipy.fft.rfft2(padded)
            f *= ctf_values(fx2.ravel(), fy2.ravel(), per["du"][sl], per["dv"][sl],
                            per["ang"][sl], per["kv"][sl], per["cs"][sl], per["q0"][sl],
                            per["ph"][sl]).reshape(len(img), pad, -1)
            padded = scipy.fft.irfft2(f, s=(pad, pad)).astype(np.float32)
        out[sl] = padded[:, c0:c0 + box_px, c0:c0 + box_px]

    starts = range(0, n, _BATCH)
    with single_threaded_blas():
        if threads > 1 and n > _BATCH:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(run, starts))
        else:
            for s in starts:
                run(s)
    return out


def circle_mask(box_px: int, radius_px: float) -> np.ndarray:
    """(box, box) bool, True inside the circle of ``radius_px`` around pixel box//2."""
    r = np.arange(box_px) - box_px // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius_px ** 2


def random_rotations(rng: np.random.Generator, n: int, distribution: str = "uniform"):
    """(rot, tilt, psi) degrees, each (n,): ``"uniform"`` on SO(3) (random unit quaternions), or
    ``"preferred"``: half the particles within ~15 deg (Gaussian tilt) of the top view."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    m = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)
    rot, tilt, psi = matrix_to_euler(m)
    if distribution == "preferred":
        pick = rng.random(n) < 0.5
        tilt = np.where(pick, np.abs(rng.normal(0.0, 15.0, n)), tilt)
    elif distribution != "uniform":
        raise InputError("pose_distribution must be 'uniform' or 'preferred'",
                         field="pose_distribution", value=distribution)
    return rot, tilt, psi


# ----- data sets ------------------------------------------------------------------------------
@dataclass
class SimulatedDataset:
    """What :func:`simulate_dataset` wrote (paths absolute) and the truth it used."""

    out_dir: str
    star_path: str
    truth_path: str
    stack_paths: List[str]
    map_paths: Dict[str, str]                # state name -> true_<state>.mrc
    maps: Dict[str, np.ndarray]              # state name -> (box, box, box) float32
    state_names: List[str]
    labels: np.ndarray                       # (n,) int 0-based index into state_names
    hinge_deg: np.ndarray                    # (n,) float, NaN when unknown
    image_names: np.ndarray                  # (n,) str "000001@Particles/stack_001.mrcs"
    rotations: np.ndarray                    # (n, 3, 3) RELION A
    shifts_A: np.ndarray                     # (n, 2)
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray
    random_subset: np.ndarray                # (n,) 1/2 (0 when random_subset=False)
    box_px: int
    pixel_size_A: float
    snr: Optional[float]
    noise_sigma: float                       # in raw (pre-normalisation) image units
    seed: int
    clean_stack_paths: List[str] = field(default_factory=list)
    # per-image normalisation: image in the stack = (raw - norm_offset) * norm_scale, where raw =
    # clean + noise_sigma * white noise (so the noise in the stack has std noise_sigma * scale)
    norm_offset: Optional[np.ndarray] = None   # (n,) float64
    norm_scale: Optional[np.ndarray] = None    # (n,) float64
    # the poses written to the STAR file (equal to rotations/shifts_A unless pose errors)
    star_rotations: Optional[np.ndarray] = None  # (n, 3, 3)
    star_shifts_A: Optional[np.ndarray] = None   # (n, 2)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def _tmp(path: str) -> str:
    return f"{path}.tmp{os.getpid()}"


def _label(mrc) -> None:
    """Replace mrcfile's time-stamped label so equal data give equal bytes."""
    mrc.header.label[0] = b"hetclass.simulate"
    mrc.header.nlabl = 1


def _write_map(path: str, vol: np.ndarray, pixel_size_A: float) -> None:
    tmp = _tmp(path)
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(vol, dtype=np.float32))
        mrc.voxel_size = pixel_size_A
        _label(mrc)
    os.replace(tmp, path)


def _counts(populations: np.ndarray, n: int) -> np.ndarray:
    """Largest-remainder integer counts summing to n."""
    raw = populations * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def _as_gaussians(value, min_sigma_A: float):
    if isinstance(value, (tuple, list)) and len(value) == 3:
        xyz, amp, sigma = (np.asarray(v, dtype=np.float64) for v in value)
        hinge = float("nan")
    else:
        xyz, amp, sigma = model_to_gaussians(value)
        hinge = structure_hinge_deg(value)
    return (xyz, amp, np.maximum(sigma, min_sigma_A)), hinge


_DEFAULTS = dict(
    box_px=64, pixel_size_A=3.0, snr=0.05, defocus_range_A=(10000.0, 25000.0),
    astigmatism_A=400.0, max_shift_A=6.0, seed=0, voltage_kV=300.0, cs_mm=2.7,
    amplitude_contrast=0.1, n_optics_groups=1, stack_format=".mrcs", random_subset=True,
    pose_distribution="uniform", images_per_stack=2000, particles_per_micrograph=50,
    defocus_jitter_A=100.0, bg_radius_px=None, min_sigma_px=1.0, write_clean=False, threads=None,
    pose_error_deg=0.0, shift_error_A=0.0)


def simulate_dataset(out_dir, states, populations=None, n_particles: int = 1000, box_px: int = 64,
                     pixel_size_A: float = 3.0, snr: Optional[float] = 0.05,
                     defocus_range_A=(10000.0, 25000.0), astigmatism_A: float = 400.0,
                     max_shift_A: float = 6.0, seed: int = 0, voltage_kV: float = 300.0,
                     cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
                     n_optics_groups: int = 1, stack_format: str = ".mrcs",
                     random_subset: bool = True, pose_distribution: str = "uniform",
                     hinge_values: Optional[Dict[str, float]] = None,
                     images_per_stack: int = 2000, particles_per_micrograph: int = 50,
                     defocus_jitter_A: float = 100.0, bg_radius_px: Optional[float] = None,
                     min_sigma_px: float = 1.0, write_clean: bool = False,
                     threads: Optional[int] = None, pose_error_deg: float = 0.0,
                     shift_error_A: float = 0.0) -> SimulatedDataset:
    """Simulate a RELION 3.1 particle data set of discrete states with known truth.

    ``states``: name -> gemmi.Structure or ``(xyz_A, amplitude, sigma_A)`` Gaussians (sigma is
    floored at ``min_sigma_px`` pixels so maps and images are properly sampled).
    ``populations``: fractions per state (normalised; default equal); exact counts by largest
    remainder, randomly ordered. ``snr=None`` adds no noise and skips normalisation.
    Per micrograph (``particles_per_micrograph``) a defocus is drawn uniformly in
    ``defocus_range_A``, astigmatism ``dU - dV`` uniformly in ``[0, astigmatism_A]`` at a
    uniform angle; each particle adds ``N(0, defocus_jitter_A)``. Shifts are uniform in
    ``[-max_shift_A, max_shift_A]^2``; poses ``"uniform"`` on SO(3) or ``"preferred"``
    (:func:`random_rotations`). Optics group = micrograph index mod ``n_optics_groups``.
    ``hinge_values``: state name -> hinge angle for truth.csv (default: from phantom
    structures, else NaN). ``write_clean`` also writes ``Particles/clean_*`` stacks (noise-free,
    scaled by the same per-image normalisation). ``images_per_stack`` images per stack file.
    ``pose_error_deg`` / ``shift_error_A``: the STAR file gets poses that differ from the ones
    the images were made with, as a refinement's errors would: a rotation about a random axis
    by a half-normal angle with this median, and a 2D Gaussian shift error whose length has
    this median (:func:`perturb_poses`). The true poses stay in the returned dataset.
    Seeded by one ``SeedSequence(seed)``: same arguments, same bytes.
    """
    names = list(states)
    if not names:
        raise InputError("no states to simulate", field="states", value=states)
    pops = np.ones(len(names)) if populations is None else np.asarray(populations, dtype=np.float64)
    if pops.shape != (len(names),) or np.any(pops < 0) or pops.sum() <= 0:
        raise InputError("populations need one non-negative fraction per state",
                         field="populations", value=populations)
    opts = {k: v for k, v in locals().items() if k in _DEFAULTS}
    _check(n_particles, opts)
    gauss, hinge_of = {}, {}
    for name in names:
        gauss[name], hinge_of[name] = _as_gaussians(states[name], min_sigma_px * pixel_size_A)
    hinge_of.update(hinge_values or {})
    n = int(n_particles)
    rng_lab = np.random.default_rng(np.random.SeedSequence(seed).spawn(7)[6])
    labels = np.repeat(np.arange(len(names)), _counts(pops / pops.sum(), n))
    labels = labels[rng_lab.permutation(n)]

    def clean_rows(rows, meta, thr):
        imgs = np.empty((len(rows), box_px, box_px), dtype=np.float32)
        for k, name in enumerate(names):
            sel = labels[rows] == k
            if sel.any():
                imgs[sel] = _images_for(gauss[name], rows[sel], meta, opts, thr)
        return imgs

    hinge = np.array([float(hinge_of.get(names[lab], np.nan)) for lab in labels])
    return _simulate(out_dir, n, names, labels, hinge, clean_rows, gauss, opts)


def _check(n_particles, o):
    if n_particles < 1 or o["box_px"] < 8 or not (o["pixel_size_A"] > 0):
        raise InputError("need n_particles >= 1, box_px >= 8 and pixel_size_A > 0",
                         field="n_particles/box_px/pixel_size_A",
                         value=(n_particles, o["box_px"], o["pixel_size_A"]))
    if o["snr"] is not None and not (o["snr"] > 0):
        raise InputError("snr must be > 0 (or None for no noise)", field="snr", value=o["snr"])
    if o["stack_format"] not in (".mrcs", ".mrc"):
        raise InputError("stack_format must be '.mrcs' or '.mrc'", field="stack_format",
                         value=o["stack_format"])
    lo, hi = (float(v) for v in o["defocus_range_A"])
    if not (0 < lo <= hi):
        raise InputError("defocus_range_A must be (low, high) with 0 < low <= high",
                         field="defocus_range_A", value=o["defocus_range_A"])


def _images_for(gaussians, rows, meta, o, threads):
    return simulate_images(gaussians, meta["rotations"][rows], meta["shifts_A"][rows],
                           meta["du"][rows], meta["dv"][rows], meta["dang"][rows], o["box_px"],
                           o["pixel_size_A"], o["voltage_kV"], o["cs_mm"],
                           o["amplitude_contrast"], threads=threads)


def _metadata(n, o):
    """Poses, shifts, CTFs, micrographs, optics groups and half sets, seeded."""
    child = np.random.SeedSequence(o["seed"]).spawn(7)
    rng_pose, rng_shift, rng_ctf, rng_sub = (np.random.default_rng(c) for c in child[:4])
    rot, tilt, psi = (np.round(a, 6) for a in random_rotations(rng_pose, n, o["pose_distribution"]))
    m = o["max_shift_A"]
    mic = np.arange(n) // int(o["particles_per_micrograph"])
    n_mic = int(mic[-1]) + 1
    lo, hi = (float(v) for v in o["defocus_range_A"])
    mic_df = rng_ctf.uniform(lo, hi, n_mic)
    mic_ast = rng_ctf.uniform(0.0, o["astigmatism_A"], n_mic)
    mic_ang = rng_ctf.uniform(0.0, 180.0, n_mic)
    jitter = rng_ctf.normal(0.0, o["defocus_jitter_A"], n)
    subsets = np.zeros(n, dtype=np.int64)
    if o["random_subset"]:
        subsets = 1 + rng_sub.permutation(np.arange(n) % 2)
    rotations = euler_to_matrix(rot, tilt, psi)
    shifts_A = np.round(rng_shift.uniform(-m, m, (n, 2)), 6)
    star_rot, star_shift = perturb_poses(
        rotations, shifts_A, float(o["pose_error_deg"]), float(o["shift_error_A"]),
        np.random.SeedSequence(o["seed"], spawn_key=(_POSE_ERROR_STREAM,)))
    if float(o["pose_error_deg"]) > 0:
        srot, stilt, spsi = (np.round(a, 6) for a in matrix_to_euler(star_rot))
    else:
        srot, stilt, spsi = rot, tilt, psi
    return dict(rot=rot, tilt=tilt, psi=psi, rotations=rotations, shifts_A=shifts_A,
                star_euler=(srot, stilt, spsi), star_rotations=euler_to_matrix(srot, stilt, spsi),
                star_shifts_A=np.round(star_shift, 6),
                du=np.round(mic_df[mic] + mic_ast[mic] / 2 + jitter, 6),
                dv=np.round(mic_df[mic] - mic_ast[mic] / 2 + jitter, 6),
                dang=np.round(mic_ang[mic], 6), mic=mic, subsets=subsets,
                optics_group=mic % max(1, int(o["n_optics_groups"])), rng_noise=child[4])


_POSE_ERROR_STREAM = 101   # named seed stream of the STAR pose errors


def perturb_poses(rotations: np.ndarray, shifts_A: np.ndarray, median_angle_deg: float,
                  median_shift_A: float, seed_seq: np.random.SeedSequence):
    """Poses with refinement-like errors: ``(rotations (n,3,3), shifts_A (n,2))``.

    Each rotation is composed with a rotation about a uniformly random axis by a half-normal
    angle whose median is ``median_angle_deg``; each shift gets an isotropic 2D Gaussian error
    whose length has median ``median_shift_A`` (Rayleigh). Zero medians return copies.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts_A = np.asarray(shifts_A, dtype=np.float64)
    n = len(rotations)
    rng = np.random.default_rng(seed_seq)
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.abs(rng.standard_normal(n)) * np.deg2rad(median_angle_deg) / 0.6744897501960817
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    delta = np.eye(3)[None] + s * k + (1 - c) * (k @ k)
    sigma_A = median_shift_A / np.sqrt(2.0 * np.log(2.0))
    d_shift = rng.standard_normal((n, 2)) * sigma_A
    if median_angle_deg <= 0:
        delta = np.broadcast_to(np.eye(3), (n, 3, 3))
    if median_shift_A <= 0:
        d_shift = np.zeros((n, 2))
    return rotations @ delta, shifts_A + d_shift


def _simulate(out_dir, n, names, labels, hinge, clean_rows, map_gaussians, o) -> SimulatedDataset:
    box_px, pixel_size_A, snr = int(o["box_px"]), float(o["pixel_size_A"]), o["snr"]
    threads = o["threads"] or min(4, os.cpu_count() or 1)
    meta = _metadata(n, o)
    rng_noise = np.random.default_rng(meta["rng_noise"])
    ips = int(o["images_per_stack"])
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(os.path.join(out_dir, "Particles"), exist_ok=True)
    stack_rel = [f"Particles/stack_{k + 1:03d}{o['stack_format']}"
                 for k in range((n + ips - 1) // ips)]
    image_names = np.array([f"{i % ips + 1:06d}@{stack_rel[i // ips]}" for i in range(n)])
    radius = 0.375 * box_px if o["bg_radius_px"] is None else float(o["bg_radius_px"])
    inside = circle_mask(box_px, radius)
    _warn_cut_off(map_gaussians, box_px, pixel_size_A)
    # pass 1: noise-free images into memory-mapped temporary stacks; signal variance per image
    signal_var, tmp_paths = _write_clean_stacks(out_dir, stack_rel, n, ips, box_px, inside,
                                                clean_rows, meta, threads)
    noise_sigma = 0.0 if snr is None else float(np.sqrt(signal_var.mean() / snr))

    # pass 2: noise (one seeded stream, stack by stack), normalisation, final names
    norm_offset, norm_scale, clean_paths = _add_noise(out_dir, stack_rel, tmp_paths, n, ips, inside,
                                                      snr, noise_sigma, rng_noise, pixel_size_A,
                                                      o["write_clean"])
    maps, map_paths = {}, {}
    for name in map_gaussians:
        maps[name] = rasterise(map_gaussians[name], box_px, pixel_size_A)
        map_paths[name] = os.path.join(out_dir, f"true_{_safe_name(name)}.mrc")
        _write_map(map_paths[name], maps[name], pixel_size_A)

    _write_star(os.path.join(out_dir, "particles.star"), image_names, meta, o)
    truth = pd.DataFrame({"image_name": image_names, "state_index": labels,
                          "state_name": [names[lab] for lab in labels], "hinge_deg": hinge,
                          "norm_offset": norm_offset, "norm_scale": norm_scale})
    truth_path = os.path.join(out_dir, "truth.csv")
    truth.to_csv(_tmp(truth_path), index=False)
    os.replace(_tmp(truth_path), truth_path)
    return SimulatedDataset(
        out_dir=out_dir, star_path=os.path.join(out_dir, "particles.star"), truth_path=truth_path,
        stack_paths=[os.path.join(out_dir, r) for r in stack_rel], map_paths=map_paths,
        maps=maps, state_names=list(names), labels=labels, hinge_deg=hinge,
        image_names=image_names, rotations=meta["rotations"], shifts_A=meta["shifts_A"],
        defocus_u_A=meta["du"], defocus_v_A=meta["dv"], defocus_angle_deg=meta["dang"],
        random_subset=meta["subsets"], box_px=box_px, pixel_size_A=pixel_size_A, snr=snr,
        noise_sigma=noise_sigma, seed=o["seed"],
        clean_stack_paths=clean_paths, norm_offset=norm_offset, norm_scale=norm_scale,
        star_rotations=meta["star_rotations"], star_shifts_A=meta["star_shifts_A"])


def _warn_cut_off(map_gaussians, box_px: int, pixel_size_A: float) -> None:
    """HetclassWarning (pointing at the caller of :func:`simulate_dataset`) for each state whose
    Gaussians reach beyond the box."""
    for name, (xyz, _, sigma) in map_gaussians.items():
        reach_A = float(np.abs(xyz).max() + 3 * np.max(sigma))
        if reach_A > (box_px // 2 - 1) * pixel_size_A:
            warnings.warn(f"state {name!r} reaches {reach_A:.0f} A from the centre, beyond the "
                          f"box ({box_px} px of {pixel_size_A} A): its true map is cut off",
                          HetclassWarning, stacklevel=4)


def _write_clean_stacks(out_dir: str, stack_rel, n: int, ips: int, box_px: int, inside, clean_rows,
                        meta, threads: int):
    """Pass 1: the noise-free images into memory-mapped temporary stacks (``ips`` images per
    stack). Returns the signal variance inside the ``inside`` circle per image (n,) and the
    temporary stack paths."""
    signal_var = np.empty(n)
    tmp_paths = []
    for k, rel in enumerate(stack_rel):
        rows = np.arange(k * ips, min(n, (k + 1) * ips))
        tmp = _tmp(os.path.join(out_dir, rel))
        tmp_paths.append(tmp)
        with mrcfile.new_mmap(tmp, shape=(len(rows), box_px, box_px), mrc_mode=2,
                              overwrite=True) as mrc:
            for start in range(0, len(rows), 1000):
                part = rows[start:start + 1000]
                imgs = clean_rows(part, meta, threads)
                mrc.data[start:start + len(part)] = imgs
                signal_var[part] = imgs[:, inside].var(axis=1)
    return signal_var, tmp_paths


def _add_noise(out_dir: str, stack_rel, tmp_paths, n: int, ips: int, inside, snr, noise_sigma: float,
               rng_noise, pixel_size_A: float, write_clean: bool):
    """Pass 2: white noise of ``noise_sigma`` (one seeded stream, stack by stack), RELION-style
    normalisation on the background outside ``inside``, stacks moved to their final names
    (clean, normalised copies too with ``write_clean``). Returns the per-image normalisation
    offset and scale (n,) and the clean stack paths."""
    norm_offset, norm_scale = np.zeros(n), np.ones(n)
    clean_paths = []
    for k, rel in enumerate(stack_rel):
        first = k * ips
        final = os.path.join(out_dir, rel)
        clean_final = os.path.join(out_dir, "Particles", f"clean_{os.path.basename(rel)}")
        with mrcfile.mmap(tmp_paths[k], mode="r+") as mrc:
            clean_mrc = None
            if write_clean:
                clean_mrc = mrcfile.new_mmap(_tmp(clean_final), shape=mrc.data.shape, mrc_mode=2,
                                             overwrite=True)
            for start in range(0, mrc.data.shape[0], 1000):
                clean = np.array(mrc.data[start:start + 1000])
                noisy = clean
                if snr is not None:
                    noise = rng_noise.standard_normal(clean.shape, dtype=np.float32)
                    noisy = clean + np.float32(noise_sigma) * noise
                    bg = noisy[:, ~inside]
                    mean = bg.mean(axis=1)[:, None, None]
                    scale = 1.0 / bg.std(axis=1)[:, None, None]
                    rows = slice(first + start, first + start + len(clean))
                    norm_offset[rows], norm_scale[rows] = mean[:, 0, 0], scale[:, 0, 0]
                    noisy = ((noisy - mean) * scale).astype(np.float32)
                    clean = ((clean - mean) * scale).astype(np.float32)
                mrc.data[start:start + len(clean)] = noisy
                if clean_mrc is not None:
                    clean_mrc.data[start:start + len(clean)] = clean
            for m in (mrc, clean_mrc):
                if m is not None:
                    m.set_image_stack()
                    m.voxel_size = pixel_size_A
                    m.update_header_stats()
                    _label(m)
            if clean_mrc is not None:
                clean_mrc.close()
                os.replace(_tmp(clean_final), clean_final)
                clean_paths.append(clean_final)
        os.replace(tmp_paths[k], final)
    return norm_offset, norm_scale, clean_paths


def _write_star(path, image_names, meta, o):
    """RELION 3.1 particles STAR (data_optics + data_particles), written atomically."""
    g = max(1, int(o["n_optics_groups"]))
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, g + 1),
        "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(g)],
        "rlnAmplitudeContrast": np.full(g, float(o["amplitude_contrast"])),
        "rlnSphericalAberration": np.full(g, float(o["cs_mm"])),
        "rlnVoltage": np.full(g, float(o["voltage_kV"])),
        "rlnImagePixelSize": np.full(g, float(o["pixel_size_A"])),
        "rlnImageSize": np.full(g, int(o["box_px"])), "rlnImageDimensionality": np.full(g, 2)})
    n = len(image_names)
    cols = {
        "rlnImageName": image_names,
        "rlnMicrographName": [f"Micrographs/mic_{m + 1:05d}.mrc" for m in meta["mic"]],
        "rlnAngleRot": meta["star_euler"][0], "rlnAngleTilt": meta["star_euler"][1],
        "rlnAnglePsi": meta["star_euler"][2],
        "rlnOriginXAngst": meta["star_shifts_A"][:, 0],
        "rlnOriginYAngst": meta["star_shifts_A"][:, 1],
        "rlnDefocusU": meta["du"], "rlnDefocusV": meta["dv"], "rlnDefocusAngle": meta["dang"],
        "rlnPhaseShift": np.zeros(n), "rlnCtfBfactor": np.zeros(n),
        "rlnOpticsGroup": meta["optics_group"] + 1}
    if o["random_subset"]:
        cols["rlnRandomSubset"] = meta["subsets"]
    text = starfile.to_string({"optics": optics, "particles": pd.DataFrame(cols)},
                              float_format="%.6f")
    lines = [ln for ln in text.splitlines() if not ln.startswith("# Created by")]
    text = "\n".join(lines).lstrip("\n")
    for block in ("data_optics", "data_particles"):
        text = text.replace(block, f"# version 30001\n\n{block}")
    with open(_tmp(path), "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    os.replace(_tmp(path), path)


def continuous_dataset(out_dir, n_particles: int = 1000, hinge_range_deg=(0.0, 30.0),
                       map_hinges_deg: Optional[Sequence[float]] = None,
                       **kwargs) -> SimulatedDataset:
    """Continuous heterogeneity: each particle's hinge angle uniform in ``hinge_range_deg``.

    Uses the complete phantom of :mod:`hetclass.phantoms`; every particle has its own
    conformation (exact per-particle Gaussians). truth.csv carries the per-particle hinge angle
    (state_index 0, state_name "continuous"); true maps are written at ``map_hinges_deg``
    (default: both ends and the middle of the range) as ``true_hinge_<deg>.mrc`` (keys
    ``"hinge_<deg>"``). Other keyword arguments as :func:`simulate_dataset` (seed, snr,
    box_px, pixel_size_A, ...; not states/populations/hinge_values).
    """
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise InputError("unknown option for continuous_dataset", field="kwargs",
                         value=sorted(unknown))
    o = dict(_DEFAULTS, **kwargs)
    _check(n_particles, o)
    lo, hi = (float(v) for v in hinge_range_deg)
    if hi < lo:
        raise InputError("hinge_range_deg must be (low, high)", field="hinge_range_deg",
                         value=hinge_range_deg)
    n = int(n_particles)
    rng = np.random.default_rng(np.random.SeedSequence(o["seed"]).spawn(8)[7])
    hinge = rng.uniform(lo, hi, n)
    floor = o["min_sigma_px"] * o["pixel_size_A"]
    _, amp, sigma = hinged_gaussians(np.zeros(1))
    sigma = np.maximum(sigma, floor)

    def clean_rows(rows, meta, thr):
        xyz, _, _ = hinged_gaussians(hinge[rows])
        return _images_for((xyz, amp, sigma), rows, meta, o, thr)

    angles = [lo, (lo + hi) / 2, hi] if map_hinges_deg is None else list(map_hinges_deg)
    map_g = {f"hinge_{a:g}": (hinged_gaussians(np.array([a]))[0][0], amp, sigma) for a in angles}
    ds = _simulate(out_dir, n, ["continuous"], np.zeros(n, dtype=np.int64), hinge, clean_rows,
                   map_g, o)
    return ds
