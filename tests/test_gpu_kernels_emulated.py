"""The CUDA kernels and the device pass without a GPU (issue 7, part 3).

The kernel source of :mod:`hetclass.gpu.kernels` is compiled by g++ and launched block by
block on the CPU (``tests/cuda_emulation.py``: real barriers and shared memory), with
``xp = numpy``. Each kernel is compared with its NumPy twin on random inputs:
``slice_power`` with :func:`hetclass.projector.project` +
:func:`hetclass.em_step.class_log_likelihoods` (identical float32 arithmetic: equal to 1e-6),
``backproject`` with :func:`hetclass.em_step.process_batch`'s sparse adjoint (only the
summation order differs). Then :class:`hetclass.gpu.device_pass.DevicePass` against
:func:`hetclass.em.run_pass`, float16 storage against float32, and a whole ``engine.fit``
on a small simulated set against the CPU path (same labels, class maps FSC >= 0.99).

The helpers take ``(xp, backend)`` so that ``tests/test_gpu_agreement.py`` runs the same
checks with CuPy on a real GPU.
"""

import numpy as np
import pytest
from cuda_emulation import EmulatedBackend, gxx_available, parse_kernels

from hetclass import em, engine
from hetclass.em_step import class_log_likelihoods, process_batch, shell_onehot
from hetclass.fourier import coefficient_set
from hetclass.fsc import fsc
from hetclass.geometry import euler_to_matrix
from hetclass.gpu import choose_device, local_rank
from hetclass.gpu import kernels as kernels_mod
from hetclass.gpu.device_pass import (
    DevicePass,
    batch_size_from_free_bytes,
    choose_precision,
    half_data_scale,
    storage_bytes,
)
from hetclass.gpu.kernels import KERNEL_SOURCE, KernelSet
from hetclass.gpu.xp import to_host
from hetclass.phantoms import phantom_model
from hetclass.pipeline import ClassifyOptions, load_particles
from hetclass.projector import grid_side, project, slice_operator
from hetclass.simulate import simulate_dataset

GXX, GXX_REASON = gxx_available()


@pytest.fixture(scope="module")
def backend():
    if not GXX:
        pytest.skip(GXX_REASON)
    return EmulatedBackend()


# ----- shared cases (also used by test_gpu_agreement.py with CuPy) ----------------------------
def kernel_case(seed=0, n=11, k=3, box=16, pad=2, r_max=6, n_groups=2):
    """Random class grids, data, CTFs and noise with real rotations (RELION Euler angles)."""
    rng = np.random.default_rng(seed)
    coeffs = coefficient_set(box, r_max)
    m, s = coeffs.size, r_max + 1
    side = grid_side(box, pad)
    rot = euler_to_matrix(rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                          rng.uniform(-180, 180, n))
    grids = (rng.standard_normal((side ** 3, k))
             + 1j * rng.standard_normal((side ** 3, k))).astype(np.complex64)
    data = (3 * (rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m)))).astype(np.complex64)
    ctf = rng.uniform(-1, 1, (n, m)).astype(np.float32)
    ctf[:, 0] = 0.0
    group = rng.integers(0, n_groups, n)
    sigma2 = rng.uniform(0.5, 4.0, (n_groups, s))
    weights = rng.dirichlet(np.ones(k), n)
    weights[rng.random((n, k)) < 0.3] = 0.0          # skipped classes must not matter
    return dict(coeffs=coeffs, m=m, s=s, side=side, pad=pad, n=n, k=k, rot=rot, grids=grids,
                data=data, ctf=ctf, group=group, sigma2=sigma2, weights=weights)


def _device_inputs(xp, case, precision="float32"):
    co = case["coeffs"]
    store = np.float16 if precision == "float16" else np.float32
    return dict(
        data=xp.asarray(np.ascontiguousarray(case["data"]).view(np.float32).astype(store)),
        ctf=xp.asarray(case["ctf"].astype(store)),
        rot=xp.asarray(np.ascontiguousarray(case["rot"][:, :2, :].reshape(case["n"], 6))),
        kx=xp.asarray(co.kx.astype(np.int32)), ky=xp.asarray(co.ky.astype(np.int32)),
        shell=xp.asarray(np.minimum(co.shell, case["s"] - 1).astype(np.int32)),
        group=xp.asarray(case["group"].astype(np.int32)))


