"""Images -> centred, Fourier-cropped, masked coefficient vectors with their CTFs (done once).

For every particle: its low frequencies (phases about the centre), the phase shift by its
origin (translating by ``+shifts_A / pixel`` centres it), the Fourier crop to the box needed
for the target resolution, the soft circular particle mask in real space, and the ``M``
half-plane coefficients of :mod:`hetclass.fourier` (:mod:`hetclass.crop` does this, with
small DFT matrices instead of a full FFT where the crop allows). The CTF at those
coefficients is computed once as well, so the EM never touches images, shifts or CTF
parameters again. Images are read in order in one thread and cropped in worker threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .crop import CropOperator, crop_images, crop_operator
from .ctf import ctf_values
from .errors import InputError
from .fourier import CoefficientSet, coefficient_set, cpu_workers
from .fourier_store import MemoryStore
from .masks import default_diameter_A, soft_disk
from .parallel import ordered_map
from .particles import ParticleSet
from .validate import check_image_batch


@dataclass
class CropPlan:
    """Sizes derived from the box, pixel size and target resolution."""

    box_px: int            # original image side B
    pixel_size_A: float    # original pixel size
    crop_box_px: int       # b, side of the cropped images and maps
    target_shell: int      # last shell used in the likelihood (target resolution)
    data_shell: int        # last shell kept in the data (target + margin, < b/2)
    target_res_A: float

    @property
    def crop_pixel_size_A(self) -> float:
        return self.pixel_size_A * self.box_px / self.crop_box_px


MASK_EDGE_PX = 3.0


def mask_radius_px(diameter_A: float, plan: CropPlan) -> float:
    """Inner radius (cropped pixels) of the soft particle (solvent) mask of the maps: the soft
    edge ends inside the diameter, and never beyond the image window's."""
    return min(diameter_A / 2 / plan.crop_pixel_size_A - MASK_EDGE_PX / 2,
               image_window_radius_px(plan))


def image_window_radius_px(plan: CropPlan) -> float:
    """Inner radius (cropped pixels) of the soft window every particle image is multiplied by:
    the whole box but its rim and corners (the soft edge is centred one pixel inside the box
    edge), as CryoSPARC windows particle images, and not the particle diameter. The CTF
    moves a particle's signal at resolution d by up to ``wavelength * defocus / d`` beyond
    its edge (56 A at 2.5 um defocus and 8.8 A, 300 kV); a window at the particle's diameter
    discards that signal and the classification loses accuracy (benchmarks/README.md,
    "Image window")."""
    return plan.crop_box_px / 2 - 1 - MASK_EDGE_PX / 2


def image_window(plan: CropPlan) -> np.ndarray:
    """(b, b) float32 soft window of the cropped images (:func:`image_window_radius_px`)."""
    return soft_disk(plan.crop_box_px, image_window_radius_px(plan), edge_px=MASK_EDGE_PX)


def default_target_res_A(box_px: int, pixel_size_A: float) -> float:
    """Twice the Nyquist resolution, but never finer than 8 A.

    Close conformational states differ at 5-10 A: on the hard simulated cases of
    ``benchmarks/bench_accuracy.py`` (domain motions of 2-4 A) even the ideal observer loses
    accuracy at 15 A (ARI 0.74 against 0.87 at 8 A), and hetclass's classes were much worse
    at the former 15 A default. Finer than 8 A costs time roughly as the square of the
    resolution for little gain there; use ``--target-res`` for differences that need it.
    """
    return max(4.0 * pixel_size_A, 8.0)


