"""The fast preprocessing (hetclass.crop) gives the coefficients of the original recipe.

The reference below is the preprocessing as it was before issue 17, kept verbatim in spirit:
full centred rfft2 -> phase shift on the whole transform -> crop -> inverse FFT -> fftshift
-> soft disk mask in real space -> centred rfft2 -> kept coefficients. The fast path must
agree to float32 rounding on every route (small DFT matrices, full FFT then cut, no crop),
and its output must not depend on the number of threads or the batch size.
"""

import numpy as np
import pytest
import scipy.fft

from hetclass.crop import crop_images, crop_operator
from hetclass.fourier import coefficient_set
from hetclass.fourier_store import MemoryStore
from hetclass.geometry import euler_to_matrix
from hetclass.masks import soft_disk
from hetclass.particles import Optics, ParticleSet
from hetclass.preprocess import MASK_EDGE_PX, fill_store, mask_radius_px, plan_crop, setup_preprocess


def _centred_rfft2(images):
    return scipy.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)), axes=(-2, -1))


def reference_preprocess(images, shifts_px, plan, coeffs, disk):
    """The pre-issue-17 preprocessing of (n, B, B) images (see the module docstring)."""
    big, crop = plan.box_px, plan.crop_box_px
    f = _centred_rfft2(np.asarray(images, dtype=np.float32))
    ky = np.fft.fftfreq(big, d=1.0 / big)[:, None]
    kx = np.arange(big // 2 + 1)[None, :]
    phase = -2.0 * np.pi * (kx[None] * shifts_px[:, 0, None, None]
                            + ky[None] * shifts_px[:, 1, None, None]) / big
    f = f * np.exp(1j * phase).astype(np.complex64)
    if crop != big:
        half = crop // 2
        small = np.empty(f.shape[:-2] + (crop, half + 1), dtype=f.dtype)
        small[..., :half, :] = f[..., :half, :half + 1]
        small[..., half:, :] = f[..., big - half:, :half + 1]
        small[..., half, :] = 0
        f = small
    small = f * (crop / big) ** 2
    img = np.fft.fftshift(scipy.fft.irfft2(small, s=(crop, crop), axes=(-2, -1)),
                          axes=(-2, -1))
    img *= disk
    g = _centred_rfft2(img.astype(np.float32))
    return g.reshape(g.shape[0], -1)[:, coeffs.flat_index].astype(np.complex64)


def _particle_images(n, box, rng):
    """Noisy off-centre blobs: a realistic spectrum (a smooth object plus white noise)."""
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    centres = rng.uniform(-box / 8, box / 8, (n, 2))
    blob = np.exp(-((x[None] - centres[:, 0, None, None]) ** 2
                    + (y[None] - centres[:, 1, None, None]) ** 2) / (2 * (box / 10) ** 2))
    return (blob + rng.normal(0.0, 0.5, (n, box, box))).astype(np.float32)


@pytest.mark.parametrize("box, pixel_A, target_A, method", [
    (128, 1.5, None, "dft"),      # the usual case: crop 32 of 128
    (128, 1.5, None, "fft"),      # the same crop through the full transform
    (96, 1.0, 5.0, "auto"),       # crop 44 of 96 (fft path chosen: more than half the box)
    (64, 3.0, 6.0, "auto"),       # no crop at all (crop box == box)
    (100, 2.0, 12.0, "dft"),      # a box that is not a power of two
])
def test_fast_crop_equals_reference(box, pixel_A, target_A, method):
    rng = np.random.default_rng(box)
    plan = plan_crop(box, pixel_A, target_A)
    coeffs = coefficient_set(plan.crop_box_px, plan.data_shell)
    disk = soft_disk(plan.crop_box_px, mask_radius_px(0.85 * box * pixel_A, plan),
                     edge_px=MASK_EDGE_PX)
    images = _particle_images(24, box, rng)
    shifts_px = rng.uniform(-6.0, 6.0, (24, 2))
    want = reference_preprocess(images, shifts_px, plan, coeffs, disk)
    op = crop_operator(box, plan.crop_box_px, coeffs, disk, method=method)
    assert op.uses_dft == (method == "dft" or (method == "auto" and 2 * plan.crop_box_px <= box))
    got = crop_images(images, shifts_px, op)
    assert got.shape == want.shape and got.dtype == np.complex64
    # float32 rounding: relative to the largest coefficient, and per coefficient where it
    # carries signal (the low shells)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 2e-6 * scale
    strong = np.abs(want) > 1e-2 * scale
    assert np.all(np.abs(got - want)[strong] <= 1e-4 * np.abs(want)[strong])


def test_odd_box_without_crop():
    box = 33
    coeffs = coefficient_set(box, box // 2 - 2)
    disk = soft_disk(box, 12.0)
    rng = np.random.default_rng(3)
    images = _particle_images(5, box, rng)
    shifts_px = rng.uniform(-2.0, 2.0, (5, 2))

    class Plan:
        box_px = crop_box_px = box
    want = reference_preprocess(images, shifts_px, Plan, coeffs, disk)
    got = crop_images(images, shifts_px, crop_operator(box, box, coeffs, disk))
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()


def _particles(n, box, pixel_A, rng):
    optics = Optics(names=np.array(["og1"]), voltage_kV=np.array([300.0]),
                    cs_mm=np.array([2.7]), amplitude_contrast=np.array([0.1]),
                    pixel_size_A=np.array([pixel_A]), box_px=np.array([box]))
    angles = rng.uniform(0, 180, (3, n))
    return ParticleSet(image_names=np.array([f"{i + 1}@s.mrcs" for i in range(n)]),
                       rotations=euler_to_matrix(*angles),
                       shifts_A=rng.uniform(-5, 5, (n, 2)),
                       defocus_u_A=rng.uniform(1e4, 2e4, n), defocus_v_A=rng.uniform(1e4, 2e4, n),
                       defocus_angle_deg=rng.uniform(0, 180, n),
                       optics_group=np.zeros(n, dtype=np.int64), optics=optics, project_dir=".")


@pytest.mark.parametrize("box, target_A", [(96, None), (48, 7.0)])   # dft and fft paths
def test_fill_store_same_bytes_whatever_threads_and_batches(box, target_A):
    rng = np.random.default_rng(11)
    n = 300
    particles = _particles(n, box, 2.0, rng)
    images = _particle_images(n, box, rng)
    setup = setup_preprocess(particles, target_A, None, np.random.SeedSequence(0))
    stores = []
    for threads, batch in [(1, 512), (2, 64), (3, 37)]:
        store = MemoryStore.empty(n, setup.coeffs.size)
        fill_store(setup, particles, lambda rows: images[rows], store, batch_size=batch,
                   threads=threads)
        stores.append(store)
    for other in stores[1:]:
        np.testing.assert_array_equal(other.data, stores[0].data)
        np.testing.assert_array_equal(other.ctf, stores[0].ctf)
    shifts_px = particles.shifts_A / particles.pixel_size_A[:, None]
    want = reference_preprocess(images, shifts_px, setup.plan, setup.coeffs, setup.disk)
    assert np.abs(stores[0].data - want).max() <= 2e-6 * np.abs(want).max()


def test_image_window_is_the_box_not_the_particle_diameter():
    """The images are windowed at the box's rim whatever ``--particle-diameter`` says: the
    CTF carries a particle's signal beyond its diameter (``wavelength * defocus / d``), and a
    window at the diameter would discard it (the diameter masks the maps only)."""
    rng = np.random.default_rng(5)
    n, box = 40, 64
    particles = _particles(n, box, 2.0, rng)
    images = _particle_images(n, box, rng)
    coeffs = []
    for diameter_A in (40.0, 120.0):
        setup = setup_preprocess(particles, 8.0, diameter_A, np.random.SeedSequence(0))
        store = MemoryStore.empty(n, setup.coeffs.size)
        fill_store(setup, particles, lambda rows: images[rows], store)
        coeffs.append(store.data)
        b = setup.plan.crop_box_px
        c = np.arange(b) - b // 2
        r = np.hypot(c[:, None], c[None, :])
        assert np.all(setup.disk[r <= b / 2 - 1 - MASK_EDGE_PX / 2] == 1.0)   # all but the rim
        assert np.all(setup.disk[r >= b / 2 - 1 + MASK_EDGE_PX / 2] == 0.0)   # and the corners
    np.testing.assert_array_equal(coeffs[0], coeffs[1])