def slice_power_twin(case):
    """(n, K, S) residual power per shell from the NumPy path."""
    co = case["coeffs"]
    op = slice_operator(case["rot"], co, case["pad"])
    slices = project(op, case["grids"], case["n"], case["m"])
    sig = np.ones((case["n"], case["m"]), np.float32)
    _, per_shell = class_log_likelihoods(case["data"], case["ctf"], slices, sig,
                                         shell_onehot(co.shell, case["s"]), case["s"])
    return per_shell


def slice_power_kernel(xp, backend, case, precision="float32", block=128, first=0, n_batch=None):
    ks = KernelSet(xp, backend, precision, block)
    d = _device_inputs(xp, case, precision)
    n_batch = case["n"] - first if n_batch is None else n_batch
    out = ks.slice_power(xp.asarray(case["grids"]), d["data"], d["ctf"], d["rot"], d["kx"],
                         d["ky"], d["shell"], 1.0, first, n_batch, case["s"], case["side"],
                         case["pad"])
    return to_host(out)


def backproject_twin(case, rows):
    co = case["coeffs"]
    op = slice_operator(case["rot"][rows], co, case["pad"])
    res = process_batch(rows, 0, op, None, case["data"][rows], case["ctf"][rows],
                        case["group"][rows], case["sigma2"], np.zeros(case["k"]),
                        shell_onehot(co.shell, case["s"]), co.shell, case["s"], False,
                        with_estep=False, fixed_weights=case["weights"][rows])
    return res.grid


def backproject_kernel(xp, backend, case, first, n_batch, block=128):
    ks = KernelSet(xp, backend, "float32", block)
    d = _device_inputs(xp, case)
    acc = xp.zeros((case["side"] ** 3, 3 * case["k"]), np.float32)
    w = xp.asarray(case["weights"][first:first + n_batch].astype(np.float32))
    ks.backproject(acc, d["data"], d["ctf"], d["rot"], d["kx"], d["ky"], d["shell"], d["group"],
                   xp.asarray(case["sigma2"].astype(np.float32)), w, 1.0, first, n_batch,
                   case["side"], case["pad"])
    return to_host(acc)


def simulated_prepared(tmp_dir, n_particles=600, classes=2):
    """Two states 90 deg of hinge apart, box 32 at 6 A/px, SNR 0.1, two optics groups."""
    ds = simulate_dataset(tmp_dir, {"open": phantom_model("open", hinge_deg=0.0),
                                    "swung": phantom_model("open", hinge_deg=90.0)},
                          populations=[0.6, 0.4], n_particles=n_particles, box_px=32,
                          pixel_size_A=6.0, snr=0.1, seed=3, threads=1, n_optics_groups=2)
    options = ClassifyOptions(classes=classes, seed=0)
    prepared = engine.prepare(load_particles(ds.star_path, project_dir=ds.out_dir), options)
    return ds, options, prepared


