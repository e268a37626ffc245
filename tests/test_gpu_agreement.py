"""CPU vs GPU agreement on a real GPU via CuPy (issue 7, part 3), and ``--device`` selection.

The same checks as ``test_gpu_kernels_emulated.py`` with ``xp = cupy`` and the CuPy kernels:
the kernels against their NumPy twins, the device pass against :func:`hetclass.em.run_pass`,
the M-step on the device against NumPy, float16 storage against float32, and a whole
fixed-seed classification (same labels, class maps FSC >= 0.99). Skipped with the reason
where CuPy or a CUDA device is missing. The GPU tolerances are looser than the emulation's:
the GPU contracts multiply-adds (FMA) and sums in another order.

The command-line tests run everywhere: ``--device gpu`` without a usable GPU exits 2 with
one line, ``--device auto`` falls back to the CPU.
"""

import numpy as np
import pytest
import test_gpu_kernels_emulated as shared

from hetclass.gpu import available
from hetclass_standalone.main import main as cli

GPU, GPU_REASON = available()
needs_gpu = pytest.mark.skipif(not GPU, reason=f"no usable GPU: {GPU_REASON}")


@pytest.fixture(scope="module")
def cupy_backend():
    if not GPU:
        pytest.skip(f"no usable GPU: {GPU_REASON}")
    import cupy

    from hetclass.gpu.kernels import CupyBackend
    return cupy, CupyBackend()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    if not GPU:
        pytest.skip(f"no usable GPU: {GPU_REASON}")
    return shared.simulated_prepared(tmp_path_factory.mktemp("gpu_agreement"))


@needs_gpu
@pytest.mark.parametrize("block", [32, 128])
def test_slice_power_on_gpu_matches_numpy_twin(cupy_backend, block):
    cp, backend = cupy_backend
    case = shared.kernel_case()
    expected = shared.slice_power_twin(case)
    got = shared.slice_power_kernel(cp, backend, case, block=block)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.max())


@needs_gpu
def test_half_storage_on_gpu_decodes_exactly(cupy_backend):
    cp, backend = cupy_backend
    case = shared.kernel_case(seed=3)
    case["data"] = case["data"].view(np.float32).astype(np.float16).astype(np.float32).view(
        np.complex64)
    case["ctf"] = case["ctf"].astype(np.float16).astype(np.float32)
    single = shared.slice_power_kernel(cp, backend, case, "float32")
    half = shared.slice_power_kernel(cp, backend, case, "float16")
    np.testing.assert_array_equal(half, single)


@needs_gpu
def test_backproject_on_gpu_matches_sparse_adjoint(cupy_backend):
    cp, backend = cupy_backend
    case = shared.kernel_case(seed=2)
    rows = np.arange(3, 10)
    expected = shared.backproject_twin(case, rows)
    got = shared.backproject_kernel(cp, backend, case, first=3, n_batch=7)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@needs_gpu
@pytest.mark.parametrize("mode", ["fixed", "soft", "hard"])
def test_device_pass_on_gpu_matches_cpu_pass(cupy_backend, small_set, mode):
    from hetclass.gpu.device_pass import DevicePass
    cp, backend = cupy_backend
    _, options, prepared = small_set
    dp = DevicePass(prepared.workspace, xp=cp, backend=backend, precision="float32",
                    batch_size=97)
    shared.compare_passes(prepared, dp, options, hard=mode == "hard", fixed=mode == "fixed",
                          rtol_grid=1e-4)


@needs_gpu
def test_m_step_on_gpu_matches_numpy(cupy_backend, small_set):
    from hetclass import em
    from hetclass.mstep import m_step
    cp, _ = cupy_backend
    _, options, prepared = small_set
    ws = prepared.workspace
    n, k = len(prepared.data), options.classes
    weights = np.eye(k)[np.arange(n) % k]
    acc, _, _ = em.run_pass(ws, None, prepared.data_power, np.zeros(k), np.ones(n, bool), False,
                            fixed_weights=weights)
    tau2 = np.tile((prepared.data_power.mean(0) / prepared.ctf_power)[None], (k, 1))
    host = m_step(ws, acc, tau2, 4.0, prepared.solvent_mask, None)
    acc.grid = cp.asarray(acc.grid)
    dev = m_step(ws, acc, tau2, 4.0, prepared.solvent_mask, None)
    assert isinstance(dev.maps, np.ndarray) and isinstance(dev.half_maps, np.ndarray)
    scale = np.abs(host.maps).max()
    np.testing.assert_allclose(dev.maps, host.maps, atol=1e-4 * scale)
    np.testing.assert_allclose(dev.half_maps, host.half_maps, atol=1e-4 * scale)
    np.testing.assert_allclose(dev.tau2, host.tau2, rtol=1e-4)
    np.testing.assert_allclose(dev.fsc, host.fsc, atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_fit_on_gpu_matches_cpu(cupy_backend, small_set, precision):
    """Fixed seed: the GPU reproduces the CPU labels; class maps agree to FSC >= 0.99."""
    from hetclass.gpu.device_pass import DevicePass
    cp, backend = cupy_backend
    ds, options, prepared = small_set
    dp = DevicePass(prepared.workspace, xp=cp, backend=backend, precision=precision)
    same, worst_fsc, cpu, dev = shared.compare_fits(prepared, options, dp)
    assert same >= 0.995, f"{same:.4f} of the labels equal ({precision})"
    assert worst_fsc >= 0.99, f"class map FSC {worst_fsc:.4f} ({precision})"


# ----- --device on the command line ----------------------------------------------------------
def _classify_args(ds, out, device):
    return ["classify", "--particles", str(ds.star_path), "--project-dir", str(ds.out_dir),
            "--classes", "2", "--max-iter", "2", "--out", str(out), "--quiet",
            "--device", device]


@pytest.mark.skipif(GPU, reason="a usable GPU is present: --device gpu would run")
def test_device_gpu_without_gpu_exits_2_with_one_line(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(_classify_args(tiny_dataset, out, "gpu")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable GPU" in err and "--device" in err, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_device_auto_runs(tiny_dataset, tmp_path, capsys):
    """``auto`` classifies everywhere: on the CPU here, on the GPU where one exists."""
    out = tmp_path / "run"
    assert cli(_classify_args(tiny_dataset, out, "auto")) == 0, capsys.readouterr().err
    assert (out / "run_data.star").is_file()
    if not GPU:   # no device pass: the CPU batches ran
        from hetclass.gpu import attach
        assert attach(object(), "auto") is None


def test_bench_gpu_script_imports_and_builds_its_geometry():
    """The H100 benchmark is not runnable here; its CPU-side set-up is."""
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_gpu.py")
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--precision" in proc.stdout, proc.stderr
    sys.path.insert(0, os.path.dirname(script))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    ws = bench_gpu.synthetic_workspace(n=40, box=128, k=10, target_px=4.0, seed=0)
    # box 128 at 2x Nyquist: cropped to 72 px, shells up to 34, padded grid 144^3
    assert ws.data.plan.crop_box_px == 72 and ws.side == 144 and len(ws.data) == 40
    if not GPU:
        assert bench_gpu.main(["--n", "10"]) == 2