def plan_crop(box_px: int, pixel_size_A: float, target_res_A: Optional[float],
              margin_shells: int = 2) -> CropPlan:
    """Choose the cropped box: the target shell plus ``margin_shells`` must fit inside it.

    A target finer than the data allow is clamped to the finest usable shell.
    """
    if target_res_A is None:
        target_res_A = default_target_res_A(box_px, pixel_size_A)
    if not target_res_A > 0:
        raise InputError("target resolution must be positive", field="--target-res",
                         value=target_res_A)
    max_shell = box_px // 2 - 1 - margin_shells
    if max_shell < 2:
        raise InputError("box too small to classify", field="rlnImageSize", value=box_px)
    target_shell = int(math.floor(box_px * pixel_size_A / float(target_res_A) + 1e-6))
    target_shell = max(2, min(target_shell, max_shell))
    data_shell = target_shell + margin_shells
    crop = min(box_px, 2 * (data_shell + 2))
    crop += crop % 2
    crop = min(crop, box_px)
    return CropPlan(int(box_px), float(pixel_size_A), int(crop), int(target_shell),
                    int(min(data_shell, crop // 2 - 1)),
                    float(box_px * pixel_size_A / target_shell))


@dataclass
class FourierData:
    """Preprocessed particles of this rank (per-particle arrays in local row order).

    The (n, M) coefficient and CTF arrays live in ``store`` (:mod:`hetclass.fourier_store`):
    in RAM or streamed from a cache on disk; read them batch by batch with
    ``store.read(local_rows)`` (or :meth:`hetclass.workspace.Workspace.batch_arrays`).
    """

    plan: CropPlan
    coeffs: CoefficientSet
    store: Any                # MemoryStore | DiskStore:: (n, M) complex64 data, float32 CTF
    rotations: np.ndarray     # (n, 3, 3) float64
    group: np.ndarray         # (n,) int64, optics group
    n_groups: int
    subset: np.ndarray        # (n,) int64 in {1, 2}
    diameter_A: float
    rows: np.ndarray          # (n,) int64 global particle index of each local row (a shard)
    n_total: int              # particles in the whole set (all shards)
    cache_info: Optional[dict] = None   # how the store was made (see prepare.prepare)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def data(self) -> np.ndarray:
        """(n, M) complex64, all local rows (a full read when the store is on disk)."""
        if self.store.in_memory:
            return self.store.data
        return self.store.read(np.arange(len(self)))[0]

    @property
    def ctf(self) -> np.ndarray:
        """(n, M) float32, all local rows (a full read when the store is on disk)."""
        if self.store.in_memory:
            return self.store.ctf
        return self.store.read(np.arange(len(self)))[1]


def preprocess_batch(images: np.ndarray, shifts_px: np.ndarray, op: CropOperator) -> np.ndarray:
    """(n, B, B) images -> (n, M) complex64 coefficients, centred, cropped and masked
    (:func:`hetclass.crop.crop_images`)."""
    return crop_images(images, shifts_px, op)


def ctf_for(particles: ParticleSet, rows: np.ndarray, coeffs: CoefficientSet,
            plan: CropPlan) -> np.ndarray:
    """(len(rows), M) float32 CTF at the kept coefficients."""
    g = particles.optics_group[rows]
    o = particles.optics
    size_A = plan.box_px * plan.pixel_size_A
    fx = coeffs.kx / size_A
    fy = coeffs.ky / size_A
    return ctf_values(fx, fy, particles.defocus_u_A[rows], particles.defocus_v_A[rows],
                      particles.defocus_angle_deg[rows], o.voltage_kV[g], o.cs_mm[g],
                      o.amplitude_contrast[g], particles.phase_shift()[rows],
                      particles.bfactor()[rows], particles.scale()[rows])


def half_sets(particles: ParticleSet, seed_seq: np.random.SeedSequence) -> np.ndarray:
    """rlnRandomSubset when present and complete, else a seeded random 50/50 split."""
    sub = particles.subsets()
    if np.all((sub == 1) | (sub == 2)) and np.any(sub == 1) and np.any(sub == 2):
        return sub.astype(np.int64)
    rng = np.random.default_rng(seed_seq)
    out = np.ones(len(particles), dtype=np.int64)
    out[rng.permutation(len(particles))[: len(particles) // 2]] = 2
    return out


@dataclass
class PreprocessSetup:
    """What preprocessing will compute, decided before any image is read."""

    plan: CropPlan
    coeffs: CoefficientSet
    diameter_A: float
    disk: np.ndarray          # (b, b) float32 soft image window at the cropped box
    subset: np.ndarray        # (n_total,) int64 half sets of every particle (1 or 2)
    rows: np.ndarray          # (n,) int64 global indices of this rank's particles
    n_total: int
    crop: CropOperator                    # the image -> coefficients map (built once)


def setup_preprocess(particles: ParticleSet, target_res_A: Optional[float],
                     diameter_A: Optional[float], seed_seq: np.random.SeedSequence,
                     rows: Optional[np.ndarray] = None) -> PreprocessSetup:
    """Validate the particles' box and pixel size, plan the crop and draw the half sets.

    ``rows`` (global particle indices, default all) is this rank's shard; the half sets are
    drawn over the whole set, so a particle's half set does not depend on the sharding.
    """
    n_total = len(particles)
    shard = (np.arange(n_total, dtype=np.int64) if rows is None
             else np.asarray(rows, dtype=np.int64))
    box = np.unique(particles.box_px)
    psize = np.unique(np.round(particles.pixel_size_A, 4))
    if box.size != 1:
        raise InputError("all particles must have the same box size", field="rlnImageSize",
                         value=box.tolist())
    if psize.size != 1 and (psize.max() - psize.min()) / psize.min() > 0.01:
        raise InputError("all optics groups must have the same pixel size (rescale first)",
                         field="rlnImagePixelSize", value=psize.tolist())
    big, p = int(box[0]), float(particles.pixel_size_A[0])
    plan = plan_crop(big, p, target_res_A)
    coeffs = coefficient_set(plan.crop_box_px, plan.data_shell)
    if diameter_A is None:
        diameter_A = default_diameter_A(big, p)
    if not diameter_A > 0:
        raise InputError("particle diameter must be positive", field="--particle-diameter",
                         value=diameter_A)
    disk = image_window(plan)
    return PreprocessSetup(plan, coeffs, float(diameter_A), disk,
                           half_sets(particles, seed_seq), shard, n_total,
                           crop_operator(big, plan.crop_box_px, coeffs, disk))


def fill_store(setup: PreprocessSetup, particles: ParticleSet,
               read_images: Callable[[np.ndarray], np.ndarray], sink, batch_size: int = 512,
               progress: Optional[Callable] = None, abort_check: Optional[Callable] = None,
               threads: int = 1) -> None:
    """Read this rank's images once, in batches of ``batch_size`` (``read_images(global_rows)``
    -> (n, B, B)), and write their coefficients and CTFs: ``sink.write(local_rows, data, ctf)``
    (a MemoryStore, or a cache part writer whose part is this rank's shard).

    Reading and writing stay in this thread, in batch order; the cropping runs in ``threads``
    worker threads with at most ``threads + 1`` batches in flight. Every image is computed on
    its own, so the output does not depend on ``threads`` or ``batch_size``.
    """
    shard, plan, coeffs = setup.rows, setup.plan, setup.coeffs
    op = setup.crop
    n = int(shard.size)
    shifts_px = particles.shifts_A / particles.pixel_size_A[:, None]

    def crop(local, glob, images):
        return (local, preprocess_batch(images, shifts_px[glob], op),
                ctf_for(particles, glob, coeffs, plan))

    def batches():
        for start in range(0, n, batch_size):
            if abort_check is not None:
                abort_check()
            local = np.arange(start, min(n, start + batch_size))
            glob = shard[local]
            images = read_images(glob)
            check_image_batch(images, glob, particles)   # non-finite, absurd or constant
            yield local, glob, images
            del images

    with single_threaded_blas():
        for local, data, ctf in ordered_map(crop, batches(), threads):
            sink.write(local, data, ctf)
            if progress is not None:
                progress("batch", stage="preprocess", done=int(local[-1] + 1), total=n)


def single_threaded_blas():
    """Context: BLAS on one thread (the caller's threads run one BLAS call each)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


def fourier_data(setup: PreprocessSetup, particles: ParticleSet, store,
                 cache_info: Optional[dict] = None) -> FourierData:
    """FourierData of this rank's particles over a filled ``store``."""
    shard = setup.rows
    return FourierData(plan=setup.plan, coeffs=setup.coeffs, store=store,
                       rotations=np.asarray(particles.rotations, dtype=np.float64)[shard],
                       group=np.asarray(particles.optics_group, dtype=np.int64)[shard],
                       n_groups=len(particles.optics), subset=setup.subset[shard],
                       diameter_A=setup.diameter_A, rows=shard, n_total=setup.n_total,
                       cache_info=cache_info)


def preprocess(particles: ParticleSet, read_images: Callable[[np.ndarray], np.ndarray],
               target_res_A: Optional[float], diameter_A: Optional[float],
               seed_seq: np.random.SeedSequence, batch_size: int = 512,
               progress: Optional[Callable] = None, abort_check: Optional[Callable] = None,
               rows: Optional[np.ndarray] = None, threads: Optional[int] = None) -> FourierData:
    """Read every image once (in batches via ``read_images(rows)``) into FourierData in RAM.

    ``rows`` (global particle indices, default all) restricts reading and preprocessing to a
    shard (one MPI rank's particles); the half sets are drawn over the whole set first, so a
    particle's half set does not depend on the sharding. (:func:`hetclass.engine.prepare`
    also handles caches on disk and memory bounds.) ``threads``: cropping threads (default:
    the cores this process may use).
    """
    setup = setup_preprocess(particles, target_res_A, diameter_A, seed_seq, rows)
    store = MemoryStore.empty(setup.rows.size, setup.coeffs.size)
    fill_store(setup, particles, read_images, store, batch_size, progress, abort_check,
               cpu_workers() if threads is None else threads)
    return fourier_data(setup, particles, store)