def compare_passes(prepared, device_pass, options, hard=False, fixed=False, rtol_grid=2e-5):
    """One CPU pass and one device pass with the same inputs (some particles inactive)."""
    ws = prepared.workspace
    n, k = len(prepared.data), options.classes
    active = np.ones(n, bool)
    active[::7] = False
    sigma2 = prepared.data_power.copy()
    if fixed:
        rng = np.random.default_rng(5)
        weights = rng.dirichlet(np.ones(k), n)
        args = (None, sigma2, np.zeros(k), active, False)
        kw = dict(fixed_weights=weights)
    else:
        refs = engine.initial_state(prepared, options, 0).refs
        args = (refs, sigma2, np.log(np.full(k, 1.0 / k)), active, hard)
        kw = dict(like_shells=ws.like_shells - 1)
    saved, ws.device_pass = ws.device_pass, None
    a_cpu, p_cpu, l_cpu = em.run_pass(ws, *args, **kw)
    ws.device_pass = device_pass
    try:
        a_dev, p_dev, l_dev = em.run_pass(ws, *args, **kw)
    finally:
        ws.device_pass = saved
    grid = to_host(a_dev.grid)
    scale = np.abs(a_cpu.grid).max()
    np.testing.assert_allclose(grid, a_cpu.grid, rtol=rtol_grid, atol=rtol_grid * scale)
    np.testing.assert_allclose(p_dev[active], p_cpu[active], atol=2e-5)
    np.testing.assert_allclose(a_dev.class_weight, a_cpu.class_weight, rtol=1e-5)
    if not fixed:
        np.testing.assert_allclose(l_dev[active], l_cpu[active], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(a_dev.noise, a_cpu.noise, rtol=1e-5)
        np.testing.assert_array_equal(a_dev.noise_count, a_cpu.noise_count)
        assert a_dev.log_likelihood == pytest.approx(a_cpu.log_likelihood, rel=1e-6)
    assert not p_dev[~active].any() and not l_dev[~active].any()


def compare_fits(prepared, options, device_pass):
    """engine.fit on the CPU and with ``device_pass``: (fraction of equal labels, min FSC)."""
    ws = prepared.workspace
    saved, ws.device_pass = ws.device_pass, None
    cpu = engine.fit(prepared, options)
    calls = []
    run = device_pass.run_pass
    device_pass.run_pass = lambda *a, **kw: calls.append(1) or run(*a, **kw)
    ws.device_pass = device_pass
    try:
        dev = engine.fit(prepared, options)
    finally:
        ws.device_pass = saved
        device_pass.run_pass = run
    assert len(calls) >= len(dev.stats) + 1     # every pass ran on the device
    same = float(np.mean(cpu.labels == dev.labels))
    last = ws.like_shells        # FSC up to the target resolution
    worst = min(float(fsc(cpu.maps[j], dev.maps[j])[1:last].min())
                for j in range(options.classes))
    return same, worst, cpu, dev


# ----- the kernels against their NumPy twins ---------------------------------------------------
def test_kernel_source_parses_into_two_kernels():
    kernels = parse_kernels(KERNEL_SOURCE)
    assert set(kernels) == {"slice_power", "backproject"}
    assert kernels["slice_power"][1] and not kernels["backproject"][1]   # barrier use


@pytest.mark.parametrize("block", [32, 128])
def test_slice_power_matches_numpy_twin(backend, block):
    case = kernel_case()
    expected = slice_power_twin(case)
    got = slice_power_kernel(np, backend, case, block=block)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * expected.max())


def test_slice_power_batch_offset_and_class_chunks(backend, monkeypatch):
    """A batch in the middle of the rows, and classes split over launches (shared memory)."""
    case = kernel_case(seed=1, k=5)
    expected = slice_power_twin(case)[4:9]
    monkeypatch.setattr(kernels_mod, "SHARED_LIMIT_BYTES", 4 * case["s"] * 2)  # 2 classes
    got = slice_power_kernel(np, backend, case, first=4, n_batch=5)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * expected.max())


def test_backproject_matches_sparse_adjoint(backend):
    case = kernel_case(seed=2)
    rows = np.arange(3, 10)
    expected = backproject_twin(case, rows)
    got = backproject_kernel(np, backend, case, first=3, n_batch=7)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)
    # classes without weight receive nothing, not even rounding
    zero = case["weights"][rows].sum(0) == 0
    k = case["k"]
    for j in np.flatnonzero(zero):
        assert not got[:, [2 * j, 2 * j + 1, 2 * k + j]].any()


def test_half_storage_decodes_exactly(backend):
    """float16 storage of values exactly representable in float16 (normal, subnormal, signed
    zero) gives the float32 kernel's result bit for bit: the decoder is exact."""
    case = kernel_case(seed=3)
    rng = np.random.default_rng(3)
    raw = case["data"].view(np.float32).copy()
    raw[:, :8] = rng.uniform(-1, 1, (case["n"], 8)) * 2.0 ** -20     # subnormal in float16
    raw[:, 8] = -0.0
    case["data"] = raw.astype(np.float16).astype(np.float32).view(np.complex64)
    case["ctf"] = case["ctf"].astype(np.float16).astype(np.float32)
    single = slice_power_kernel(np, backend, case, "float32")
    half = slice_power_kernel(np, backend, case, "float16")
    np.testing.assert_array_equal(half, single)


