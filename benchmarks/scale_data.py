"""A large simulated particle set laid out as RELION extraction writes it (for bench_scale.py).

One stack per micrograph (150 to 250 images each, ``--images-per-stack`` on average), poses
and CTFs drawn like the output of a consensus refinement: half the particles near a preferred
(top) view, residual origins N(0, 2 A) per axis, defocus 0.8 to 2.5 um per micrograph with
astigmatism, a random half-set column (rlnRandomSubset) and a few optics groups. Images are
the noise-free projections of ``hetclass.simulate.simulate_images`` (analytic Gaussian
phantoms, CTF applied) plus white noise at a fixed SNR, normalised per image like
relion_preprocess (background mean 0, standard deviation 1).

Every stack comes from its own seeded stream (``SeedSequence(seed, spawn_key=(stack,))``),
so writing is resumable: a run that stops keeps the stacks already written, and a second
call writes only the missing ones. ``dtype="float16"`` writes MRC mode 12 (half the disk
space; RELION 4's ``--float16`` extraction output).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional

import mrcfile
import numpy as np
import pandas as pd
import starfile

# (phantom state, hinge deg) of the true states, in order (as bench_classify.py)
STATES = [("open", 0.0), ("open", 30.0), ("no_subunit", 0.0), ("open", -30.0)]
SNR = 0.05
N_OPTICS_GROUPS = 4


def dataset_params(n: int, box_px: int, pixel_size_A: float, n_states: int,
                   images_per_stack: int, dtype: str, seed: int) -> dict:
    return dict(n=int(n), box_px=int(box_px), pixel_size_A=float(pixel_size_A),
                n_states=int(n_states), images_per_stack=int(images_per_stack),
                dtype=str(dtype), seed=int(seed), snr=SNR, version=1)


def _populations(k: int) -> np.ndarray:
    w = np.linspace(2.0, 1.0, k) if k > 1 else np.ones(1)
    return w / w.sum()


def _stack_sizes(n: int, mean: int, rng) -> np.ndarray:
    """Micrograph sizes uniform in [0.75, 1.25] x mean, the last one trimmed to reach n."""
    sizes = []
    total = 0
    while total < n:
        s = int(rng.integers(int(0.75 * mean), int(1.25 * mean) + 1))
        s = min(s, n - total)
        sizes.append(s)
        total += s
    return np.asarray(sizes, dtype=np.int64)


def metadata(p: dict) -> pd.DataFrame:
    """Per-particle truth and STAR columns of the whole set (seeded, cheap)."""
    from hetclass.geometry import euler_to_matrix  # noqa: F401  (checks hetclass is importable)
    from hetclass.simulate import random_rotations

    n = p["n"]
    root = np.random.SeedSequence(p["seed"])
    rng_layout, rng_pose, rng_ctf, rng_lab = (np.random.default_rng(c) for c in root.spawn(4))
    sizes = _stack_sizes(n, p["images_per_stack"], rng_layout)
    mic = np.repeat(np.arange(sizes.size), sizes)
    index = np.concatenate([np.arange(1, s + 1) for s in sizes])
    rot, tilt, psi = random_rotations(rng_pose, n, "preferred")
    shifts = np.clip(rng_pose.normal(0.0, 2.0, (n, 2)), -8.0, 8.0)
    df = rng_ctf.uniform(8000.0, 25000.0, sizes.size)
    ast = rng_ctf.uniform(0.0, 500.0, sizes.size)
    ang = rng_ctf.uniform(0.0, 180.0, sizes.size)
    jitter = rng_ctf.normal(0.0, 100.0, n)
    counts = np.floor(_populations(p["n_states"]) * n).astype(np.int64)
    counts[0] += n - counts.sum()
    labels = rng_lab.permutation(np.repeat(np.arange(p["n_states"]), counts))
    subset = 1 + rng_lab.permutation(np.arange(n) % 2)
    names = [f"{i:06d}@Particles/mic_{m + 1:05d}.mrcs" for i, m in zip(index, mic)]
    return pd.DataFrame({
        "rlnImageName": names, "rlnMicrographName": [f"Micrographs/mic_{m + 1:05d}.mrc"
                                                     for m in mic],
        "rlnAngleRot": np.round(rot, 4), "rlnAngleTilt": np.round(tilt, 4),
        "rlnAnglePsi": np.round(psi, 4),
        "rlnOriginXAngst": np.round(shifts[:, 0], 4), "rlnOriginYAngst": np.round(shifts[:, 1], 4),
        "rlnDefocusU": np.round(df[mic] + ast[mic] / 2 + jitter, 2),
        "rlnDefocusV": np.round(df[mic] - ast[mic] / 2 + jitter, 2),
        "rlnDefocusAngle": np.round(ang[mic], 2), "rlnPhaseShift": np.zeros(n),
        "rlnCtfBfactor": np.zeros(n), "rlnOpticsGroup": 1 + mic % N_OPTICS_GROUPS,
        "rlnRandomSubset": subset, "_mic": mic, "_state": labels})


def _gaussians(p: dict):
    from hetclass.phantoms import model_to_gaussians, phantom_model
    out = []
    for name, hinge in STATES[:p["n_states"]]:
        xyz, amp, sigma = model_to_gaussians(phantom_model(name, hinge_deg=hinge))
        out.append((xyz, amp, np.maximum(sigma, p["pixel_size_A"])))
    return out


def _clean(p: dict, gauss, rows: pd.DataFrame, threads: int) -> np.ndarray:
    from hetclass.geometry import euler_to_matrix
    from hetclass.simulate import simulate_images
    box = p["box_px"]
    out = np.empty((len(rows), box, box), dtype=np.float32)
    state = rows["_state"].to_numpy()
    rotations = euler_to_matrix(rows["rlnAngleRot"].to_numpy(), rows["rlnAngleTilt"].to_numpy(),
                                rows["rlnAnglePsi"].to_numpy())
    shifts = rows[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    for k in np.unique(state):
        sel = state == k
        out[sel] = simulate_images(gauss[k], rotations[sel], shifts[sel],
                                   rows["rlnDefocusU"].to_numpy()[sel],
                                   rows["rlnDefocusV"].to_numpy()[sel],
                                   rows["rlnDefocusAngle"].to_numpy()[sel], box,
                                   p["pixel_size_A"], threads=threads)
    return out


def _inside(box: int) -> np.ndarray:
    r = np.arange(box) - box // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= (0.375 * box) ** 2


def _noise_sigma(p, gauss, meta, threads) -> float:
    """Noise level for the SNR, from the clean images of the first 500 particles."""
    clean = _clean(p, gauss, meta.iloc[:500], threads)
    return float(np.sqrt(clean[:, _inside(p["box_px"])].var(axis=1).mean() / p["snr"]))


def _write_stack(path: str, p: dict, gauss, rows: pd.DataFrame, sigma: float, mic: int,
                 threads: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence(p["seed"], spawn_key=(1, mic)))
    img = _clean(p, gauss, rows, threads)
    img += np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    bg = img[:, ~_inside(p["box_px"])]
    img -= bg.mean(axis=1)[:, None, None]
    img /= bg.std(axis=1)[:, None, None]
    tmp = f"{path}.tmp{os.getpid()}"
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(img.astype(np.float16 if p["dtype"] == "float16" else np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = p["pixel_size_A"]
    os.replace(tmp, path)


def _write_star(path: str, p: dict, meta: pd.DataFrame) -> None:
    g = N_OPTICS_GROUPS
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, g + 1),
        "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(g)],
        "rlnAmplitudeContrast": np.full(g, 0.1), "rlnSphericalAberration": np.full(g, 2.7),
        "rlnVoltage": np.full(g, 300.0), "rlnImagePixelSize": np.full(g, p["pixel_size_A"]),
        "rlnImageSize": np.full(g, p["box_px"]), "rlnImageDimensionality": np.full(g, 2)})
    parts = meta.drop(columns=["_mic", "_state"])
    tmp = f"{path}.tmp{os.getpid()}"
    starfile.write({"optics": optics, "particles": parts}, tmp, float_format="%.6f")
    os.replace(tmp, path)


def make_dataset(out_dir: str, p: dict, threads: int = 2, log=print) -> Dict[str, str]:
    """Write (or complete) the data set of parameters ``p`` in ``out_dir``.

    Returns ``{"star", "truth", "project_dir", "sim_s"}``; ``sim_s`` is 0 when nothing was
    missing.
    """
    os.makedirs(os.path.join(out_dir, "Particles"), exist_ok=True)
    marker = os.path.join(out_dir, "dataset.json")
    if os.path.exists(marker):
        with open(marker) as fh:
            old = json.load(fh)
        if old != p:
            raise SystemExit(f"bench_scale: {out_dir} holds another data set ({old}); "
                             f"use another --workdir")
    else:
        with open(marker, "w") as fh:
            json.dump(p, fh)
    star = os.path.join(out_dir, "particles.star")
    truth = os.path.join(out_dir, "truth.csv")
    meta = metadata(p)
    mics = meta["_mic"].to_numpy()
    bounds = np.searchsorted(mics, np.arange(mics[-1] + 2))
    t0 = time.time()
    gauss = None
    sigma: Optional[float] = None
    todo = [m for m in range(mics[-1] + 1)
            if not os.path.exists(os.path.join(out_dir, "Particles", f"mic_{m + 1:05d}.mrcs"))]
    for done, m in enumerate(todo):
        if gauss is None:
            gauss = _gaussians(p)
            sigma = _noise_sigma(p, gauss, meta, threads)
        rows = meta.iloc[bounds[m]:bounds[m + 1]]
        _write_stack(os.path.join(out_dir, "Particles", f"mic_{m + 1:05d}.mrcs"), p, gauss, rows,
                     sigma, m, threads)
        if log is not None and (done % 50 == 49 or done == len(todo) - 1):
            log(f"data: {done + 1}/{len(todo)} stacks written ({time.time() - t0:.0f} s)")
    if todo or not os.path.exists(star):
        _write_star(star, p, meta)
        pd.DataFrame({"image_name": meta["rlnImageName"], "state_index": meta["_state"]}
                     ).to_csv(truth, index=False)
    return {"star": star, "truth": truth, "project_dir": out_dir,
            "sim_s": time.time() - t0 if todo else 0.0}
