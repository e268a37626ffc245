"""Time one EM iteration of the GPU backend (issue 7, part 3 targets) on synthetic device data.

Needs CuPy and a CUDA GPU. No images are simulated: the Fourier data and CTFs are random
numbers generated directly on the device, with the real geometry (uniform poses, the
coefficient set of the box cropped to the target resolution, the padded class grids), so the
work per iteration is that of a real data set of the same size.

Targets (one H100): N = 1,000,000, box 128, K = 10, target resolution at 2x Nyquist
(4 pixels): one EM iteration (E-step + back-projection pass + M-step) <= 1 s.

Example::

    python benchmarks/bench_gpu.py --n 1000000 --box 128 --classes 10 --precision auto
    python benchmarks/bench_gpu.py --n 200000 --box 256 --classes 4 --precision float16 --json gpu.json

Reported: device time (CUDA events) of the pass and the M-step, the kernels' share,
throughput in particle x class x coefficient evaluations per second, device memory in use, and
the time of ``--em-iterations`` iterations (25 by default) extrapolated from one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="particles (default 1e6)")
    p.add_argument("--box", type=int, default=128, help="original box in pixels (default 128)")
    p.add_argument("--classes", type=int, default=10, help="K (default 10)")
    p.add_argument("--precision", choices=("auto", "float32", "float16"), default="auto",
                   help="storage of data and CTF on the device")
    p.add_argument("--target-px", type=float, default=4.0,
                   help="target resolution in original pixels (4 = 2x Nyquist)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes (after one warm-up)")
    p.add_argument("--em-iterations", type=int, default=25,
                   help="iterations for the end-to-end estimate (default 25)")
    p.add_argument("--block", type=int, default=128, help="threads per block")
    p.add_argument("--batch-size", type=int, default=None, help="default: from free memory")
    p.add_argument("--min-weight", type=float, default=0.0,
                   help="skip back-projecting posteriors below this (0 = exact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p


def synthetic_workspace(n: int, box: int, k: int, target_px: float, seed: int):
    """A Workspace whose host data are zero-stride placeholders (only the geometry is real)."""
    from hetclass.fourier import coefficient_set
    from hetclass.geometry import euler_to_matrix
    from hetclass.preprocess import FourierData, plan_crop
    from hetclass.workspace import Workspace
    pixel_A = 192.0 / box
    plan = plan_crop(box, pixel_A, target_px * pixel_A)
    coeffs = coefficient_set(plan.crop_box_px, plan.data_shell)
    m = coeffs.size
    rng = np.random.default_rng(seed)
    rot = euler_to_matrix(rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                          rng.uniform(-180, 180, n))
    subset = np.ones(n, np.int64)
    subset[rng.permutation(n)[: n // 2]] = 2
    zeros = dict(data=np.broadcast_to(np.zeros((1, m), np.complex64), (n, m)),
                 ctf=np.broadcast_to(np.zeros((1, m), np.float32), (n, m)))
    if "store" in {f.name for f in dataclasses.fields(FourierData)}:
        from hetclass.fourier_store import MemoryStore
        zeros = dict(store=MemoryStore(zeros["data"], zeros["ctf"]))
    data = FourierData(plan=plan, coeffs=coeffs, **zeros, rotations=rot, group=np.zeros(n, np.int64),
                       n_groups=1, subset=subset, diameter_A=0.8 * box * pixel_A, rows=np.arange(n), n_total=n)
    return Workspace(data, k, cache_bytes=0)


def device_data(cp, n: int, m: int, precision: str, seed: int, chunk: int = 65536):
    """Random (n, 2M) data and (n, M) CTF in the storage dtype, made on the device."""
    dtype = np.float16 if precision == "float16" else np.float32
    rs = cp.random.RandomState(seed)
    x = cp.empty((n, 2 * m), dtype=dtype)
    c = cp.empty((n, m), dtype=dtype)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        x[lo:hi] = (rs.standard_normal((hi - lo, 2 * m), dtype=np.float32) * 30).astype(dtype)
        c[lo:hi] = rs.uniform(-1, 1, (hi - lo, m), dtype=np.float32).astype(dtype)
    return x, c, 1.0


def random_maps(k: int, b: int, seed: int) -> np.ndarray:
    from hetclass.fourier import lowpass_volume
    rng = np.random.default_rng(seed + 1)
    maps = lowpass_volume(rng.standard_normal((k, b, b, b)).astype(np.float32), 1.0, 4.0)
    return np.stack([maps, maps + 0.01 * rng.standard_normal(maps.shape).astype(np.float32)])


def _device_name(cp) -> str:
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hetclass.gpu import available
    ok, reason = available()
    if not ok:
        print(f"bench_gpu: no usable GPU: {reason}", file=sys.stderr)
        return 2
    import cupy as cp

    from hetclass.gpu.device_pass import DevicePass, choose_precision, device_free_bytes, reserved_bytes
    from hetclass.gpu.kernels import CupyBackend
    from hetclass.masks import soft_sphere
    from hetclass.mstep import m_step

    k, n = args.classes, args.n
    t0 = time.perf_counter()
    ws = synthetic_workspace(n, args.box, k, args.target_px, args.seed)
    plan, m = ws.data.plan, ws.data.coeffs.size
    free = device_free_bytes(cp)
    precision = choose_precision(args.precision, n, m, free - reserved_bytes(ws.n_voxels, k))
    dev_data = device_data(cp, n, m, precision, args.seed)
    dp = DevicePass(ws, xp=cp, backend=CupyBackend(), precision=precision, block=args.block,
                    classes=k, batch_size=args.batch_size, device_data=dev_data,
                    min_weight=args.min_weight)
    ws.device_pass = dp
    cp.cuda.Device().synchronize()
    setup_s = time.perf_counter() - t0

    refs = random_maps(k, plan.crop_box_px, args.seed)
    sigma2 = np.full((1, ws.n_shells), 900.0)
    log_prior = np.log(np.full(k, 1.0 / k))
    active = np.ones(n, bool)
    tau2 = np.ones((k, ws.n_shells))
    mask = soft_sphere(plan.crop_box_px, plan.crop_box_px / 2 - 4, 3.0)
    start, stop = cp.cuda.Event(), cp.cuda.Event()

    def timed(fn):
        start.record()
        t = time.perf_counter()
        out = fn()
        stop.record()
        stop.synchronize()
        return out, cp.cuda.get_elapsed_time(start, stop) / 1e3, time.perf_counter() - t

    def one_pass():
        return dp.run_pass(refs, sigma2, log_prior, active, False, like_shells=ws.like_shells)

    (acc, _, _), warm_s, _ = timed(one_pass)           # includes the kernels' compilation
    pass_s, pass_wall, mstep_s = [], [], []
    for _ in range(args.repeat):
        (acc, _, _), dev_s, wall_s = timed(one_pass)
        pass_s.append(dev_s)
        pass_wall.append(wall_s)
        _, ms_s, _ = timed(lambda acc=acc: m_step(ws, acc, tau2, 4.0, mask, None))
        mstep_s.append(ms_s)

    # the kernels alone over all particles (no posteriors, no transfers)
    grids = dp._grids(refs)
    ks = dp.kernels
    grid_acc = cp.zeros((ws.n_voxels, 3 * k), np.float32)
    weights = cp.full((dp.batch_size, k), 1.0 / k, np.float32)
    sig32 = cp.asarray(sigma2.astype(np.float32))

    def kernels(which):
        for half, (lo0, hi0) in enumerate(dp.half_ranges):
            for lo in range(lo0, hi0, dp.batch_size):
                nb = min(dp.batch_size, hi0 - lo)
                if which == "slice_power":
                    ks.slice_power(grids[half], dp.data, dp.ctf, dp.rot, dp.kx, dp.ky, dp.shell,
                                   dp.data_scale, lo, nb, ws.n_shells, ws.side, ws.pad)
                else:
                    ks.backproject(grid_acc, dp.data, dp.ctf, dp.rot, dp.kx, dp.ky, dp.shell,
                                   dp.group, sig32, weights[:nb], dp.data_scale, lo, nb,
                                   ws.side, ws.pad)
    _, slice_s, _ = timed(lambda: kernels("slice_power"))
    _, bp_s, _ = timed(lambda: kernels("backproject"))

    pool = cp.get_default_memory_pool()
    free_after, total = cp.cuda.Device().mem_info
    best_pass, best_mstep = min(pass_s), min(mstep_s)
    iteration_s = best_pass + best_mstep
    evals = float(n) * k * m
    report = {
        "device": _device_name(cp),
        "n": n, "box_px": args.box, "crop_box_px": plan.crop_box_px, "M": m, "classes": k,
        "grid_side": ws.side, "precision": precision, "batch_size": dp.batch_size,
        "block": args.block, "setup_s": setup_s, "first_pass_s": warm_s,
        "pass_s": pass_s, "pass_wall_s": pass_wall, "mstep_s": mstep_s,
        "slice_power_kernels_s": slice_s, "backproject_kernels_s": bp_s,
        "iteration_s": iteration_s, "evals_per_s": evals / best_pass,
        "estimated_em_s": args.em_iterations * iteration_s, "em_iterations": args.em_iterations,
        "device_pool_used_GB": pool.used_bytes() / 1e9, "device_pool_total_GB": pool.total_bytes() / 1e9,
        "device_free_GB": free_after / 1e9, "device_total_GB": total / 1e9,
    }
    print(f"{report['device']}: N={n} box {args.box} -> crop {plan.crop_box_px} "
          f"(M={m}, grid {ws.side}^3), K={k}, {precision}, batch {dp.batch_size}")
    print(f"  pass (E-step + back-projection): {best_pass:.3f} s  "
          f"[slice_power {slice_s:.3f} s, backproject {bp_s:.3f} s]; M-step {best_mstep:.3f} s")
    print(f"  one iteration {iteration_s:.3f} s (target <= 1 s); "
          f"{args.em_iterations} iterations ~ {report['estimated_em_s'] / 60:.1f} min")
    print(f"  {report['evals_per_s']:.3g} particle x class x coefficient / s; "
          f"device memory: pool {report['device_pool_used_GB']:.1f} GB used, "
          f"{report['device_free_GB']:.1f} of {report['device_total_GB']:.1f} GB free")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