# ----- the device pass against em.run_pass ---------------------------------------------------
@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return simulated_prepared(tmp_path_factory.mktemp("gpu_emulated"))


@pytest.mark.parametrize("mode", ["fixed", "soft", "hard"])
def test_device_pass_matches_cpu_pass(backend, small_set, mode):
    _, options, prepared = small_set
    dp = DevicePass(prepared.workspace, xp=np, backend=backend, precision="float32",
                    batch_size=97)      # several batches per half set, none straddling
    compare_passes(prepared, dp, options, hard=mode == "hard", fixed=mode == "fixed")


def test_float16_storage_agrees_with_float32(backend, small_set):
    """Storing data and CTF in float16 (11-bit mantissa) moves the log-likelihoods by far less
    than one unit, so the posteriors stay within 1e-2 and the best class is unchanged."""
    _, options, prepared = small_set
    ws = prepared.workspace
    k = options.classes
    n = len(prepared.data)
    refs = engine.initial_state(prepared, options, 0).refs
    args = (refs, prepared.data_power.copy(), np.log(np.full(k, 1.0 / k)), np.ones(n, bool), False)
    out = {}
    for precision in ("float32", "float16"):
        dp = DevicePass(ws, xp=np, backend=backend, precision=precision)
        assert dp.data.dtype == np.dtype(precision)
        out[precision] = dp.run_pass(*args, like_shells=ws.like_shells)
    (a32, p32, l32), (a16, p16, l16) = out["float32"], out["float16"]
    assert np.abs(l16 - l32).max() < 0.05
    assert np.abs(p16 - p32).max() < 1e-2
    assert np.mean(p16.argmax(1) == p32.argmax(1)) >= 0.995
    np.testing.assert_allclose(a16.grid, a32.grid, rtol=0, atol=2e-3 * np.abs(a32.grid).max())


def test_fit_with_emulated_device_pass_matches_cpu(backend, small_set):
    """Whole classification: the device pass (float32) reproduces the CPU labels and maps."""
    ds, options, prepared = small_set
    dp = DevicePass(prepared.workspace, xp=np, backend=backend, precision="float32")
    same, worst_fsc, cpu, dev = compare_fits(prepared, options, dp)
    # float32 rounding differs (summation order), so a particle on the decision boundary
    # could flip; none did on this set
    assert same >= 0.995, f"{same:.4f} of the labels equal"
    assert worst_fsc >= 0.99, f"class map FSC {worst_fsc:.4f}"
    assert len(dev.stats) == len(cpu.stats)


# ----- pure helpers ----------------------------------------------------------------------------
def test_batch_size_from_free_bytes():
    k, s = 10, 36
    per = k * s * 16
    free = 2 ** 28
    size = batch_size_from_free_bytes(free, k, s)
    assert size * per <= 0.5 * free                 # the work arrays fit the budget
    assert batch_size_from_free_bytes(4 * free, k, s) > size    # more memory, bigger batches
    assert batch_size_from_free_bytes(0, k, s) == 64
    assert batch_size_from_free_bytes(2 ** 50, k, s) == 65536


def test_precision_and_half_scale():
    n, m = 1_000_000, 1800
    assert storage_bytes(n, m, "float16") * 2 == storage_bytes(n, m, "float32")
    assert choose_precision("auto", n, m, 80e9) == "float32"     # 21.6 GB of 80 GB
    assert choose_precision("auto", n, m, 30e9) == "float16"
    assert choose_precision("float16", 10, 10, None) == "float16"
    for max_abs in (1e-3, 1.0, 7e3, 3e6):
        scale = half_data_scale(max_abs)
        assert np.log2(scale) == np.round(np.log2(scale))          # a power of two: exact
        assert 2.0 ** 13 < max_abs / scale <= 2.0 ** 14


def test_device_choice_per_local_rank():
    assert local_rank({}) == 0
    assert local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}) == 3
    assert local_rank({"SLURM_LOCALID": "5"}) == 5
    assert choose_device(4, {"MPI_LOCALRANKID": "6"}) == 2
    assert choose_device(1, {"OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == 0
